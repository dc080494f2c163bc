package repo_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// oneBreaker hides which server holds a key, so the store keeps one
// breaker for the whole fleet: the control of TestNodeLoss.
type oneBreaker struct{ repo.Cache }

// TestNodeLoss: with 4 memcached nodes, one stops answering (partitioned:
// its requests time out). Only its keys are read from the database, with
// no timeout once its breaker is open; the keys of the 3 healthy nodes keep
// hitting, and every read returns the row. The control, one breaker for the
// fleet (the store's before), reads healthy nodes' keys from the database
// too.
func TestNodeLoss(t *testing.T) {
	const nodes, rows, passes = 4, 400, 3
	e := newEnv(t)
	addrs, dead := fleetBehindProxies(t, nodes)
	for id := int64(1); id <= rows; id++ {
		e.insertProduct(t, id, fmt.Sprint("p", id), id)
	}
	run := func(name string, wrap func(*memclient.Client) repo.Cache) (healthyDBReads, deadDBReads, getErrors, cacheErrorsLastPass int) {
		mc, err := memclient.New(memclient.Config{Servers: addrs, Timeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		o := e.Opts(nil)
		o.Namespace += "-" + name
		o.BreakerCooldown = time.Hour // no probe during the run: a probe of the dead node would time out
		s, err := repo.New(e.Pool, wrap(mc), productTable, o)
		if err != nil {
			t.Fatal(err)
		}
		onDead := map[int64]bool{}
		for id := int64(1); id <= rows; id++ {
			if _, err := s.Get(ctx, id); err != nil {
				t.Fatal(err)
			}
			addr, err := mc.Server(s.Key(id))
			if err != nil {
				t.Fatal(err)
			}
			onDead[id] = addr.String() == dead.Addr()
		}
		dead.Partition()
		defer dead.Heal()
		for pass := range passes {
			before := s.Stats().CacheErrors
			for id := int64(1); id <= rows; id++ {
				reads := s.Stats().DBReads
				p, err := s.Get(ctx, id)
				if err != nil || p.Name != fmt.Sprint("p", id) {
					getErrors++
					t.Errorf("%s: Get(%d) with a dead node: %+v %v", name, id, p, err)
				}
				if n := int(s.Stats().DBReads - reads); onDead[id] {
					deadDBReads += n
				} else {
					healthyDBReads += n
				}
			}
			if pass == passes-1 {
				cacheErrorsLastPass = int(s.Stats().CacheErrors - before)
			}
		}
		return
	}
	healthy, deadReads, getErrors, lastErrs := run("nodes", func(mc *memclient.Client) repo.Cache { return mc })
	testenv.Summaryf("node-loss: nodes=%d dead=1 db_reads_from_healthy_nodes=%d get_errors=%d\n", nodes, healthy, getErrors)
	if healthy != 0 || getErrors != 0 {
		t.Fatalf("%d database reads of keys on healthy nodes, %d failed reads", healthy, getErrors)
	}
	if deadReads == 0 {
		t.Fatal("no key lived on the dead node: the run proves nothing")
	}
	if lastErrs != 0 {
		t.Fatalf("%d cache errors in the last pass: the dead node's breaker did not keep reads off it", lastErrs)
	}
	ctlHealthy, _, ctlErrors, _ := run("one-breaker", func(mc *memclient.Client) repo.Cache { return oneBreaker{mc} })
	t.Logf("control, one breaker for the fleet: %d database reads of keys on healthy nodes, %d failed reads", ctlHealthy, ctlErrors)
	if ctlHealthy == 0 {
		t.Fatal("control: one breaker for the fleet read no healthy node's key from the database")
	}
}

// TestNodeLossGetMany: while one node of 4 is dead (its breaker open), a
// GetMany still leases and fills the misses of the healthy nodes, so the
// next GetMany hits them: only the dead node's keys miss again. (Before,
// one open breaker kept the whole call from filling anything, and every
// healthy miss went on reading the database.)
func TestNodeLossGetMany(t *testing.T) {
	const nodes, rows = 4, 200
	e := newEnv(t)
	addrs, dead := fleetBehindProxies(t, nodes)
	ids := make([]int64, rows)
	for i := range ids {
		ids[i] = int64(i + 1)
		e.insertProduct(t, ids[i], fmt.Sprint("p", ids[i]), ids[i])
	}
	mc, err := memclient.New(memclient.Config{Servers: addrs, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o := e.Opts(nil)
	o.BreakerCooldown = time.Hour // no probe of the dead node during the test
	s, err := repo.New(e.Pool, mc, productTable, o)
	if err != nil {
		t.Fatal(err)
	}
	var onDead []int64
	for _, id := range ids {
		addr, err := mc.Server(s.Key(id))
		if err != nil {
			t.Fatal(err)
		}
		if addr.String() == dead.Addr() {
			onDead = append(onDead, id)
		}
	}
	if len(onDead) == 0 || len(onDead) == rows {
		t.Fatalf("%d of %d keys on the dead node: the test needs both kinds", len(onDead), rows)
	}
	dead.Partition()
	defer dead.Heal()
	for range 3 { // trip the dead node's breaker (BreakerFailures is 3)
		if _, err := s.Get(ctx, onDead[0]); err != nil {
			t.Fatal(err)
		}
	}
	for pass := range 3 {
		misses := s.Stats().Misses
		got, err := s.GetMany(ctx, ids)
		if err != nil || len(got) != rows {
			t.Fatalf("pass %d: GetMany with a dead node: %d rows, %v", pass, len(got), err)
		}
		for _, id := range ids {
			if got[id].Name != fmt.Sprint("p", id) {
				t.Fatalf("pass %d: row %d = %+v", pass, id, got[id])
			}
		}
		n := int(s.Stats().Misses - misses)
		if pass == 0 && n != rows {
			t.Fatalf("pass 0: %d misses of %d cold keys", n, rows)
		}
		if pass > 0 && n != len(onDead) {
			t.Fatalf("pass %d: %d misses, want only the dead node's %d keys (the healthy nodes' filled)", pass, n, len(onDead))
		}
	}
}

// fleetBehindProxies starts n memcached processes, each behind a proxy,
// and returns the proxies' addresses and the last one's proxy (the node a
// test kills).
func fleetBehindProxies(t *testing.T, n int) (addrs []string, last *proxy) {
	t.Helper()
	for range n {
		mp := startPrivateMemcached(t)
		last = newProxy(t, mp.Addr())
		addrs = append(addrs, last.Addr())
	}
	return addrs, last
}

// warmFleet is the setting of the node-loss Warm tests: rows products in
// the database, a store over 4 nodes behind proxies (with h's hooks and a
// breaker cooldown of an hour), the proxy of the node that will die, and
// which rows' keys live on it.
func warmFleet(t *testing.T, rows int64, h *hookLog) (e *env, s *repo.Store[Product, int64], dead *proxy, onDead map[int64]bool) {
	t.Helper()
	e = newEnv(t)
	addrs, dead := fleetBehindProxies(t, 4)
	for id := int64(1); id <= rows; id++ {
		e.insertProduct(t, id, fmt.Sprint("p", id), id)
	}
	mc, err := memclient.New(memclient.Config{Servers: addrs, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o := e.Opts(h)
	o.BreakerCooldown = time.Hour
	if s, err = repo.New(e.Pool, mc, productTable, o); err != nil {
		t.Fatal(err)
	}
	onDead = map[int64]bool{}
	for id := int64(1); id <= rows; id++ {
		addr, err := mc.Server(s.Key(id))
		if err != nil {
			t.Fatal(err)
		}
		onDead[id] = addr.String() == dead.Addr()
	}
	return e, s, dead, onDead
}

// TestNodeLossWarm: Warm over 4 nodes, one of them dead with its breaker
// open, warms every row of the 3 healthy nodes (each then a hit) and
// returns an error naming the rows it left out, without trying the dead
// node. (Before, Warm checked the first row's breaker alone: it refused
// everything or tried every row, paying a timeout per dead-node row.)
func TestNodeLossWarm(t *testing.T) {
	const rows = 120
	e, s, dead, onDead := warmFleet(t, rows, nil)
	var first int64
	for id := int64(1); id <= rows && first == 0; id++ {
		if onDead[id] {
			first = id
		}
	}
	if first == 0 {
		t.Fatal("no key on the dead node")
	}
	dead.Partition()
	defer dead.Heal()
	for range 3 { // open the dead node's breaker
		if _, err := s.Get(ctx, first); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	stored, err := s.Warm(ctx, e.productRows(t, ""))
	took := time.Since(start)
	want := rows - len(deadKeys(onDead))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d of %d rows not warmed", rows-want, rows)) || !strings.Contains(err.Error(), "cache unavailable") {
		t.Fatalf("Warm with a dead node: %v, want an error naming the %d rows left out", err, rows-want)
	}
	if stored != want {
		t.Fatalf("Warm stored %d rows, want the healthy nodes' %d", stored, want)
	}
	if took > time.Second {
		t.Fatalf("Warm took %v: it waited on the dead node", took)
	}
	hits := s.Stats().Hits
	for id := int64(1); id <= rows; id++ {
		if onDead[id] {
			continue
		}
		if p, err := s.Get(ctx, id); err != nil || p.Name != fmt.Sprint("p", id) {
			t.Fatalf("Get(%d) after Warm: %+v %v", id, p, err)
		}
	}
	if n := int(s.Stats().Hits - hits); n != want {
		t.Fatalf("%d hits of the %d warmed rows", n, want)
	}
}

// Warm over a fleet pipelines each chunk's Adds (one pipeline per server):
// a node that dies with its breaker still closed fails its own pipeline
// once, within one timeout. Its rows are reported as not warmed (one
// CacheError for the server, not one per row) and verified like any added
// row; the other nodes' rows are warmed and served as hits.
func TestNodeLossWarmPipelined(t *testing.T) {
	const rows = 120
	var h hookLog
	e, s, dead, onDead := warmFleet(t, rows, &h)
	lost := len(deadKeys(onDead))
	if lost == 0 || lost == rows {
		t.Fatalf("%d of %d keys on the dead node: the test needs some on each side", lost, rows)
	}
	dead.Partition()
	defer dead.Heal()
	start := time.Now()
	stored, err := s.Warm(ctx, e.productRows(t, ""))
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d of %d rows not warmed: their server failed", lost, rows)) {
		t.Fatalf("Warm with a node dying: %v, want an error naming the %d rows it lost", err, lost)
	}
	if stored != rows-lost {
		t.Fatalf("Warm stored %d rows, want the healthy nodes' %d", stored, rows-lost)
	}
	if took > time.Second {
		t.Fatalf("Warm took %v: more than one timeout of the dead node", took)
	}
	fills := 0
	for _, ev := range h.All() {
		if ev.Op == "fill" {
			fills++
		}
	}
	if fills != 1 {
		t.Fatalf("%d fill failures reported, want 1 for the dead server: %+v", fills, h.All())
	}
	hits := s.Stats().Hits
	for id := int64(1); id <= rows; id++ {
		if !onDead[id] {
			if p, err := s.Get(ctx, id); err != nil || p.Name != fmt.Sprint("p", id) {
				t.Fatalf("Get(%d) after Warm: %+v %v", id, p, err)
			}
		}
	}
	if n := int(s.Stats().Hits - hits); n != rows-lost {
		t.Fatalf("%d hits of the %d warmed rows", n, rows-lost)
	}
}

// deadKeys returns the ids onDead marks.
func deadKeys(onDead map[int64]bool) []int64 {
	var ids []int64
	for id, d := range onDead {
		if d {
			ids = append(ids, id)
		}
	}
	return ids
}
