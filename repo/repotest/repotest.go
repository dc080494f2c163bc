// Package repotest runs tests against a real PostgreSQL server and a real
// memcached server, never mocks. It is used by this library's own protocol
// tests and may be used by the library's users in their tests too.
//
// # Setup
//
// Call Run from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }
//
// and then, in tests:
//
//	dbURL := repotest.NewDatabase(t)  // fresh empty database, dropped at cleanup
//	mcAddr := repotest.Memcached(t)   // shared memcached server
//	ns := repotest.Namespace(t)       // unique key namespace on that server
//	mc := repotest.StartMemcached(t)  // private memcached to stop, start, restart
//
// Code that gets no testing.TB (Example functions) uses Servers, or
// NewScratch for a fresh database and namespace, and treats their errors as
// failures:
//
//	sc, err := repotest.NewScratch("ExampleStore_Get")
//	if err != nil {
//		fmt.Println(err) // the example's output no longer matches: it fails
//		return
//	}
//	defer sc.Close()
//
// # Discovery order
//
// PostgreSQL, on the first call of Postgres or NewDatabase in a test binary:
//
//  1. If CACHEDREPO_TEST_DATABASE_URL is set, it is used as the admin
//     (superuser) URL of an existing server; NewDatabase creates and drops
//     per-test databases on it. Nothing is started.
//  2. Otherwise a throwaway server is started from the installed binaries
//     (initdb and postgres from the highest-numbered
//     /usr/lib/postgresql/N/bin, else from PATH): initdb --no-sync -A trust
//     -U postgres into a directory made by os.MkdirTemp, then postgres with
//     fsync=off, a small shared_buffers, max_connections=300, listening on a
//     free port of 127.0.0.1 only and with its unix socket in that temporary
//     directory. When the test binary runs as root, both run as the
//     "postgres" OS user (initdb refuses root).
//  3. Otherwise (no binaries) the test is skipped with a message naming what
//     to install, or fails instead when the environment has CI=true.
//
// memcached, on the first call of Memcached in a test binary:
//
//  1. If CACHEDREPO_TEST_MEMCACHED (host:port) is set, that server is used.
//  2. Otherwise a throwaway server is started from the memcached binary
//     found in PATH (or /usr/bin, /usr/sbin, /usr/local/bin):
//     memcached -l 127.0.0.1 -p PORT -U 0 -t 2 -m 256 -c 4096, on a free
//     port of 127.0.0.1. As root it runs as the "memcache" user, else
//     "nobody" (memcached refuses to run as root).
//  3. Otherwise the test is skipped (or fails when CI=true), as above.
//
// StartMemcached always starts a private process, finding the binary the same
// way, and skips or fails the same way when it is missing.
//
// Each started server is waited for until it accepts connections, for at
// most 60 seconds. Tests that share a memcached server should use
// Namespace for their keys instead of flush_all.
//
// # Lifetime
//
// Servers are started lazily, on first use, so a test binary that needs only
// one of them does not pay for the other. Everything started is stopped by
// Run after m.Run returns, and its temporary directory removed. Started
// processes are in their own process group and get SIGKILL when the test
// binary dies (Linux parent-death signal), and Run stops them on SIGINT,
// SIGTERM and SIGHUP, so no orphan servers remain. Temporary directories
// left behind by a test binary that was killed outright are removed by the
// next Run.
//
// # State
//
// Run stores what the helpers need (the started servers and their
// addresses) in one unexported package-level variable, the package's only
// state; the helpers other than Namespace fail the test when it is unset,
// that is when TestMain does not call Run.
package repotest

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Environment variables read by the harness.
const (
	// EnvDatabaseURL names the variable holding an admin (superuser) URL of
	// an existing PostgreSQL server to use instead of starting one.
	EnvDatabaseURL = "CACHEDREPO_TEST_DATABASE_URL"
	// EnvMemcached names the variable holding host:port of an existing
	// memcached server to use instead of starting one.
	EnvMemcached = "CACHEDREPO_TEST_MEMCACHED"
	// EnvCI names the variable that, when true, turns "server binary not
	// installed" skips into failures.
	EnvCI = "CI"
)

// startTimeout bounds how long a started server may take to accept
// connections.
const startTimeout = 60 * time.Second

// current is the harness of the running test binary, set by Run. It is the
// package's only state.
var current atomic.Pointer[harness]

// harness holds the servers of one test binary.
type harness struct {
	ci bool

	pgOnce sync.Once
	pgURL  string
	pgErr  error
	pg     *pgServer // nil when not started by us

	mcOnce sync.Once
	mcAddr string
	mcErr  error

	mu      sync.Mutex
	closed  bool
	started map[*MemcachedProcess]struct{} // memcached processes to stop in shutdown
}

// Run is called from TestMain: os.Exit(repotest.Run(m)). It finds or starts
// the servers (lazily, on first use by a test), runs the tests, stops what it
// started, and returns the exit code. It parses the command-line flags if
// they are not parsed yet, so define custom flags before calling it.
func Run(m *testing.M) int {
	h := &harness{
		ci:      isCI(),
		started: make(map[*MemcachedProcess]struct{}),
	}
	if !current.CompareAndSwap(nil, h) {
		fmt.Fprintln(os.Stderr, "repotest: Run called twice in one test binary")
		return 2
	}
	defer current.CompareAndSwap(h, nil)

	removeStaleTempDirs()

	sigs := []os.Signal{syscall.SIGTERM, syscall.SIGHUP}
	if !fuzzing() {
		// While fuzzing, the testing package handles SIGINT itself and
		// returns from m.Run, after which the servers are stopped below.
		sigs = append(sigs, os.Interrupt)
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, sigs...)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigc:
			fmt.Fprintf(os.Stderr, "repotest: received %v: stopping test servers\n", sig)
			h.shutdown()
			code := 1
			if s, ok := sig.(syscall.Signal); ok {
				code = 128 + int(s)
			}
			os.Exit(code)
		case <-done:
		}
	}()

	code := m.Run()

	close(done)
	signal.Stop(sigc)
	h.shutdown()
	return code
}

// isCI reports whether the environment says this is a CI run.
func isCI() bool {
	v, err := strconv.ParseBool(strings.TrimSpace(os.Getenv(EnvCI)))
	return err == nil && v
}

// shutdown stops everything the harness started. It is safe to call more
// than once and concurrently with helpers, which fail afterwards.
func (h *harness) shutdown() {
	h.mu.Lock()
	h.closed = true
	procs := make([]*MemcachedProcess, 0, len(h.started))
	for p := range h.started {
		procs = append(procs, p)
	}
	clear(h.started)
	pg := h.pg
	h.pg = nil
	h.mu.Unlock()

	for _, p := range procs {
		if err := p.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "repotest: stopping memcached on %s: %v\n", p.Addr(), err)
		}
	}
	if pg != nil {
		if err := pg.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "repotest: stopping PostgreSQL: %v\n", err)
		}
	}
}

// track registers a started memcached process so that shutdown stops it.
// It reports false (and the caller must stop the process) after shutdown.
func (h *harness) track(p *MemcachedProcess) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.started[p] = struct{}{}
	return true
}

// untrack forgets a process stopped by its test's cleanup.
func (h *harness) untrack(p *MemcachedProcess) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.started, p)
}

// mustHarness returns the harness set by Run, failing tb when there is none.
func mustHarness(tb testing.TB) *harness {
	tb.Helper()
	h, err := runningHarness()
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// runningHarness returns the harness set by Run, or an error saying why
// there is none.
func runningHarness() (*harness, error) {
	h := current.Load()
	if h == nil {
		return nil, errors.New("repotest: the harness is not running; add to the package's tests:\n" +
			"\tfunc TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }")
	}
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return nil, errors.New("repotest: the harness has shut down (interrupted, or used after m.Run returned)")
	}
	return h, nil
}

// notInstalledError says a server binary is missing and what to install.
type notInstalledError struct {
	what    string // e.g. "memcached"
	install string // shell command that installs it
	envVar  string // variable that names an existing server instead
	example string // example value of envVar
	looked  string // where it was looked for
}

// Is makes errors.Is(err, ErrNotInstalled) true.
func (e *notInstalledError) Is(target error) bool { return target == ErrNotInstalled }

func (e *notInstalledError) Error() string {
	msg := fmt.Sprintf("repotest: %s not found (looked in %s); install it with `%s` (Debian/Ubuntu)",
		e.what, e.looked, e.install)
	if e.envVar != "" {
		msg += fmt.Sprintf(", or set %s=%s to use an existing server", e.envVar, e.example)
	}
	return msg
}

// unavailable ends the test for err: a skip when a binary is not installed
// (a failure when ci is true), a failure otherwise.
func unavailable(tb testing.TB, err error, ci bool) {
	tb.Helper()
	var ni *notInstalledError
	if errors.As(err, &ni) {
		if ci {
			tb.Fatalf("%v\n(%s=true, so this fails instead of skipping)", err, EnvCI)
		}
		tb.Skip(err.Error())
	}
	tb.Fatal(err)
}

// Postgres returns an admin (superuser) connection URL of the shared
// PostgreSQL server, starting the server on first use (see the package doc).
// Tests should normally use NewDatabase instead of creating objects in the
// admin database.
func Postgres(tb testing.TB) string {
	tb.Helper()
	h := mustHarness(tb)
	h.pgOnce.Do(func() { h.pgErr = h.startPostgres(tb.Logf) })
	if h.pgErr != nil {
		unavailable(tb, h.pgErr, h.ci)
	}
	return h.pgURL
}

// startPostgres finds or starts the shared PostgreSQL server and checks
// that it accepts connections. It reports readiness through logf.
func (h *harness) startPostgres(logf func(format string, args ...any)) error {
	begin := time.Now()
	var srv *pgServer
	adminURL := strings.TrimSpace(os.Getenv(EnvDatabaseURL))
	source := EnvDatabaseURL
	if adminURL == "" {
		var err error
		srv, err = startPgServer()
		if err != nil {
			return err
		}
		adminURL = srv.url()
		source = "started " + srv.describe()
	}

	if err := pgPing(adminURL); err != nil {
		if srv != nil {
			_ = srv.stop()
		}
		return fmt.Errorf("repotest: cannot connect to PostgreSQL (%s): %w", source, err)
	}

	h.mu.Lock()
	closed := h.closed
	if !closed {
		h.pg, h.pgURL = srv, adminURL
	}
	h.mu.Unlock()
	if closed {
		if srv != nil {
			_ = srv.stop()
		}
		return errors.New("repotest: the harness shut down while PostgreSQL was starting")
	}
	logf("repotest: PostgreSQL ready (%s) in %v", source, time.Since(begin).Round(time.Millisecond))
	return nil
}

// Memcached returns host:port of the shared memcached server, starting the
// server on first use (see the package doc). Use Namespace to keep keys of
// different tests apart.
func Memcached(tb testing.TB) string {
	tb.Helper()
	h := mustHarness(tb)
	h.mcOnce.Do(func() { h.mcErr = h.startMemcached(tb.Logf) })
	if h.mcErr != nil {
		unavailable(tb, h.mcErr, h.ci)
	}
	return h.mcAddr
}

// startMemcached finds or starts the shared memcached server. It reports
// readiness through logf.
func (h *harness) startMemcached(logf func(format string, args ...any)) error {
	begin := time.Now()
	if addr := strings.TrimSpace(os.Getenv(EnvMemcached)); addr != "" {
		if err := memcachedReady(addr, 5*time.Second, nil); err != nil {
			return fmt.Errorf("repotest: memcached at %s=%s does not answer: %w", EnvMemcached, addr, err)
		}
		h.mcAddr = addr
		logf("repotest: memcached ready (%s=%s)", EnvMemcached, addr)
		return nil
	}
	p, err := newMemcachedProcess(nil)
	if err != nil {
		var ni *notInstalledError
		if errors.As(err, &ni) {
			ni.envVar, ni.example = EnvMemcached, "127.0.0.1:11211"
		}
		return err
	}
	if err := p.startFresh(); err != nil {
		return err
	}
	if !h.track(p) {
		_ = p.Stop()
		return errors.New("repotest: the harness shut down while memcached was starting")
	}
	h.mcAddr = p.Addr()
	logf("repotest: memcached ready (started %s on %s) in %v", p.bin, p.Addr(), time.Since(begin).Round(time.Millisecond))
	return nil
}
