package aggregate_test

import (
	"context"
	"os"
	"testing"

	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

var ctx = context.Background()

// env is one test's servers (see testenv.Env).
type env struct{ *testenv.Env }

func newEnv(t testing.TB) *env { return &env{testenv.New(t)} }

// hookLog collects CacheError events (see testenv.HookLog).
type hookLog = testenv.HookLog

var (
	cacheClient  = testenv.CacheClient
	mustRepairer = testenv.MustRepairer
	aggCache     = testenv.AggCache
	withCache    = testenv.WithCache
)

func startPrivateMemcached(t testing.TB, args ...string) *repotest.MemcachedProcess {
	t.Helper()
	return repotest.StartMemcached(t, args...)
}

// benchGoroutinesPerCPU makes RunParallel use 32 goroutines on these 2-core
// machines, the concurrency the raw baselines in DESIGN.md were measured at.
const benchGoroutinesPerCPU = 16

// outboxRows counts the rows of the outbox.
func outboxRows(t *testing.T, e *env) int {
	t.Helper()
	var n int
	if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM cachedrepo_outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
