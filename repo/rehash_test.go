package repo_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// ejecting is the naive fleet: a ketama ring that drops a server as soon as
// a request to it fails (twemproxy's auto_eject_hosts, libmemcached's
// remove-failed-servers) and takes it back 300ms later, so its keys are
// rehashed to the other servers meanwhile and back to it afterwards.
type ejecting struct {
	all  []string
	mu   sync.Mutex
	dead map[string]time.Time // guarded by mu
	ring atomic.Pointer[memclient.Ketama]
}

func newEjecting(t *testing.T, addrs []string) *ejecting {
	e := &ejecting{all: addrs, dead: map[string]time.Time{}}
	e.rebuild(t)
	return e
}

func (e *ejecting) rebuild(t testing.TB) {
	var live []memclient.Server
	for _, a := range e.all {
		if _, down := e.dead[a]; !down {
			live = append(live, memclient.Server{Addr: a})
		}
	}
	if len(live) == 0 {
		return
	}
	k, err := memclient.NewKetama(live)
	if err != nil {
		t.Error(err)
		return
	}
	e.ring.Store(k)
}

func (e *ejecting) PickServer(key string) (net.Addr, error) {
	e.mu.Lock()
	for a, at := range e.dead {
		if time.Since(at) > 300*time.Millisecond {
			delete(e.dead, a)
			e.rebuild(nil)
		}
	}
	e.mu.Unlock()
	return e.ring.Load().PickServer(key)
}

func (e *ejecting) Each(f func(net.Addr) error) error { return e.ring.Load().Each(f) }

func (e *ejecting) eject(addr string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, down := e.dead[addr]; !down {
		e.dead[addr] = time.Now()
		e.rebuild(nil)
	}
}

// rehashing is a client over an ejecting ring that, when a request fails,
// ejects the server and tries the key once more on its new server. It says
// nothing of servers (no Server method), as a client that reroutes needs
// no breaker.
type rehashing struct {
	mc  *memclient.Client
	sel *ejecting
}

func (r rehashing) retry(key string, f func() error) error {
	addr, _ := r.sel.PickServer(key)
	err := f()
	if protocol.IsTransportErr(err) && addr != nil {
		r.sel.eject(addr.String())
		err = f()
	}
	return err
}

func (r rehashing) Get(key string) (it *memcache.Item, err error) {
	err = r.retry(key, func() (err error) { it, err = r.mc.Get(key); return err })
	return it, err
}
func (r rehashing) GetMulti(keys []string) (map[string]*memcache.Item, error) {
	return r.mc.GetMulti(keys)
}
func (r rehashing) Add(it *memcache.Item) error {
	return r.retry(it.Key, func() error { return r.mc.Add(it) })
}
func (r rehashing) Set(it *memcache.Item) error {
	return r.retry(it.Key, func() error { return r.mc.Set(it) })
}
func (r rehashing) CompareAndSwap(it *memcache.Item) error {
	return r.retry(it.Key, func() error { return r.mc.CompareAndSwap(it) })
}
func (r rehashing) Delete(key string) error {
	return r.retry(key, func() error { return r.mc.Delete(key) })
}
func (r rehashing) Increment(key string, d uint64) (n uint64, err error) {
	err = r.retry(key, func() (err error) { n, err = r.mc.Increment(key, d); return err })
	return n, err
}
func (r rehashing) LeaseGet(key string, ttl int32) (it *memcache.Item, l *memclient.Lease, err error) {
	err = r.retry(key, func() (err error) { it, l, err = r.mc.LeaseGet(key, ttl); return err })
	return it, l, err
}

// fleetPartitions runs the checker's load over 4 memcached nodes, each
// behind a proxy, while one node at a time is partitioned for 300ms (its
// items survive): over the store's clients (a ring that never changes by
// itself, a breaker per node), or over the rehashing ones.
func fleetPartitions(t *testing.T, rehash bool, d time.Duration) (res ckResult) {
	const instances, workers, keys = 4, 5, 24
	e := newEnv(t)
	for k := int64(1); k <= keys; k++ {
		e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES ($1, $2, 'init', 1, 0)`, k, fmt.Sprint("A", k))
	}
	var proxies []*proxy
	var addrs []string
	for range 4 {
		px := newProxy(t, startPrivateMemcached(t).Addr())
		proxies, addrs = append(proxies, px), append(addrs, px.Addr())
	}
	var subjects []subject
	var repairers []*invalidation.Repairer
	var stores []*repo.Store[Product, int64]
	for range instances {
		var cache repo.Cache
		if rehash {
			sel := newEjecting(t, addrs)
			mc, err := memclient.New(memclient.Config{Selector: sel, MaxIdleConns: workers * 2, Timeout: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			cache = rehashing{mc: mc, sel: sel}
		} else {
			mc, err := memclient.New(memclient.Config{Servers: addrs, MaxIdleConns: workers * 2, Timeout: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			cache = mc
		}
		s, r := newCkStore(t, newCkPool(t, e.URL, workers), cache, e.NS)
		subjects, repairers, stores = append(subjects, storeSubject{s}), append(repairers, r), append(stores, s)
	}
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	rctx, stop := context.WithTimeout(ctx, d)
	defer stop()
	var wg sync.WaitGroup
	for _, r := range repairers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	var faults atomic.Int64
	wg.Add(1)
	go func() { // one node at a time cut off for 300ms, its items kept
		defer wg.Done()
		for sleep(rctx, 200*time.Millisecond) == nil {
			px := proxies[rand.IntN(len(proxies))]
			px.Partition()
			_ = sleep(rctx, 300*time.Millisecond)
			px.Heal()
			faults.Add(1)
		}
	}()
	history := runCkLoad(rctx, subjects, workers, keys, 0, "", now)
	wg.Wait()
	for _, px := range proxies {
		px.Heal()
	}
	res = ckResult{ops: len(history), faults: int(faults.Load())}
	for _, s := range stores {
		res.cacheErrors += int(s.Stats().CacheErrors)
	}
	byKey := map[int64][]ckOp{}
	for _, op := range history {
		byKey[op.key] = append(byKey[op.key], op)
	}
	for _, ops := range byKey {
		res.staleReads += staleReads(ops)
	}
	return res
}

// TestConsistencyRingRehash: nodes of a fleet partitioned one at a time,
// their items kept. Over the store's clients (the ring fixed, a breaker per
// node) no read is stale; a client that ejects a failing node and rehashes
// its keys (and takes it back when it answers again) serves the values the
// node kept from before the writes made meanwhile on the other nodes.
func TestConsistencyRingRehash(t *testing.T) {
	r := fleetPartitions(t, false, consistencyDuration()/2)
	testenv.Summaryf("consistency: protocol=store nodes=4 faults=node-partition instances=4 processes=1 ops=%d faults=%d violations=%d stale_reads=%d cache_errors=%d\n",
		r.ops, r.faults, r.staleReads, r.staleReads, r.cacheErrors)
	if r.staleReads != 0 {
		t.Errorf("%d stale reads with a breaker per node", r.staleReads)
	}
	if r.faults == 0 || r.ops < 1000 {
		t.Fatalf("the run proves little: %d ops, %d faults", r.ops, r.faults)
	}
	n := fleetPartitions(t, true, consistencyDuration()/2)
	testenv.Summaryf("consistency: protocol=naive-rehash nodes=4 faults=node-partition instances=4 processes=1 ops=%d faults=%d violations=%d stale_reads=%d\n",
		n.ops, n.faults, n.staleReads, n.staleReads)
	if n.staleReads == 0 {
		t.Error("control: rehashing on failure showed no stale read")
	}
}
