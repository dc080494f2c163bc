package repo_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
)

// storeV2Subject is a store of the next release's row type (ProductV2).
type storeV2Subject struct{ s *repo.Store[ProductV2, int64] }

func (s storeV2Subject) get(ctx context.Context, key int64) (string, error) {
	p, err := s.s.Get(ctx, key)
	if errors.Is(err, repo.ErrNotFound) {
		return "", nil
	}
	return p.Name, err
}

func (s storeV2Subject) put(ctx context.Context, key int64, value string) error {
	_, err := s.s.Upsert(ctx, ProductV2{ID: key, ArticleNumber: fmt.Sprint("A", key), Name: value, CategoryID: 1})
	return err
}

func (s storeV2Subject) del(ctx context.Context, key int64) error {
	if err := s.s.Delete(ctx, key); err != nil && !errors.Is(err, repo.ErrNotFound) {
		return err
	}
	return nil
}

// sqlSubject writes behind the stores' backs with plain SQL (the version
// trigger draws each update's version) and reads through a store. Its
// writes count as acknowledged lag after they return: the bound the WAL
// invalidator is checked against. It updates rows that exist (an UPDATE of
// a missing row does nothing) and deletes.
type sqlSubject struct {
	pool   *pgxpool.Pool
	reader subject
	lag    time.Duration
}

func (s sqlSubject) get(ctx context.Context, key int64) (string, error) {
	return s.reader.get(ctx, key)
}

func (s sqlSubject) put(ctx context.Context, key int64, value string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE products SET name = $2 WHERE id = $1`, key, value)
	if err == nil && tag.RowsAffected() == 0 {
		return errNoop
	}
	return err
}

func (s sqlSubject) del(ctx context.Context, key int64) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM products WHERE id = $1`, key)
	return err
}

func (s sqlSubject) ackDelay() int64 { return int64(s.lag) }

// readOnly is a subject whose writes do nothing.
type readOnly struct{ subject }

func (readOnly) put(context.Context, int64, string) error { return errNoop }
func (readOnly) del(context.Context, int64) error         { return errNoop }

// fleetRun runs the checker over stores of two releases (v2: half of them
// the next release's; shareKeys: on the same keys, as now, or each release
// its own key space, as before) and, with sql, a writer behind their backs,
// with or without the WAL invalidator. With storesWrite false the stores
// only read.
func fleetRun(t *testing.T, shareKeys, wal, v2, sql, storesWrite bool, faults []string, d time.Duration) ckResult {
	t.Helper()
	const instances, workers, keys = 4, 5, 24
	const lag = time.Second
	rig := newCkRig(t, keys)
	e, px := rig.e, rig.px
	var subjects []subject
	var repairers []*invalidation.Repairer
	var targets []invalidation.Target
	var errs []func() uint64
	for i := range instances {
		pool := newCkPool(t, e.URL, workers)
		mc, err := cacheClient(workers*2, time.Second, px.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 || !v2 {
			s, r := newCkStore(t, pool, mc, e.NS)
			var sub subject = storeSubject{s}
			if !storesWrite {
				sub = readOnly{sub}
			}
			subjects, repairers, targets = append(subjects, sub), append(repairers, r), append(targets, s)
			errs = append(errs, func() uint64 { return s.Stats().CacheErrors })
			continue
		}
		// The next release. Before row types shared keys, each cached
		// under its own key space: as a separate namespace does here.
		ns := e.NS
		if !shareKeys {
			ns += "-v2"
		}
		r := mustRepairer(pool, mc, invalidation.RepairerConfig{Delay: 200 * time.Millisecond, Interval: 50 * time.Millisecond})
		o := &repo.Options{Namespace: ns, Repairer: r, BreakerCooldown: 100 * time.Millisecond, LeaseWait: 50 * time.Millisecond}
		s, err := repo.New(&hookDB{Beginner: pool, after: func(sql string) {
			if strings.HasPrefix(sql, "SELECT") && !strings.Contains(sql, "FOR UPDATE") {
				ckDelay()
			}
		}}, mc, productV2Table, o)
		if err != nil {
			t.Fatal(err)
		}
		var sub subject = storeV2Subject{s}
		if !storesWrite {
			sub = readOnly{sub}
		}
		subjects, repairers = append(subjects, sub), append(repairers, r)
		errs = append(errs, func() uint64 { return s.Stats().CacheErrors })
	}
	if sql {
		subjects = append(subjects, sqlSubject{pool: newCkPool(t, e.URL, workers), reader: subjects[0], lag: lag})
	}

	start := time.Now()
	rig.now = func() int64 { return int64(time.Since(start)) }
	if wal {
		w, err := invalidation.NewWAL(invalidation.WALConfig{ConnString: e.URL, Slot: "ck_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToLower(e.NS)),
			Targets: targets[:1], StatusInterval: 100 * time.Millisecond, RetryInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		wctx, wstop := context.WithCancel(ctx)
		wdone := make(chan error, 1)
		go func() { wdone <- w.Run(wctx) }()
		defer func() {
			wstop()
			<-wdone
			_, _ = e.Pool.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active AND slot_name LIKE 'ck_%'`)
		}()
		deadline := time.Now().Add(10 * time.Second)
		for !w.Stats().Holding || w.Stats().Invalidations == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the invalidator never started")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	rctx, stop := context.WithTimeout(ctx, d)
	defer stop()
	var wg sync.WaitGroup
	for _, r := range repairers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	rig.injectFaults(t, rctx, &wg, faults)
	history := runCkLoad(rctx, subjects, workers, keys, 0, "", rig.now)
	wg.Wait()
	px.Heal()
	res := ckResult{ops: len(history), faults: int(rig.faults.Load())}
	for _, f := range errs {
		res.cacheErrors += int(f())
	}
	if faults == nil {
		// A control: stale reads are its evidence, and porcupine on its
		// long, broken histories only times out.
		byKey := map[int64][]ckOp{}
		for _, op := range history {
			byKey[op.key] = append(byKey[op.key], op)
		}
		for _, ops := range byKey {
			res.staleReads += staleReads(ops)
		}
		return res
	}
	rig.check(t, history, keys, &res)
	if wal && shareKeys {
		time.Sleep(lag) // the last writes behind the stores' backs reach the cache
		res.cacheMismatches = rig.quiescence(t, keys)
	}
	return res
}

// TestConsistencyReleasesAndBehindBack: the consistency checker with two
// more faults. Half the stores read and write as the next release (another
// row type, so another codec fingerprint) on the same keys, and a client
// writes behind the stores' backs with plain SQL while the WAL invalidator
// runs; its writes count as acknowledged one second (the lag bound) after
// they return. Memcached restarts, killed backends, evictions and fill
// delays run throughout. No read may be stale, every key must be
// linearizable and the cache must equal the database afterwards. The
// controls: without shared keys (each release its own key space, as before)
// the same load shows violations, and so do writes behind the stores' backs
// without the invalidator.
func TestConsistencyReleasesAndBehindBack(t *testing.T) {
	r := fleetRun(t, true, true, true, true, true, []string{"restart", "kill", "none"}, consistencyDuration())
	violations := r.staleReads + r.badKeys + r.cacheMismatches
	fmt.Printf("consistency: protocol=store faults=behind-back,releases,restart,kill,evict,delay instances=4 processes=1 ops=%d faults=%d violations=%d stale_reads=%d nonlinearizable_keys=%d unproven_keys=%d cache_mismatches=%d cache_errors=%d\n",
		r.ops, r.faults, violations, r.staleReads, r.badKeys, r.unprovenKeys, r.cacheMismatches, r.cacheErrors)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads, %d keys not linearizable, %d cache mismatches", r.staleReads, r.badKeys, r.cacheMismatches)
	}
	if r.faults == 0 || r.ops < 2000 {
		t.Fatalf("the run proves little: %d ops, %d faults", r.ops, r.faults)
	}
	// The controls, without faults or evictions (which hide stale entries
	// by dropping them). The behind-back one lets only the SQL writer
	// write: under the full mix, the stores' own writes overwrite its stale
	// entries within the lag bound, and nothing shows.
	for _, c := range []struct {
		name                            string
		shareKeys, wal, v2, storesWrite bool
	}{{"releases", false, true, true, true}, {"behind-back", true, false, false, false}} {
		r := fleetRun(t, c.shareKeys, c.wal, c.v2, true, c.storesWrite, nil, 3*time.Second)
		v := r.staleReads + r.badKeys
		fmt.Printf("consistency: protocol=old-%s faults=%s instances=4 processes=1 ops=%d violations=%d stale_reads=%d\n",
			c.name, c.name, r.ops, v, r.staleReads)
		if v == 0 {
			t.Errorf("control %s: the checker found nothing wrong without the fix", c.name)
		}
	}
}

// TestConsistencyOneWay: one store's writes cannot reach memcached for
// 250ms in every 500ms while its reads still do (a one-way partition), the
// other stores are unaffected. That store must never read stale: its own
// failed write-throughs are read from the database until its own deletes of
// them succeed, and the others' write-throughs reach the cache it reads.
// The other stores may read the previous value of a key the partitioned
// store wrote until its outbox row is replayed (the documented bound, the
// Repairer's Delay plus an Interval), never later; and after quiescence the
// cache must equal the database.
func TestConsistencyOneWay(t *testing.T) {
	const instances, workers, keys = 4, 5, 24
	// The Repairer's Delay (200ms) plus an Interval (50ms), with room for a
	// pass that waits on another's rows and a loaded machine.
	const repairBound = time.Second
	rig := newCkRig(t, keys)
	e, px := rig.e, rig.px
	var subjects []subject
	var repairers []*invalidation.Repairer
	var oneway *writesDown
	for i := range instances {
		pool := newCkPool(t, e.URL, workers)
		mc, err := cacheClient(workers*2, time.Second, px.Addr())
		if err != nil {
			t.Fatal(err)
		}
		var cache repo.Cache = mc
		if i == 0 {
			oneway = &writesDown{Client: mc}
			cache = oneway
		}
		s, r := newCkStore(t, pool, cache, e.NS)
		subjects, repairers = append(subjects, storeSubject{s}), append(repairers, r)
	}
	start := time.Now()
	rig.now = func() int64 { return int64(time.Since(start)) }
	rctx, stop := context.WithTimeout(ctx, consistencyDuration())
	defer stop()
	var wg sync.WaitGroup
	for _, r := range repairers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	wg.Add(1)
	go func() { // the one-way partition, on and off
		defer wg.Done()
		for rctx.Err() == nil {
			oneway.down.Store(true)
			rig.faultLog.add(rig.now(), "one-way partition")
			_ = sleep(rctx, 250*time.Millisecond)
			oneway.down.Store(false)
			rig.faultLog.add(rig.now(), "heal")
			rig.faults.Add(1)
			_ = sleep(rctx, 250*time.Millisecond)
		}
	}()
	history := runCkLoad(rctx, subjects, workers, keys, 0, "", rig.now)
	wg.Wait()
	oneway.down.Store(false)

	// Per key: every write, and the reads of the partitioned store (clients
	// 0..workers-1), then the reads of the others.
	own, others := map[int64][]ckOp{}, map[int64][]ckOp{}
	for _, op := range history {
		if op.in.op != 'r' || op.client < workers {
			own[op.key] = append(own[op.key], op)
		}
		if op.in.op != 'r' || op.client >= workers {
			if op.in.op != 'r' && op.client < workers && op.ret != math.MaxInt64 {
				// For the others, the partitioned store's writes are
				// acknowledged when the outbox replay can have run.
				op.ret += int64(repairBound)
			}
			others[op.key] = append(others[op.key], op)
		}
	}
	ownStale, othersStale := 0, 0 // othersStale: beyond the repair bound
	for k := range int64(keys) {
		ownStale += staleReads(own[k+1])
		othersStale += staleReads(others[k+1])
	}
	mismatches := rig.quiescence(t, keys)
	violations := ownStale + othersStale + mismatches
	fmt.Printf("consistency: protocol=store faults=oneway instances=%d processes=1 ops=%d faults=%d violations=%d stale_reads_partitioned=%d stale_reads_others_past_repair_bound=%d cache_mismatches=%d\n",
		instances, len(history), rig.faults.Load(), violations, ownStale, othersStale, mismatches)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads by the partitioned store, %d by the others past %v, %d cache mismatches", ownStale, othersStale, repairBound, mismatches)
	}
	if rig.faults.Load() == 0 || len(history) < 2000 {
		t.Fatalf("the run proves little: %d ops, %d faults", len(history), rig.faults.Load())
	}
}
