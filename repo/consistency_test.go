package repo_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// The consistency checker. Several instances, each with its own pool and
// cache client, hammer a few hot keys with reads, upserts and deletes while
// faults are injected. Every write stores a value no other write uses, so a
// read names the write it saw. Per key, the history is checked for
// linearizability with porcupine (a register: reads return the last value
// written, deletes write "absent"), and stale reads are counted directly: a
// read whose every possible source was overwritten by a write that was
// acknowledged before the read began. Failed reads are dropped; failed
// writes may or may not have happened, so they stay in the history with no
// end. After the run every cached row must equal the database.

type ckInput struct {
	op    byte // 'r', 'w', 'd'
	value string
}

type ckOp struct {
	client    int
	key       int64
	in        ckInput
	out       string // what a read saw ("" = not found)
	call, ret int64
}

// subject is what the checker drives: the real store, or the naive protocol.
type subject interface {
	get(ctx context.Context, key int64) (string, error)
	put(ctx context.Context, key int64, value string) error
	del(ctx context.Context, key int64) error
}

// manyGetter is a subject that can also read several keys in one call
// (Store.GetMany): runCkLoad then makes a third of its reads that way, each
// key's answer checked as a read of its own.
type manyGetter interface {
	getMany(ctx context.Context, keys []int64) (map[int64]string, error)
}

// errNoop is what a subject's write returns when it did nothing.
var errNoop = errors.New("no-op")

// acker is a subject whose writes reach the cache only some time after they
// return (writes behind the stores' backs, applied by the WAL invalidator):
// ackDelay is that bound, in nanoseconds.
type acker interface{ ackDelay() int64 }

type storeSubject struct{ s *repo.Store[Product, int64] }

func (s storeSubject) get(ctx context.Context, key int64) (string, error) {
	p, err := s.s.Get(ctx, key)
	if errors.Is(err, repo.ErrNotFound) {
		return "", nil
	}
	return p.Name, err
}

// put writes with Upsert or, for half the values (an even last byte), with
// Replace, and Upsert only if Replace found no row.
func (s storeSubject) put(ctx context.Context, key int64, value string) error {
	p := Product{ID: key, ArticleNumber: fmt.Sprint("A", key), Name: value, CategoryID: 1}
	if replaces(value) {
		if _, err := s.s.Replace(ctx, p); !errors.Is(err, repo.ErrNotFound) {
			return err
		}
	}
	_, err := s.s.Upsert(ctx, p)
	return err
}

// replaces reports whether a subject's put of value tries Replace first.
func replaces(value string) bool { return value != "" && value[len(value)-1]%2 == 0 }

func (s storeSubject) del(ctx context.Context, key int64) error {
	if err := s.s.Delete(ctx, key); err != nil && !errors.Is(err, repo.ErrNotFound) {
		return err
	}
	return nil
}

// naiveSubject is the textbook cache-aside plus write-through that the
// library exists to replace: plain Set on fill, blind Set on write.
type naiveSubject struct {
	pool  *pgxpool.Pool
	mc    *memcache.Client
	ns    string
	delay func()
}

func (n naiveSubject) key(k int64) string { return fmt.Sprintf("%s:naive:%d", n.ns, k) }

func (n naiveSubject) get(ctx context.Context, key int64) (string, error) {
	if it, err := n.mc.Get(n.key(key)); err == nil {
		return strings.TrimPrefix(string(it.Value), "="), nil
	}
	var name string
	err := n.pool.QueryRow(ctx, `SELECT name FROM products WHERE id = $1`, key).Scan(&name)
	if err != nil && !strings.Contains(err.Error(), "no rows") {
		return "", err
	}
	n.delay()
	_ = n.mc.Set(&memcache.Item{Key: n.key(key), Value: []byte("=" + name)})
	return name, nil
}

func (n naiveSubject) put(ctx context.Context, key int64, value string) error {
	_, err := n.pool.Exec(ctx, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES ($1, $2, $3, 1, 0)
		ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name`, key, fmt.Sprint("A", key), value)
	if err != nil {
		return err
	}
	n.delay()
	_ = n.mc.Set(&memcache.Item{Key: n.key(key), Value: []byte("=" + value)})
	return nil
}

func (n naiveSubject) del(ctx context.Context, key int64) error {
	if _, err := n.pool.Exec(ctx, `DELETE FROM products WHERE id = $1`, key); err != nil {
		return err
	}
	n.delay()
	_ = n.mc.Set(&memcache.Item{Key: n.key(key), Value: []byte("=")})
	return nil
}

type ckConfig struct {
	protocol  string // "store" or "naive"
	instances int
	workers   int // per instance
	keys      int
	duration  time.Duration
	// faults are injected in turn every 400ms: "restart" (memcached),
	// "partition" (250ms, then heal), "kill" (pg_terminate_backend), "none".
	// With any, evictions and fill delays run throughout.
	faults []string
}

type ckResult struct {
	ops, faults, staleReads, badKeys int
	unprovenKeys                     int // porcupine timed out
	unseenFailedWrites               int
	cacheMismatches, cacheErrors     int
	lateCommits                      int // writes that committed after their caller's deadline
}

func runConsistency(t *testing.T, cfg ckConfig) ckResult {
	t.Helper()
	rig := newCkRig(t, cfg.keys)
	e, px := rig.e, rig.px
	var subjects []subject
	var stores []*repo.Store[Product, int64]
	var repairers []*invalidation.Repairer
	for i := 0; i < cfg.instances; i++ {
		pool := newCkPool(t, e.URL, cfg.workers)
		mc, err := cacheClient(cfg.workers*2, time.Second, px.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if cfg.protocol == "naive" {
			raw := memcache.New(px.Addr())
			raw.MaxIdleConns, raw.Timeout = cfg.workers*2, time.Second
			subjects = append(subjects, naiveSubject{pool: pool, mc: raw, ns: e.NS, delay: ckDelay})
			continue
		}
		s, r := newCkStore(t, pool, mc, e.NS)
		stores = append(stores, s)
		subjects = append(subjects, storeSubject{s})
		repairers = append(repairers, r)
	}

	start := time.Now()
	rig.now = func() int64 { return int64(time.Since(start)) }
	rctx, stop := context.WithTimeout(ctx, cfg.duration)
	defer stop()
	var wg sync.WaitGroup
	for _, r := range repairers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	rig.injectFaults(t, rctx, &wg, cfg.faults)
	history := runCkLoad(rctx, subjects, cfg.workers, cfg.keys, 0, "", rig.now)
	wg.Wait()
	px.Heal()

	res := ckResult{ops: len(history), faults: int(rig.faults.Load())}
	for _, s := range stores {
		res.cacheErrors += int(s.Stats().CacheErrors)
	}
	rig.check(t, history, cfg.keys, &res)
	if cfg.protocol == "store" {
		res.cacheMismatches = rig.quiescence(t, cfg.keys)
	}
	return res
}

// ckDelay sleeps up to 3ms, once in four calls: between a fill's database
// read and its cache write (and between the two steps of a naive write).
func ckDelay() {
	if rand.IntN(4) == 0 {
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
	}
}

// ckRig is what one consistency run shares between its instances: a fresh
// database holding the keys' initial rows, a small private memcached behind
// a partition proxy, the run's clock and its fault timeline.
type ckRig struct {
	e        *env
	mp       *repotest.MemcachedProcess
	px       *proxy
	now      func() int64 // nanoseconds since the run's start, set by the caller
	faultLog ckFaults
	faults   atomic.Int64
}

func newCkRig(t *testing.T, keys int) *ckRig {
	t.Helper()
	e := newEnv(t)
	mp := startPrivateMemcached(t, "-m", "8") // small: the filler of injectFaults causes evictions
	px := newProxy(t, mp.Addr())
	for k := int64(1); k <= int64(keys); k++ {
		e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES ($1, $2, 'init', 1, 0)`, k, fmt.Sprint("A", k))
	}
	return &ckRig{e: e, mp: mp, px: px}
}

// newCkPool opens an instance's own pool. Its backends are named
// "consistency", which is how the "kill" fault finds them.
func newCkPool(t testing.TB, url string, workers int) *pgxpool.Pool {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = int32(workers + 2)
	pcfg.ConnConfig.RuntimeParams["application_name"] = "consistency"
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// newCkStore builds one checked store instance on its own pool and cache
// client, with an outbox, a short breaker cooldown and lease wait, fill
// delays (ckDelay between the database read and the fill), and its own
// Repairer for the caller to run.
func newCkStore(t testing.TB, pool *pgxpool.Pool, mc repo.Cache, ns string) (*repo.Store[Product, int64], *invalidation.Repairer) {
	t.Helper()
	r := mustRepairer(pool, mc, invalidation.RepairerConfig{Delay: 200 * time.Millisecond, Interval: 50 * time.Millisecond})
	o := &repo.Options{Namespace: ns, Repairer: r}
	o.BreakerCooldown = 100 * time.Millisecond
	o.LeaseWait = 50 * time.Millisecond
	db := &hookDB{Beginner: pool, after: func(sql string) {
		if strings.HasPrefix(sql, "SELECT") && !strings.Contains(sql, "FOR UPDATE") {
			ckDelay() // between the database read and the fill
		}
	}}
	s, err := repo.New(db, mc, productTable, o)
	if err != nil {
		t.Fatal(err)
	}
	return s, r
}

// injectFaults starts, under wg and until rctx ends, the rotation through
// kinds (one every 400ms) and, if there are any, the evictions.
func (rig *ckRig) injectFaults(t *testing.T, rctx context.Context, wg *sync.WaitGroup, kinds []string) {
	if len(kinds) == 0 {
		return
	}
	e, mp, px, now := rig.e, rig.mp, rig.px, rig.now
	wg.Add(2)
	go func() { // rotate through the fault kinds
		defer wg.Done()
		for i := 0; ; i++ {
			if sleep(rctx, 400*time.Millisecond) != nil {
				return
			}
			kind := kinds[i%len(kinds)]
			if only := os.Getenv("CACHEDREPO_CK_FAULT"); only != "" { // diagnose one kind: restart, partition, kill, none
				kind = only
			}
			switch kind {
			case "restart":
				rig.faultLog.add(now(), "restart begins")
				if err := mp.Restart(); err != nil {
					t.Errorf("restart memcached: %v", err)
					return
				}
			case "partition":
				rig.faultLog.add(now(), "partition")
				px.Partition()
				_ = sleep(rctx, 250*time.Millisecond)
				rig.faultLog.add(now(), "heal begins")
				px.Heal()
			case "kill":
				rig.faultLog.add(now(), "kill backends")
				_, _ = e.Pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'consistency'`)
			}
			rig.faultLog.add(now(), "fault done")
			rig.faults.Add(1)
		}
	}()
	go func() { // evictions: fill the small memcached with other values
		defer wg.Done()
		filler, _ := cacheClient(2, 100*time.Millisecond, mp.Addr())
		junk := make([]byte, 8<<10)
		for i := 0; rctx.Err() == nil; i++ {
			_ = filler.Set(&memcache.Item{Key: fmt.Sprintf("%s:junk:%d", e.NS, i), Value: junk})
		}
	}()
}

// runCkLoad runs workers goroutines per subject until rctx ends, each
// reading (70%), upserting (25%) and deleting (5%) random keys, and returns
// their history. Clients are numbered from firstClient; written values are
// prefix+"v"+a number unique in this call, so prefix makes them unique
// across calls.
func runCkLoad(rctx context.Context, subjects []subject, workers, keys, firstClient int, prefix string, now func() int64) []ckOp {
	var mu sync.Mutex
	var history []ckOp
	var wg sync.WaitGroup
	var seq atomic.Int64
	for i, sub := range subjects {
		for w := 0; w < workers; w++ {
			client := firstClient + i*workers + w
			wg.Add(1)
			go func() {
				defer wg.Done()
				var local []ckOp
				for rctx.Err() == nil {
					key := int64(1 + rand.IntN(keys))
					op := ckOp{client: client, key: key, call: now()}
					var err error
					switch r := rand.IntN(100); {
					case r < 70:
						op.in.op = 'r'
						if m, ok := sub.(manyGetter); ok && r%3 == 0 {
							local = append(local, readMany(rctx, m, op, keys, now)...)
							continue
						}
						op.out, err = sub.get(rctx, key)
					case r < 95:
						op.in = ckInput{'w', fmt.Sprintf("%sv%d", prefix, seq.Add(1))}
						err = sub.put(rctx, key, op.in.value)
					default:
						op.in.op = 'd'
						err = sub.del(rctx, key)
					}
					op.ret = now()
					if errors.Is(err, errNoop) {
						continue // a write that did nothing
					}
					if err != nil {
						if op.in.op == 'r' {
							continue // a failed read says nothing
						}
						op.ret = math.MaxInt64 // a failed write may have happened
					} else if a, ok := sub.(acker); ok && op.in.op != 'r' {
						op.ret += a.ackDelay() // acknowledged only once it can have reached the cache
					}
					local = append(local, op)
				}
				mu.Lock()
				history = append(history, local...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return history
}

// readMany reads op's key and two other random keys of 1..keys with one
// getMany, returning a read per key (none if the call failed).
func readMany(rctx context.Context, m manyGetter, op ckOp, keys int, now func() int64) []ckOp {
	ks := []int64{op.key}
	for len(ks) < min(3, keys) {
		if k := int64(1 + rand.IntN(keys)); !slices.Contains(ks, k) {
			ks = append(ks, k)
		}
	}
	got, err := m.getMany(rctx, ks)
	op.ret = now()
	if err != nil {
		return nil // a failed read says nothing
	}
	ops := make([]ckOp, len(ks))
	for i, k := range ks {
		ops[i] = op
		ops[i].key, ops[i].out = k, got[k]
	}
	return ops
}

// check counts, per key of history, the stale reads and whether porcupine
// proves it linearizable, into res.
func (rig *ckRig) check(t *testing.T, history []ckOp, keys int, res *ckResult) {
	// A failed write may have happened; with no end it could linearize
	// anywhere after its start, which makes porcupine's search explode. One
	// whose value no read saw can always be placed at the very end of the
	// history, where it contradicts nothing, so it is dropped.
	seen := map[string]bool{}
	for _, op := range history {
		if op.in.op == 'r' {
			seen[op.out] = true
		}
	}
	byKey := map[int64][]ckOp{}
	for _, op := range history {
		if op.in.op == 'w' && op.ret == math.MaxInt64 && !seen[op.in.value] {
			res.unseenFailedWrites++
			continue
		}
		byKey[op.key] = append(byKey[op.key], op)
	}
	for k := int64(1); k <= int64(keys); k++ {
		ops := byKey[k]
		res.staleReads += staleReads(ops)
		switch linearizable(t, ops, &rig.faultLog) {
		case porcupine.Illegal:
			res.badKeys++
		case porcupine.Unknown:
			res.unprovenKeys++
		}
	}
}

// quiescence replays what is left of the outbox and then compares every
// key's cached row with the database, returning the number that differ.
func (rig *ckRig) quiescence(t *testing.T, keys int) int {
	e := rig.e
	mismatches := 0
	mc, _ := cacheClient(4, time.Second, rig.mp.Addr())
	r := mustRepairer(e.Pool, mc, invalidation.RepairerConfig{})
	if _, err := r.RunOnce(ctx, 0); err != nil {
		t.Fatalf("final outbox replay: %v", err)
	}
	checker, err := repo.New(e.Pool, mc, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	for k := int64(1); k <= int64(keys); k++ {
		var want string
		var version int64
		err := e.Pool.QueryRow(ctx, `SELECT name, version FROM products WHERE id = $1`, k).Scan(&want, &version)
		if err != nil && !strings.Contains(err.Error(), "no rows") {
			t.Fatal(err)
		}
		// First the raw entry, whichever release's row type wrote it: a row
		// must carry the database's version, a "not found" stand for a
		// missing row.
		if it, err := mc.Get(checker.Key(k)); err == nil {
			kind := it.Flags & 0xff
			ver, n := binary.Uvarint(it.Value[min(4, len(it.Value)):])
			switch {
			case kind == 1 && (n <= 0 || int64(ver) != version):
				mismatches++
				t.Errorf("key %d after quiescence: a cached row of version %d, database version %d (%q)", k, ver, version, want)
				continue
			case kind == 2 && want != "":
				mismatches++
				t.Errorf("key %d after quiescence: cached as not found, database %q", k, want)
				continue
			}
		}
		got, err := storeSubject{checker}.get(ctx, k)
		if err != nil || got != want {
			mismatches++
			t.Errorf("key %d after quiescence: cache %q (%v), database %q", k, got, err, want)
		}
	}
	return mismatches
}

// staleReads counts reads that every possible source had been overwritten
// before they began: for a read of value v, every write of v (or, for "not
// found", every delete and the initial state when it is absent) returned
// before some other write both started and returned, before the read began.
// Such a read is a linearizability violation, whatever the rest of the history.
func staleReads(ops []ckOp) int {
	type w struct {
		call, ret int64
		value     string
	}
	writes := []w{{0, 0, "init"}}
	for _, op := range ops {
		switch op.in.op {
		case 'w':
			writes = append(writes, w{op.call, op.ret, op.in.value})
		case 'd':
			writes = append(writes, w{op.call, op.ret, ""})
		}
	}
	sort.Slice(writes, func(i, j int) bool { return writes[i].ret < writes[j].ret })
	stale := 0
	for _, r := range ops {
		if r.in.op != 'r' {
			continue
		}
		// M: the latest start of a write acknowledged before r began.
		var m int64 = -1
		for _, x := range writes {
			if x.ret >= r.call {
				break
			}
			m = max(m, x.call)
		}
		best := int64(-1) // the latest end of a possible source of r's value
		for _, x := range writes {
			if x.value == r.out && x.call <= r.ret {
				best = max(best, x.ret)
			}
		}
		if best < 0 || best < m {
			stale++
			if os.Getenv("CACHEDREPO_CK_DEBUG") != "" {
				fmt.Printf("stale read key=%d client=%d [%d,%d] saw %q (latest source ret %d); writes:\n", r.key, r.client, r.call, r.ret, r.out, best)
				for _, op := range ops {
					if op.in.op != 'r' && op.ret >= r.call-20_000_000 && op.call <= r.ret {
						fmt.Printf("   %c %q client=%d [%d,%d]\n", op.in.op, op.in.value, op.client, op.call, op.ret)
					}
				}
			}
		}
	}
	return stale
}

var registerModel = porcupine.Model{
	Init: func() interface{} { return "init" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		in := input.(ckInput)
		switch in.op {
		case 'r':
			return output.(string) == state.(string), state
		case 'w':
			return true, in.value
		default:
			return true, ""
		}
	},
}

func linearizable(t *testing.T, ops []ckOp, faults *ckFaults) porcupine.CheckResult {
	h := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		h[i] = porcupine.Operation{ClientId: op.client, Input: op.in, Output: op.out, Call: op.call, Return: op.ret}
	}
	res := porcupine.CheckOperationsTimeout(registerModel, h, 20*time.Second)
	if res == porcupine.Illegal && os.Getenv("CACHEDREPO_CK_DEBUG") != "" {
		explainIllegal(ops, faults)
	}
	if res == porcupine.Unknown {
		t.Logf("porcupine timed out on a key with %d operations: not proven either way (its reads are still checked for staleness)", len(ops))
	}
	return res
}

func consistencyDuration() time.Duration {
	if os.Getenv("CACHEDREPO_SOAK") != "" {
		return 2 * time.Minute
	}
	return 6 * time.Second
}

// TestConsistencyStore: 4 stores under evictions, fill delays, memcached
// restarts and killed Postgres backends. Every read must be fresh (no read
// older than a write acknowledged before it began), every key's history
// linearizable, and the cache equal to the database afterwards.
func TestConsistencyStore(t *testing.T) {
	cfg := ckConfig{protocol: "store", instances: 4, workers: 6, keys: 24, duration: consistencyDuration(),
		faults: []string{"restart", "kill", "none"}}
	r := runConsistency(t, cfg)
	violations := r.staleReads + r.badKeys + r.cacheMismatches
	testenv.Summaryf("consistency: protocol=store faults=restart,kill,evict,delay instances=%d processes=1 ops=%d faults=%d violations=%d stale_reads=%d nonlinearizable_keys=%d unproven_keys=%d cache_mismatches=%d cache_errors=%d\n",
		cfg.instances, r.ops, r.faults, violations, r.staleReads, r.badKeys, r.unprovenKeys, r.cacheMismatches, r.cacheErrors)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads, %d keys not linearizable, %d cache mismatches", r.staleReads, r.badKeys, r.cacheMismatches)
	}
	if r.faults == 0 || r.ops < 2000 {
		t.Fatalf("the run proves little: %d ops, %d faults", r.ops, r.faults)
	}
}

// TestConsistencyStorePartition: the same load while a TCP proxy cuts every
// store off memcached for 250ms at a time, then heals (memcached keeps its
// items). No read may be stale and the cache must equal the database
// afterwards. Strict linearizability is reported, not required: right
// after a heal, a store whose breaker is still open reads the database and
// can see a write whose cache update another store has not yet made, while
// that store still reads the previous value from the cache (see the
// package documentation, "Cache failures").
func TestConsistencyStorePartition(t *testing.T) {
	cfg := ckConfig{protocol: "store", instances: 4, workers: 6, keys: 24, duration: consistencyDuration(),
		faults: []string{"partition", "none"}}
	r := runConsistency(t, cfg)
	violations := r.staleReads + r.cacheMismatches
	testenv.Summaryf("consistency: protocol=store faults=partition,evict,delay instances=%d processes=1 ops=%d faults=%d violations=%d stale_reads=%d cache_mismatches=%d nonlinearizable_keys_after_heal=%d unproven_keys=%d cache_errors=%d\n",
		cfg.instances, r.ops, r.faults, violations, r.staleReads, r.cacheMismatches, r.badKeys, r.unprovenKeys, r.cacheErrors)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads, %d cache mismatches", r.staleReads, r.cacheMismatches)
	}
	if r.faults == 0 || r.ops < 2000 {
		t.Fatalf("the run proves little: %d ops, %d faults", r.ops, r.faults)
	}
}

// The same load against the naive protocol must show violations: otherwise
// the checker could not catch anything.
func TestConsistencyNaiveFails(t *testing.T) {
	cfg := ckConfig{protocol: "naive", instances: 4, workers: 6, keys: 24, duration: 4 * time.Second,
		faults: []string{"restart", "kill", "partition"}}
	r := runConsistency(t, cfg)
	testenv.Summaryf("consistency: protocol=naive instances=%d processes=1 ops=%d faults=%d violations=%d nonlinearizable_keys=%d\n",
		cfg.instances, r.ops, r.faults, r.staleReads, r.badKeys)
	if r.staleReads == 0 || r.badKeys == 0 {
		t.Fatalf("the checker found nothing wrong with the naive protocol (%d stale reads, %d bad keys)", r.staleReads, r.badKeys)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// explainIllegal prints, for a key porcupine rejects, the operations around
// the point where its longest partial linearization gets stuck.
func explainIllegal(ops []ckOp, faults *ckFaults) {
	h := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		h[i] = porcupine.Operation{ClientId: op.client, Input: op.in, Output: op.out, Call: op.call, Return: op.ret}
	}
	_, info := porcupine.CheckOperationsVerbose(registerModel, h, 20*time.Second)
	var longest []int
	for _, part := range info.PartialLinearizations() {
		for _, l := range part {
			if len(l) > len(longest) {
				longest = l
			}
		}
	}
	done := map[int]bool{}
	var last int64
	for _, i := range longest {
		done[i] = true
		last = max(last, ops[i].call)
	}
	fmt.Printf("key %d: %d of %d ops linearize; last linearized:\n", ops[0].key, len(longest), len(ops))
	for _, i := range longest[max(0, len(longest)-6):] {
		op := ops[i]
		fmt.Printf("   %c in=%q out=%q client=%d [%d,%d]\n", op.in.op, op.in.value, op.out, op.client, op.call, op.ret)
	}
	// The first operations not linearized, by return time.
	var rest []ckOp
	for i, op := range ops {
		if !done[i] {
			rest = append(rest, op)
		}
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].call < rest[j].call })
	fmt.Printf("  faults near %d:\n", last)
	for _, f := range faults.events {
		if f.at > last-600_000_000 && f.at < last+100_000_000 {
			fmt.Printf("   %s at %d\n", f.what, f.at)
		}
	}
	fmt.Printf("  next, by call:\n")
	for _, op := range rest[:min(12, len(rest))] {
		ret := op.ret
		if ret == math.MaxInt64 {
			ret = -1
		}
		fmt.Printf("   %c in=%q out=%q client=%d [%d,%d]\n", op.in.op, op.in.value, op.out, op.client, op.call, ret)
	}
}

// ckFaults is a timeline of injected faults, for explaining violations.
type ckFaults struct {
	mu     sync.Mutex
	events []struct {
		at   int64
		what string
	}
}

func (f *ckFaults) add(at int64, what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, struct {
		at   int64
		what string
	}{at, what})
}
