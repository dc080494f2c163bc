package repo_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
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

func (s storeV2Subject) put(ctx context.Context, key int64, value string) error { // as storeSubject's
	p := ProductV2{ID: key, ArticleNumber: fmt.Sprint("A", key), Name: value, CategoryID: 1}
	if replaces(value) {
		if _, err := s.s.Replace(ctx, p); !errors.Is(err, repo.ErrNotFound) {
			return err
		}
	}
	_, err := s.s.Upsert(ctx, p)
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

// fleetCfg is one run of the checker over stores of two releases and writers
// behind their backs.
type fleetCfg struct {
	shareKeys   bool // the releases share keys (as now), or each its own key space (as before)
	wal         bool // the WAL invalidator runs
	v2          bool // half of the stores are the next release's
	sql         bool // a client writes with plain SQL
	storesWrite bool // the stores write (else they only read)
	// oneway cuts instance 0's writes (not its reads) off memcached for
	// 250ms in every 500ms; noDirty turns its record of failed
	// invalidations off (the control).
	oneway, noDirty bool
	// late runs a writer whose statements commit after their caller's
	// deadline (late-commit faults; see lateCommits).
	late   bool
	faults []string // injectFaults' kinds; nil: a control, no faults
	d      time.Duration
}

// repairBound is how long after a write that failed to reach memcached the
// other processes may still read the value before it: the Repairer's Delay
// (200ms) plus an Interval (50ms), with room for a pass that waits on
// another's rows and a loaded machine.
const repairBound = time.Second

// walLag is the WAL invalidator's lag bound the checker holds it to: writes
// memcached learns of only from the WAL are acknowledged this long after
// they committed.
const walLag = time.Second

// keyLocks keeps the load's writers off a key while a late-commit fault
// owns it, so that the fault can tell when its own statement committed.
type keyLocks []sync.RWMutex

// guarded is a subject whose writes skip keys a fault owns.
type guarded struct {
	subject
	locks keyLocks
}

func (g guarded) put(ctx context.Context, key int64, value string) error {
	if !g.locks[key].TryRLock() {
		return errNoop
	}
	defer g.locks[key].RUnlock()
	return g.subject.put(ctx, key, value)
}

func (g guarded) del(ctx context.Context, key int64) error {
	if !g.locks[key].TryRLock() {
		return errNoop
	}
	defer g.locks[key].RUnlock()
	return g.subject.del(ctx, key)
}

func (g guarded) ackDelay() int64 {
	if a, ok := g.subject.(acker); ok {
		return a.ackDelay()
	}
	return 0
}

// fleetRun runs the checker as cfg says. The stores that write through
// instance 0 (clients 0..workers-1) are the one-way partitioned ones when
// cfg.oneway is set: their own reads are checked strictly, the others' reads
// against their writes acknowledged repairBound late.
func fleetRun(t *testing.T, cfg fleetCfg) ckResult {
	t.Helper()
	const instances, workers, keys = 4, 5, 24
	rig := newCkRig(t, keys)
	e, px := rig.e, rig.px
	locks := make(keyLocks, keys+1)
	var subjects []subject
	var repairers []*invalidation.Repairer
	var targets []invalidation.Target
	var errs []func() uint64
	var oneway *writesDown
	for i := range instances {
		pool := newCkPool(t, e.URL, workers)
		mc, err := cacheClient(workers*2, time.Second, px.Addr())
		if err != nil {
			t.Fatal(err)
		}
		var cache repo.Cache = mc
		if i == 0 && cfg.oneway {
			oneway = &writesDown{Client: mc}
			cache = oneway
		}
		var sub subject
		if i%2 == 0 || !cfg.v2 {
			s, r := newCkStore(t, pool, cache, e.NS)
			if i == 0 && cfg.noDirty {
				repo.ForgetFailedInvalidations(s)
			}
			sub, repairers, targets = storeSubject{s}, append(repairers, r), append(targets, s)
			errs = append(errs, func() uint64 { return s.Stats().CacheErrors })
		} else {
			// The next release. Before row types shared keys, each cached
			// under its own key space: as a separate namespace does here.
			ns := e.NS
			if !cfg.shareKeys {
				ns += "-v2"
			}
			r := mustRepairer(pool, cache, invalidation.RepairerConfig{Delay: 200 * time.Millisecond, Interval: 50 * time.Millisecond})
			o := &repo.Options{Namespace: ns, Repairer: r, BreakerCooldown: 100 * time.Millisecond, LeaseWait: 50 * time.Millisecond}
			s, err := repo.New(&hookDB{Beginner: pool, after: func(sql string) {
				if strings.HasPrefix(sql, "SELECT") && !strings.Contains(sql, "FOR UPDATE") {
					ckDelay()
				}
			}}, cache, productV2Table, o)
			if err != nil {
				t.Fatal(err)
			}
			sub, repairers = storeV2Subject{s}, append(repairers, r)
			errs = append(errs, func() uint64 { return s.Stats().CacheErrors })
		}
		if !cfg.storesWrite {
			sub = readOnly{sub}
		}
		subjects = append(subjects, guarded{sub, locks})
	}
	if cfg.sql {
		sub := sqlSubject{pool: newCkPool(t, e.URL, workers), reader: subjects[0], lag: walLag}
		subjects = append(subjects, guarded{sub, locks})
	}

	start := time.Now()
	rig.now = func() int64 { return int64(time.Since(start)) }
	if cfg.wal {
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
	// The run lasts cfg.d, and with late commits until minLateCommits of
	// them happened (at most 4*cfg.d): on a loaded machine an attempt may
	// give up before it waits on the lock, and a run that commits nothing
	// late proves nothing about late commits.
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var lateDone atomic.Int64
	go func() {
		start := time.Now()
		for sleep(rctx, 10*time.Millisecond) == nil {
			d := time.Since(start)
			if d >= cfg.d && (!cfg.late || lateDone.Load() >= minLateCommits || d >= 4*cfg.d) {
				stop()
			}
		}
	}()
	var wg sync.WaitGroup
	for _, r := range repairers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	rig.injectFaults(t, rctx, &wg, cfg.faults)
	if oneway != nil {
		wg.Add(1)
		go func() { // the one-way partition, on and off
			defer wg.Done()
			for rctx.Err() == nil {
				oneway.down.Store(true)
				rig.faultLog.add(rig.now(), "one-way partition")
				_ = sleep(rctx, 250*time.Millisecond)
				oneway.down.Store(false)
				rig.faultLog.add(rig.now(), "heal one-way")
				rig.faults.Add(1)
				_ = sleep(rctx, 250*time.Millisecond)
			}
		}()
	}
	var late []ckOp
	if cfg.late {
		wg.Add(1)
		go func() {
			defer wg.Done()
			late = rig.lateCommits(t, rctx, locks, keys, instances*workers+100, &lateDone)
		}()
	}
	history := runCkLoad(rctx, subjects, workers, keys, 0, "", rig.now)
	wg.Wait()
	px.Heal()
	if oneway != nil {
		oneway.down.Store(false)
	}
	history = append(history, late...)
	res := ckResult{ops: len(history), faults: int(rig.faults.Load()), lateCommits: len(late)}
	for _, f := range errs {
		res.cacheErrors += int(f())
	}

	// The views: without a one-way partition, one, checked in full. With
	// it, the partitioned store's reads with every write as it returned,
	// checked in full; and the others' reads with the partitioned store's
	// writes acknowledged repairBound late, checked for stale reads only:
	// until the repair, some of them read the cache's previous value and
	// some (a miss, another release's entry) the database's, so their reads
	// may go back and forth within the bound, which no linearization allows.
	type view struct {
		ops  []ckOp
		full bool
	}
	views := []view{{history, cfg.faults != nil}}
	if cfg.oneway {
		own, others := []ckOp{}, []ckOp{}
		for _, op := range history {
			if op.in.op != 'r' || op.client < workers {
				own = append(own, op)
			}
			if op.in.op != 'r' || op.client >= workers {
				if op.in.op != 'r' && op.client < workers && op.ret != math.MaxInt64 {
					op.ret += int64(repairBound)
				}
				others = append(others, op)
			}
		}
		views = []view{{own, cfg.faults != nil}, {others, false}}
	}
	for _, v := range views {
		if v.full {
			rig.check(t, v.ops, keys, &res)
			continue
		}
		// Stale reads only. (A control's evidence too: porcupine on its
		// long, broken histories only times out.)
		byKey := map[int64][]ckOp{}
		for _, op := range v.ops {
			byKey[op.key] = append(byKey[op.key], op)
		}
		for _, ops := range byKey {
			res.staleReads += staleReads(ops)
		}
	}
	if cfg.faults != nil && cfg.shareKeys && (cfg.wal || !cfg.sql && !cfg.late) {
		time.Sleep(walLag) // the last writes the WAL carries reach the cache
		res.cacheMismatches = rig.quiescence(t, keys)
	}
	return res
}

// minLateCommits is how many late commits a run with them waits for.
const minLateCommits = 3

// lateCommits injects late-commit faults until rctx ends and returns their
// writes. Each takes a key that exists off the load's writers, holds its row
// lock in a transaction of its own, and lets a store whose database link
// goes through a proxy delete or upsert the row with a 300ms deadline. Once
// the statement waits on the lock, the link stalls (not even the cancel
// request gets through), so the call fails with an unknown outcome while
// the statement stays on the server and the load's readers fill the key
// with the row. Then the lock is released, the statement commits, and the
// write counts as acknowledged walLag after its commit was seen. The store has no Repairer, whose outbox
// row would commit with the statement and repair it, and no second delete
// (WriteTimeout < 0): only the WAL invalidator stands between the late
// commit and a stale cache.
func (rig *ckRig) lateCommits(t *testing.T, rctx context.Context, locks keyLocks, keys, client int, done *atomic.Int64) []ckOp {
	e := rig.e
	u, err := url.Parse(e.URL)
	if err != nil {
		t.Error(err)
		return nil
	}
	dbpx := newProxy(t, u.Host)
	u.Host = dbpx.Addr()
	pcfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Error(err)
		return nil
	}
	pcfg.MaxConns = 1
	pcfg.ConnConfig.RuntimeParams["application_name"] = "late"
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer pool.Close()
	mc, err := cacheClient(2, time.Second, rig.px.Addr())
	if err != nil {
		t.Error(err)
		return nil
	}
	o := &repo.Options{Namespace: e.NS, WriteTimeout: -1}
	s, err := repo.New(pool, mc, productTable, o)
	if err != nil {
		t.Error(err)
		return nil
	}
	// reader fills the key with the row between the stall and the late
	// commit, over a healthy link, so every late commit has a stale entry
	// to repair (the load's readers may not read that key in time).
	reader, err := repo.New(e.Pool, mc, productTable, &repo.Options{Namespace: e.NS})
	if err != nil {
		t.Error(err)
		return nil
	}
	var ops []ckOp
	for i := 0; sleep(rctx, 300*time.Millisecond) == nil; i++ {
		// The store's one connection was lost with the last stall: dial it
		// now, so that the write's 300ms go to waiting on the lock, not to
		// connecting on a loaded machine.
		if err := pool.Ping(rctx); err != nil {
			continue
		}
		key := int64(1 + rand.IntN(keys))
		op, ok := rig.lateCommit(t, s, reader, dbpx, &locks[key], key, i)
		if !ok {
			continue
		}
		op.client = client
		op.ret += int64(walLag)
		ops = append(ops, op)
		rig.faults.Add(1)
		done.Add(1)
	}
	return ops
}

// lateCommit runs one late-commit fault on key; op.ret is when its commit
// was seen. ok is false when the row did not exist (nothing to wait on).
func (rig *ckRig) lateCommit(t *testing.T, s, reader *repo.Store[Product, int64], dbpx *proxy, lock *sync.RWMutex, key int64, i int) (op ckOp, ok bool) {
	e := rig.e
	lock.Lock() // the load's writers are done with the key, and stay off it
	defer lock.Unlock()
	defer dbpx.Heal()
	tx, err := e.Pool.Begin(ctx)
	if err != nil {
		t.Error(err)
		return op, false
	}
	defer tx.Rollback(ctx)
	var name string
	if err := tx.QueryRow(ctx, `SELECT name FROM products WHERE id = $1 FOR UPDATE`, key).Scan(&name); err != nil {
		return op, false // the row is gone: a statement would not wait
	}
	op = ckOp{key: key, in: ckInput{'d', ""}}
	if i%2 == 0 {
		op.in = ckInput{'w', fmt.Sprintf("late%d", i)}
	}
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	op.call = rig.now()
	go func() {
		if op.in.op == 'w' {
			done <- storeSubject{s}.put(dctx, key, op.in.value)
		} else {
			done <- storeSubject{s}.del(dctx, key)
		}
	}()
	if ended, err := waitLate(t, e, done); ended {
		if err == nil {
			t.Errorf("a write on key %d succeeded while another transaction held its row lock", key)
		}
		// The write gave up before its statement reached the lock (its
		// 300ms went elsewhere on a loaded machine): nothing can commit
		// late, so this attempt injected no fault.
		t.Logf("late-commit attempt on key %d ended before it waited on the lock: %v", key, err)
		return op, false
	}
	dbpx.Partition()
	rig.faultLog.add(rig.now(), "late-commit stall")
	if err := <-done; err == nil {
		t.Errorf("a write blocked on a row lock over a stalled link succeeded")
		return op, false
	}
	_ = sleep(ctx, 50*time.Millisecond) // the load's readers may fill the key meanwhile
	if _, err := reader.Get(ctx, key); err != nil {
		t.Errorf("reading key %d before its late commit: %v", key, err)
		return op, false
	}
	if err := tx.Commit(ctx); err != nil {
		t.Error(err)
		return op, false
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var got string
		err := e.Pool.QueryRow(ctx, `SELECT name FROM products WHERE id = $1`, key).Scan(&got)
		if op.in.op == 'd' && errors.Is(err, pgx.ErrNoRows) || op.in.op == 'w' && err == nil && got == op.in.value {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the stalled write on key %d never committed (%q, %v)", key, got, err)
			return op, false
		}
		time.Sleep(time.Millisecond)
	}
	op.ret = rig.now()
	rig.faultLog.add(op.ret, "late commit")
	return op, true
}

// waitLate waits until the late writer's statement waits on a lock, or until
// the write ended first (ended, with the write's error from done).
func waitLate(t *testing.T, e *env, done <-chan error) (ended bool, err error) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'late' AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Error(err)
			return false, nil
		}
		if n > 0 {
			return false, nil
		}
		select {
		case err := <-done:
			return true, err
		case <-time.After(time.Millisecond):
		}
	}
	t.Error("the late writer never waited on the row lock")
	return false, nil
}

// TestConsistencyEveryChange: the consistency checker with the faults of
// changes the stores did not make through the cache. Half the stores read
// and write as the next release (another row type, so another codec
// fingerprint) on the same keys; a client writes behind the stores' backs
// with plain SQL while the WAL invalidator runs, its writes acknowledged one
// second (the lag bound) after they return; a writer's statements commit
// after its caller's deadline, acknowledged the lag bound after they
// committed; one store's writes cannot reach memcached for 250ms in every
// 500ms while its reads still do. Memcached restarts, killed backends,
// evictions and fill delays run throughout. No read may be stale: the
// one-way partitioned store's own reads strictly, and linearizable with every
// write; the others' reads within the outbox's repair bound of its writes
// (fleetRun says why they are not checked for linearizability). After
// quiescence the cache must equal the database. Each fault has a control,
// without faults or evictions (which hide stale entries by dropping them),
// that shows violations without the fix: each release its own key space;
// writes behind the stores' backs without the invalidator (only the SQL
// writer writes: under the full mix, the stores' own writes overwrite its
// stale entries within the lag bound, and nothing shows); late commits
// without it; a one-way partition without the record of failed
// invalidations.
func TestConsistencyEveryChange(t *testing.T) {
	cfg := fleetCfg{shareKeys: true, wal: true, v2: true, sql: true, storesWrite: true, oneway: true, late: true,
		faults: []string{"restart", "kill", "none"}, d: consistencyDuration()}
	r := fleetRun(t, cfg)
	violations := r.staleReads + r.badKeys + r.cacheMismatches
	testenv.Summaryf("consistency: protocol=store faults=behind-back,releases,late-commit,oneway,restart,kill,evict,delay instances=4 processes=1 ops=%d faults=%d late_commits=%d violations=%d stale_reads=%d nonlinearizable_keys=%d unproven_keys=%d cache_mismatches=%d cache_errors=%d\n",
		r.ops, r.faults, r.lateCommits, violations, r.staleReads, r.badKeys, r.unprovenKeys, r.cacheMismatches, r.cacheErrors)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads, %d keys not linearizable, %d cache mismatches", r.staleReads, r.badKeys, r.cacheMismatches)
	}
	if r.faults == 0 || r.lateCommits == 0 || r.ops < 2000 {
		t.Fatalf("the run proves little: %d ops, %d faults, %d late commits", r.ops, r.faults, r.lateCommits)
	}
	for _, c := range []struct {
		name string
		cfg  fleetCfg
	}{
		{"releases", fleetCfg{wal: true, v2: true, sql: true, storesWrite: true}},
		{"behind-back", fleetCfg{shareKeys: true, sql: true}},
		{"late-commit", fleetCfg{shareKeys: true, late: true}},
		{"oneway", fleetCfg{shareKeys: true, storesWrite: true, oneway: true, noDirty: true}},
	} {
		c.cfg.d = 3 * time.Second
		if c.name == "oneway" {
			// Its stale reads need the partitioned store to read a key it
			// just failed to write: rarer (3 in one loaded 3s run, 10-74
			// in 6s ones), so it runs longer.
			c.cfg.d = 10 * time.Second
		}
		r := fleetRun(t, c.cfg)
		v := r.staleReads + r.badKeys
		testenv.Summaryf("consistency: protocol=old-%s faults=%s instances=4 processes=1 ops=%d late_commits=%d violations=%d stale_reads=%d\n",
			c.name, c.name, r.ops, r.lateCommits, v, r.staleReads)
		if v == 0 {
			t.Errorf("control %s: the checker found nothing wrong without the fix", c.name)
		}
	}
}

// TestConsistencyOneWay: one store's writes cannot reach memcached for
// 250ms in every 500ms while its reads still do (a one-way partition), the
// other stores are unaffected, evictions run throughout, and only the outbox
// repairs (no WAL invalidator). That store must never read stale: its own
// failed write-throughs are read from the database until its own deletes of
// them succeed, and the others' write-throughs reach the cache it reads.
// The other stores may read the previous value of a key the partitioned
// store wrote until its outbox row is replayed (repairBound), never later;
// and after quiescence the cache must equal the database.
func TestConsistencyOneWay(t *testing.T) {
	r := fleetRun(t, fleetCfg{shareKeys: true, storesWrite: true, oneway: true, faults: []string{"none"}, d: consistencyDuration()})
	violations := r.staleReads + r.badKeys + r.cacheMismatches
	testenv.Summaryf("consistency: protocol=store faults=oneway,evict,delay instances=4 processes=1 ops=%d faults=%d violations=%d stale_reads=%d nonlinearizable_keys=%d unproven_keys=%d cache_mismatches=%d\n",
		r.ops, r.faults, violations, r.staleReads, r.badKeys, r.unprovenKeys, r.cacheMismatches)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads, %d keys not linearizable, %d cache mismatches", r.staleReads, r.badKeys, r.cacheMismatches)
	}
	if r.faults == 0 || r.ops < 2000 {
		t.Fatalf("the run proves little: %d ops, %d faults", r.ops, r.faults)
	}
}
