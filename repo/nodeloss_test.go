package repo_test

import (
	"fmt"
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
	var addrs []string
	var dead *proxy
	for i := range nodes {
		mp := startPrivateMemcached(t)
		px := newProxy(t, mp.Addr())
		addrs = append(addrs, px.Addr())
		if i == nodes-1 {
			dead = px
		}
	}
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
