package invalidation_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

var ctx = context.Background()

// outbox records keys in e's outbox and caches a value under each.
func outbox(t *testing.T, e *testenv.Env, keys ...string) {
	t.Helper()
	for _, k := range keys {
		e.Exec(t, `INSERT INTO cachedrepo_outbox (cache_key) VALUES ($1)`, k)
		if err := e.MC.Set(&memcache.Item{Key: k, Value: []byte("stale")}); err != nil {
			t.Fatal(err)
		}
	}
}

func rows(t *testing.T, e *testenv.Env) int {
	t.Helper()
	var n int
	if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM cachedrepo_outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func gone(t *testing.T, e *testenv.Env, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, err := e.MC.Get(k); err != memcache.ErrCacheMiss {
			t.Errorf("key %s after the replay: %v, want a miss", k, err)
		}
	}
}

// RunOnce replays rows older than its minimum age only; Replay replays
// every row, also without a running Run.
func TestRunOnceAndReplay(t *testing.T) {
	e := testenv.New(t)
	r := testenv.MustRepairer(e.Pool, e.MC, invalidation.RepairerConfig{})
	keys := []string{e.NS + ":a", e.NS + ":b", e.NS + ":c"}
	outbox(t, e, keys...)
	if n, err := r.RunOnce(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("RunOnce of rows younger than its age: %d %v, want 0", n, err)
	}
	if n := rows(t, e); n != 3 {
		t.Fatalf("%d rows, want 3", n)
	}
	select {
	case err := <-r.Replay():
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Replay without Run never finished")
	}
	if n := rows(t, e); n != 0 {
		t.Fatalf("%d rows after Replay, want 0", n)
	}
	gone(t, e, keys...)
}

// A running Run serves a Replay at once, not after its Interval.
func TestReplayServedByRun(t *testing.T) {
	e := testenv.New(t)
	r := testenv.MustRepairer(e.Pool, e.MC, invalidation.RepairerConfig{Delay: time.Hour, Interval: time.Hour})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- r.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}()
	time.Sleep(50 * time.Millisecond) // Run is idle, waiting out its hour
	keys := []string{e.NS + ":x", e.NS + ":y"}
	outbox(t, e, keys...)
	start := time.Now()
	if err := <-r.Replay(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the replay took %v", d)
	}
	if n := rows(t, e); n != 0 {
		t.Fatalf("%d rows after Replay, want 0", n)
	}
	gone(t, e, keys...)
}

// With the cache unreachable a replay fails and the rows stay.
func TestReplayCacheDown(t *testing.T) {
	e := testenv.New(t)
	dead, err := testenv.CacheClient(2, 100*time.Millisecond, "127.0.0.1:1") // nothing listens on port 1
	if err != nil {
		t.Fatal(err)
	}
	e.Exec(t, `INSERT INTO cachedrepo_outbox (cache_key) VALUES ('k')`)
	r := testenv.MustRepairer(e.Pool, dead, invalidation.RepairerConfig{})
	if err := <-r.Replay(); err == nil {
		t.Fatal("a replay against a dead cache succeeded")
	}
	if n := rows(t, e); n != 1 {
		t.Fatalf("%d rows after a failed replay, want 1", n)
	}
}

func TestNewRepairerChecks(t *testing.T) {
	e := testenv.New(t)
	if _, err := invalidation.NewRepairer(e.Pool, e.MC, invalidation.RepairerConfig{Table: "outbox; DROP TABLE x"}); err == nil || !strings.Contains(err.Error(), "outbox table") {
		t.Fatalf("bad table name: %v", err)
	}
	if _, err := invalidation.NewRepairer(nil, e.MC, invalidation.RepairerConfig{}); err == nil {
		t.Fatal("nil DB accepted")
	}
	r, err := invalidation.NewRepairer(e.Pool, e.MC, invalidation.RepairerConfig{Table: "public.cachedrepo_outbox"})
	if err != nil || r.Table() != "public.cachedrepo_outbox" || r.Ident() != `"public"."cachedrepo_outbox"` {
		t.Fatalf("schema-qualified table: %v %q %q", err, r.Table(), r.Ident())
	}
}
