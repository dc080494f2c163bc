package invalidation_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// A slot the server lost (it fell behind max_slot_wal_keep_size while no
// invalidator ran): the next invalidator drops it, calls InvalidateAll on
// every target (the change made meanwhile is in no WAL it can read, and
// the cache served it stale until then), starts a new slot, and later
// changes reach the cache again.
func TestWALLostSlot(t *testing.T) {
	pg := repotest.StartPostgres(t, "max_slot_wal_keep_size=1MB")
	r := newWALRigOn(t, testenv.NewAt(t, pg.URL()), invalidation.WALConfig{}, true)
	e := r.e
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES (1, 'A1', 'one', 1, 100)`)
	r.applied(t)
	if _, err := r.products.Get(ctx, 1); err != nil {
		t.Fatal(err)
	}
	r.stop()
	e.Exec(t, `UPDATE products SET name = 'while lost' WHERE id = 1`)

	// WAL past the keep size, then a checkpoint: the server invalidates
	// the slot.
	e.Exec(t, `CREATE TABLE filler (id bigint, payload text)`)
	lost := false
	for round := 0; round < 8 && !lost; round++ {
		e.Exec(t, `INSERT INTO filler SELECT g, repeat('x', 500) FROM generate_series(1, 4000) g`)
		e.Exec(t, `SELECT pg_switch_wal()`)
		e.Exec(t, `CHECKPOINT`)
		st, err := r.wal.SlotStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		lost = st.WALStatus == "lost"
	}
	if !lost {
		st, _ := r.wal.SlotStatus(ctx)
		t.Fatalf("the slot was not lost: %+v", st)
	}
	if p, err := r.products.Get(ctx, 1); err != nil || p.Name != "one" {
		t.Fatalf("before the new invalidator: %+v %v, want the stale cached row", p, err)
	}

	r.switchTo(t, r.targets...)
	waitFor(t, "InvalidateAll of every target", func() bool { return r.wal.Stats().Invalidations >= uint64(len(r.targets)) })
	st, err := r.wal.SlotStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Exists || !st.Active || st.WALStatus == "lost" {
		t.Fatalf("the new slot: %+v", st)
	}
	if p, err := r.products.Get(ctx, 1); err != nil || p.Name != "while lost" {
		t.Fatalf("after the lost slot: %+v %v, want the change made while it was lost", p, err)
	}
	e.Exec(t, `UPDATE products SET name = 'after' WHERE id = 1`)
	r.applied(t)
	if p, err := r.products.Get(ctx, 1); err != nil || p.Name != "after" {
		t.Fatalf("a change on the new slot: %+v %v", p, err)
	}
	ws := r.wal.Stats()
	if ws.Invalidations != uint64(len(r.targets)) || ws.Truncates != 0 {
		t.Fatalf("stats %+v: want one InvalidateAll per target (%d), no truncates", ws, len(r.targets))
	}
	testenv.Summaryf("wal-faults: lost-slot invalidations=%d changes=%d\n", ws.Invalidations, ws.Changes)
}

// PostgreSQL restarts (an immediate shutdown, whose next start is crash
// recovery, then a fast one) while writers commit changes behind the
// store's back and the invalidator runs: it reconnects each time, and
// every acknowledged change reaches the cache (each under its own key and
// version), including those committed just before and after each restart.
func TestWALPostgresRestart(t *testing.T) {
	// synchronous_commit=on (the shared servers' is off): an immediate
	// shutdown must not lose a commit the writers saw acknowledged.
	pg := repotest.StartPostgres(t, "synchronous_commit=on")
	r := newWALRigOn(t, testenv.NewAt(t, pg.URL()), invalidation.WALConfig{}, true)
	l := r.newLoad(t, 20)
	r.applied(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { l.run(ctx); close(done) }()
	var before []int // committed changes before each restart
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGINT} {
		time.Sleep(time.Second)
		before = append(before, l.count())
		pg.Restart(sig)
		r.e.Pool.Reset() // its connections died with the server
	}
	// The writers go on until they committed after the last restart too
	// (on a loaded machine a restart can take seconds), for at most 20s.
	for deadline := time.Now().Add(20 * time.Second); l.count() <= before[len(before)-1]+20 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	<-done
	if n := l.count(); n <= before[len(before)-1] || before[0] <= 20 {
		t.Fatalf("the writers committed %v changes before the restarts and %d in all: the run proves little", before, n)
	}
	waitFor(t, "the invalidator to hold its slot again", func() bool { return r.wal.Stats().Holding })
	stale, lost := l.check(t)
	st := r.wal.Stats()
	testenv.Summaryf("wal-faults: pg-restart restarts=2 committed=%d changes=%d stale_after_lag=%d lost=%d\n",
		l.count(), st.Changes, len(stale), lost)
	if len(stale) != 0 || lost != 0 {
		t.Fatalf("after the restarts: keys %v stale, %d committed changes never applied", stale, lost)
	}
}

// A standby takes over when the slot holder dies abruptly (its WAL sender
// terminated and its Run cancelled at once, with changes received and not
// yet confirmed), and keeps the slot when its own WAL sender is terminated;
// no committed change is lost.
func TestWALStandbyAfterAbruptDeath(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	slot := slotName(r.e)
	l := r.newLoad(t, 20)
	r.applied(t)
	standby, err := invalidation.NewWAL(invalidation.WALConfig{ConnString: r.e.URL, Slot: slot, Targets: r.targets,
		StatusInterval: 50 * time.Millisecond, RetryInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stopStandby := r.run(t, standby)
	defer stopStandby()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { l.run(ctx); close(done) }()
	sender := func() int {
		t.Helper()
		var pid int
		if err := r.e.Pool.QueryRow(context.Background(), `SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	terminate := func(pid int) {
		t.Helper()
		var ok bool
		if err := r.e.Pool.QueryRow(context.Background(), `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
			t.Fatalf("terminating the WAL sender %d: %v %v", pid, ok, err)
		}
	}

	time.Sleep(time.Second)
	if standby.Stats().Holding || !r.wal.Stats().Holding {
		t.Fatal("the standby holds the slot while the first invalidator runs")
	}
	first := sender()
	terminate(first)
	r.stop() // dies: it never takes the slot again
	waitFor(t, "the standby to take the slot", func() bool { return standby.Stats().Holding })
	second := sender()
	if second == first || second == 0 {
		t.Fatalf("WAL sender %d after the takeover, was %d", second, first)
	}

	time.Sleep(500 * time.Millisecond)
	terminate(second)
	waitFor(t, "the standby to take the slot again", func() bool { return sender() != second && sender() != 0 })
	<-done
	r.wal = standby
	stale, lost := l.check(t)
	st := standby.Stats()
	testenv.Summaryf("wal-faults: takeover committed=%d standby_changes=%d stale_after_lag=%d lost=%d\n", l.count(), st.Changes, len(stale), lost)
	if len(stale) != 0 || lost != 0 || !st.Holding || st.Transactions == 0 {
		t.Fatalf("after the takeover (standby %+v): keys %v stale, %d committed changes never applied", st, stale, lost)
	}
}

// count returns how many committed changes l recorded.
func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.want)
}
