package repo_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// rolling is one app instance's cache during a run of server-list changes:
// the Migration it is in now. When a migration is over (its phase is
// PhaseNew, the same as the next one's PhaseOld), the instance moves to the
// next migration, whose old ring is the finished one's new ring.
type rolling struct {
	m atomic.Pointer[memclient.Migration]
}

func (r *rolling) cur() *memclient.Migration { return r.m.Load() }

func (r *rolling) Get(key string) (*memcache.Item, error) { return r.cur().Get(key) }
func (r *rolling) GetMulti(keys []string) (map[string]*memcache.Item, error) {
	return r.cur().GetMulti(keys)
}
func (r *rolling) Add(it *memcache.Item) error            { return r.cur().Add(it) }
func (r *rolling) Set(it *memcache.Item) error            { return r.cur().Set(it) }
func (r *rolling) CompareAndSwap(it *memcache.Item) error { return r.cur().CompareAndSwap(it) }
func (r *rolling) Delete(key string) error                { return r.cur().Delete(key) }
func (r *rolling) Increment(key string, d uint64) (uint64, error) {
	return r.cur().Increment(key, d)
}
func (r *rolling) LeaseGet(key string, ttl int32) (*memcache.Item, *memclient.Lease, error) {
	return r.cur().LeaseGet(key, ttl)
}
func (r *rolling) Server(key string) (net.Addr, error) { return r.cur().Server(key) }
func (r *rolling) DeleteIfUnchanged(items []*memcache.Item) ([]string, error) {
	return r.cur().DeleteIfUnchanged(items)
}
func (r *rolling) Invalidating(keys []string, change func(*memclient.Client) error) error {
	return r.cur().Invalidating(keys, change)
}
func (r *rolling) Fallback(key string) *memclient.Client { return r.cur().Fallback(key) }

// ringRun runs the checker over 4 memcached nodes while the server list
// changes three times (a node added, a node removed, the whole pool moved)
// and, with kill, nodes restart (losing what they held). Each change is a
// migration through the phases in phases, and the instances switch phase
// one at a time, at random moments, each only once every instance has left
// the phase before the one it leaves (so at most two adjacent phases run
// side by side, as in a rollout). With kill, a node is killed every 500ms,
// and either restarted at once or after 300ms down. phases lists the phases a migration goes
// through: all five, or a naive list that skips one (a control, checked for
// stale reads only).
func ringRun(t *testing.T, phases []memclient.Phase, kill, control bool, d time.Duration) (res ckResult, migrations int) {
	t.Helper()
	const instances, workers, keys = 4, 5, 24
	e := newEnv(t)
	for k := int64(1); k <= keys; k++ {
		e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES ($1, $2, 'init', 1, 0)`, k, fmt.Sprint("A", k))
	}
	var nodes []*repotest.MemcachedProcess
	var addrs []string
	for range 4 {
		mp := startPrivateMemcached(t)
		nodes, addrs = append(nodes, mp), append(addrs, mp.Addr())
	}
	// The server lists: 3 nodes, a 4th added, the first removed, the pool
	// moved (two of its nodes replaced).
	lists := [][]string{addrs[:3], addrs[:4], addrs[1:4], {addrs[0], addrs[3]}}
	ring := func(list []string) *memclient.Client {
		mc, err := memclient.New(memclient.Config{Servers: list, MaxIdleConns: workers * 2, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return mc
	}
	var rigs []*rolling
	var subjects []subject
	var repairers []*invalidation.Repairer
	var stores []*repo.Store[Product, int64]
	for range instances {
		r := &rolling{}
		m, err := memclient.NewMigration(ring(lists[0]), ring(lists[1]), memclient.PhaseOld)
		if err != nil {
			t.Fatal(err)
		}
		r.m.Store(m)
		s, rep := newCkStore(t, newCkPool(t, e.URL, workers), r, e.NS)
		rigs, subjects, repairers, stores = append(rigs, r), append(subjects, storeSubject{s}), append(repairers, rep), append(stores, s)
	}
	var faults atomic.Int64
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	rctx, stop := context.WithTimeout(ctx, d)
	defer stop()
	var wg sync.WaitGroup
	for _, r := range repairers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	wg.Add(1)
	go func() { // the server-list changes, phase by phase, instance by instance
		defer wg.Done()
		step := (d - time.Second) / time.Duration(3*len(phases)*instances)
		for mi := 1; mi < len(lists); mi++ {
			if mi > 1 { // the next migration starts where the last one ended
				for _, r := range rigs {
					m, err := memclient.NewMigration(r.cur().New(), ring(lists[mi]), memclient.PhaseOld)
					if err != nil {
						t.Error(err)
						return
					}
					r.m.Store(m)
				}
			}
			for _, p := range phases[1:] {
				if p == memclient.PhaseFallback && phases[1] == memclient.PhaseWriteBoth {
					// Every instance writes both: clear the new ring of
					// what earlier lists left there.
					// A node restarting cuts the listing: sweep again.
					for tries := 0; ; tries++ {
						_, err := rigs[0].cur().Sweep(rctx, e.NS)
						if err == nil || rctx.Err() != nil {
							break
						}
						if tries == 20 {
							t.Errorf("sweep: %v", err)
							return
						}
						_ = sleep(rctx, 20*time.Millisecond)
					}
				}
				for _, i := range rand.Perm(instances) {
					if sleep(rctx, time.Duration(rand.Int64N(int64(2*step)))) != nil {
						return
					}
					_ = rigs[i].cur().SetPhase(p)
					if os.Getenv("CACHEDREPO_CK_DEBUG") != "" {
						fmt.Printf("phase: migration %d instance %d -> %v at %d\n", mi, i, p, now())
					}
				}
			}
			migrations++
			faults.Add(1)
		}
	}()
	if kill {
		wg.Add(1)
		go func() { // nodes killed: down for 300ms, or restarted at once; either way empty
			defer wg.Done()
			for i := 0; sleep(rctx, 500*time.Millisecond) == nil; i++ {
				n := nodes[rand.IntN(len(nodes))]
				var err error
				if i%2 == 0 {
					err = n.Restart()
				} else if err = n.Stop(); err == nil {
					_ = sleep(ctx, 300*time.Millisecond)
					err = n.Start()
				}
				if err != nil {
					t.Errorf("kill memcached: %v", err)
					return
				}
				faults.Add(1)
			}
		}()
	}
	history := runCkLoad(rctx, subjects, workers, keys, 0, "", now)
	wg.Wait()
	if f := os.Getenv("CACHEDREPO_CK_DUMP"); f != "" {
		var b strings.Builder
		for _, op := range history {
			fmt.Fprintf(&b, "%d %d %c %q %q %d %d\n", op.key, op.client, op.in.op, op.in.value, op.out, op.call, op.ret)
		}
		_ = os.WriteFile(f, []byte(b.String()), 0o644)
	}
	res = ckResult{ops: len(history), faults: int(faults.Load())}
	for _, s := range stores {
		res.cacheErrors += int(s.Stats().CacheErrors)
	}
	if control {
		// A control: stale reads are its evidence.
		byKey := map[int64][]ckOp{}
		for _, op := range history {
			byKey[op.key] = append(byKey[op.key], op)
		}
		for _, ops := range byKey {
			res.staleReads += staleReads(ops)
		}
		return res, migrations
	}
	rig := &ckRig{e: e}
	rig.check(t, history, keys, &res)

	// After quiescence, over the last list: every key's cached row is the
	// database's.
	final := ring(lists[len(lists)-1])
	r := mustRepairer(e.Pool, final, invalidation.RepairerConfig{})
	if _, err := r.RunOnce(ctx, 0); err != nil {
		t.Fatalf("final outbox replay: %v", err)
	}
	checker, err := repo.New(e.Pool, final, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	for k := int64(1); k <= keys; k++ {
		var want string
		err := e.Pool.QueryRow(ctx, `SELECT name FROM products WHERE id = $1`, k).Scan(&want)
		if err != nil && !strings.Contains(err.Error(), "no rows") {
			t.Fatal(err)
		}
		if got, err := (storeSubject{checker}).get(ctx, k); err != nil || got != want {
			res.cacheMismatches++
			t.Errorf("key %d after quiescence: cache %q (%v), database %q", k, got, err, want)
		}
	}
	return res, migrations
}

// TestConsistencyRing: the consistency checker over a fleet of 4 memcached
// nodes whose server list changes three times during the run (a 4th node
// added, the first removed, the pool moved to other nodes), each change a
// migration through the five phases with the instances switching at
// different moments, while nodes restart. No read may be stale (older than
// a write acknowledged before it began), and the cache must equal the
// database afterwards. The control skips PhaseWriteBoth: a writer of the
// old phase leaves the new ring stale for a reader of the fallback phase.
// (Skipping PhaseNewReads needs an entry on the old ring that no writer of
// the fallback phase deleted; with this load's few hot keys there is none
// by the time an instance reaches PhaseNew, so that control would prove
// nothing here.) Linearizability is measured, not required: while
// instances of two phases read different rings, a write reaches the two
// rings one after the other, so until it returns one instance may read the
// new row (from the database, after the write invalidated its ring) while
// another still reads the old one from the other ring. Porcupine finds such
// keys (nonlinearizable_keys_within_writes); once the write has returned no
// read returns the old row, which stale_reads checks.
func TestConsistencyRing(t *testing.T) {
	all := []memclient.Phase{memclient.PhaseOld, memclient.PhaseWriteBoth, memclient.PhaseFallback, memclient.PhaseNewReads, memclient.PhaseNew}
	r, migrations := ringRun(t, all, true, false, consistencyDuration())
	violations := r.staleReads + r.cacheMismatches
	testenv.Summaryf("consistency: protocol=store nodes=4 faults=node-kill,node-add,node-remove,migrate instances=4 processes=1 migrations=%d ops=%d faults=%d violations=%d stale_reads=%d cache_mismatches=%d nonlinearizable_keys_within_writes=%d unproven_keys=%d cache_errors=%d\n",
		migrations, r.ops, r.faults, violations, r.staleReads, r.cacheMismatches, r.badKeys, r.unprovenKeys, r.cacheErrors)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads, %d cache mismatches", r.staleReads, r.cacheMismatches)
	}
	if migrations != 3 || r.ops < 2000 {
		t.Fatalf("the run proves little: %d migrations, %d ops", migrations, r.ops)
	}
	for _, c := range []struct {
		name   string
		phases []memclient.Phase
	}{
		{"skip-write-both", []memclient.Phase{memclient.PhaseOld, memclient.PhaseFallback, memclient.PhaseNewReads, memclient.PhaseNew}},
	} {
		r, migrations := ringRun(t, c.phases, true, true, 4*time.Second)
		v := r.staleReads + r.badKeys
		testenv.Summaryf("consistency: protocol=naive-%s nodes=4 faults=node-kill,node-add,node-remove,migrate instances=4 processes=1 migrations=%d ops=%d violations=%d stale_reads=%d\n",
			c.name, migrations, r.ops, v, r.staleReads)
		if v == 0 {
			t.Errorf("control %s: the checker found nothing wrong with a migration that skips a phase", c.name)
		}
	}
}
