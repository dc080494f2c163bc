package repotest_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

// connect opens a connection to url, closed at cleanup.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// queryOne runs sql on conn and scans one row into dst.
func queryOne(t *testing.T, conn *pgx.Conn, sql string, dst ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// databaseExists reports whether the shared server has a database called name.
func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	admin := connect(t, repotest.Postgres(t))
	var n int
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// dbNameOf returns the database named in a URL made by NewDatabase.
func dbNameOf(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("NewDatabase returned an unparsable URL %q: %v", dbURL, err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

func TestPostgresIsSuperuser(t *testing.T) {
	conn := connect(t, repotest.Postgres(t))
	var super bool
	queryOne(t, conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &super)
	if !super {
		t.Fatal("Postgres returned a URL for a role that is not a superuser")
	}
}

func TestNewDatabaseDistinctAndEmpty(t *testing.T) {
	url1, url2 := repotest.NewDatabase(t), repotest.NewDatabase(t)
	name1, name2 := dbNameOf(t, url1), dbNameOf(t, url2)
	if name1 == name2 {
		t.Fatalf("NewDatabase returned the same database twice: %s", name1)
	}
	if len(name1) > 63 {
		t.Errorf("database name %q is longer than PostgreSQL's 63 bytes", name1)
	}
	c1, c2 := connect(t, url1), connect(t, url2)
	for _, c := range []struct {
		conn *pgx.Conn
		name string
	}{{c1, name1}, {c2, name2}} {
		var got string
		queryOne(t, c.conn, "SELECT current_database()", &got)
		if got != c.name {
			t.Errorf("connected to %q, want %q", got, c.name)
		}
		var tables int
		queryOne(t, c.conn, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "+
			"WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')", &tables)
		if tables != 0 {
			t.Errorf("database %s is not empty: %d user relations", c.name, tables)
		}
	}

	ctx := context.Background()
	if _, err := c1.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	var exists bool
	queryOne(t, c2, "SELECT to_regclass('public.t') IS NOT NULL", &exists)
	if exists {
		t.Error("a table created in one database is visible in the other")
	}
}

func TestNewDatabaseDroppedAtCleanup(t *testing.T) {
	var name string
	var leftOpen *pgx.Conn
	t.Run("sub", func(t *testing.T) {
		dbURL := repotest.NewDatabase(t)
		name = dbNameOf(t, dbURL)
		if !databaseExists(t, name) {
			t.Fatalf("database %s does not exist after NewDatabase", name)
		}
		// A connection still open at cleanup must not block the drop.
		conn, err := pgx.Connect(context.Background(), dbURL)
		if err != nil {
			t.Fatal(err)
		}
		leftOpen = conn
	})
	if leftOpen != nil {
		defer leftOpen.Close(context.Background())
	}
	if name == "" {
		t.Fatal("subtest did not run")
	}
	if databaseExists(t, name) {
		t.Fatalf("database %s still exists after its test's cleanup", name)
	}
}

func TestNewDatabaseParallel(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	for i := range 6 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			dbURL := repotest.NewDatabase(t)
			conn := connect(t, dbURL)
			if _, err := conn.Exec(context.Background(), "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			name := dbNameOf(t, dbURL)
			if seen[name] {
				t.Errorf("database %s handed out twice", name)
			}
			seen[name] = true
		})
	}
}

func TestMemcachedSetGet(t *testing.T) {
	c := memcache.New(repotest.Memcached(t))
	key := repotest.Namespace(t) + ":greeting"
	if err := c.Set(&memcache.Item{Key: key, Value: []byte("hello")}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	it, err := c.Get(key)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if string(it.Value) != "hello" {
		t.Fatalf("Get = %q, want %q", it.Value, "hello")
	}
}

// mustSet stores key=value on the server at addr with a fresh client.
func mustSet(t *testing.T, addr, key, value string) {
	t.Helper()
	if err := memcache.New(addr).Set(&memcache.Item{Key: key, Value: []byte(value)}); err != nil {
		t.Fatalf("Set on %s: %v", addr, err)
	}
}

// get reads key from the server at addr with a fresh client (so no pooled
// connection to a killed server is reused).
func get(addr, key string) (string, error) {
	it, err := memcache.New(addr).Get(key)
	if err != nil {
		return "", err
	}
	return string(it.Value), nil
}

func TestStartMemcachedStopStartRestart(t *testing.T) {
	p := repotest.StartMemcached(t, "-m", "8")
	addr := p.Addr()
	if addr == repotest.Memcached(t) {
		t.Fatal("StartMemcached returned the shared server's address")
	}
	key := repotest.Namespace(t) + ":k"

	mustSet(t, addr, key, "v1")
	if v, err := get(addr, key); err != nil || v != "v1" {
		t.Fatalf("Get = %q, %v; want v1", v, err)
	}

	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if p.Running() {
		t.Error("Running after Stop")
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := get(addr, key); err == nil || errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get on a stopped server: err = %v, want a connection error", err)
	}

	if err := p.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if p.Addr() != addr {
		t.Fatalf("address changed across Start: %s, was %s", p.Addr(), addr)
	}
	if err := p.Start(); err == nil {
		t.Error("Start on a running server succeeded")
	}
	if _, err := get(addr, key); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get after Stop/Start: err = %v, want a cache miss (data gone)", err)
	}

	mustSet(t, addr, key, "v2")
	if err := p.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if p.Addr() != addr {
		t.Fatalf("address changed across Restart: %s, was %s", p.Addr(), addr)
	}
	if _, err := get(addr, key); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get after Restart: err = %v, want a cache miss (data gone)", err)
	}
	mustSet(t, addr, key, "v3")
	if v, err := get(addr, key); err != nil || v != "v3" {
		t.Fatalf("Get after Restart = %q, %v; want v3", v, err)
	}

	// A long-lived client (the library's case) recovers after a restart
	// once its dead pooled connections are discarded.
	c := memcache.New(addr)
	if _, err := c.Get(key); err != nil {
		t.Fatal(err)
	}
	if err := p.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Set(&memcache.Item{Key: key, Value: []byte("v4")})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("long-lived client still failing after Restart: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartMemcachedStoppedAtCleanup(t *testing.T) {
	var addr string
	t.Run("sub", func(t *testing.T) {
		addr = repotest.StartMemcached(t).Addr()
		mustSet(t, addr, "k", "v")
	})
	if addr == "" {
		t.Fatal("subtest did not run")
	}
	if _, err := get(addr, "k"); err == nil || errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Get after the owning test ended: err = %v, want a connection error", err)
	}
}

var namespaceRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func TestNamespaceUnique(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]string{}
	add := func(t *testing.T, ns string) {
		t.Helper()
		if !namespaceRE.MatchString(ns) {
			t.Errorf("Namespace = %q, want [A-Za-z0-9_-]{1,32}", ns)
		}
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := seen[ns]; ok {
			t.Errorf("Namespace %q returned to both %s and %s", ns, prev, t.Name())
		}
		seen[ns] = t.Name()
	}
	for i := range 8 {
		name := fmt.Sprintf("sub %d/with spaces and a name far longer than thirty-two bytes #%d", i, i)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			add(t, repotest.Namespace(t))
			add(t, repotest.Namespace(t)) // twice in one test: still distinct
		})
	}
	t.Run("", func(t *testing.T) { add(t, repotest.Namespace(t)) })
}

func TestNamespaceKeepsTestsApart(t *testing.T) {
	addr := repotest.Memcached(t)
	ns1, ns2 := repotest.Namespace(t), repotest.Namespace(t)
	mustSet(t, addr, ns1+":k", "one")
	if _, err := get(addr, ns2+":k"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("key of another namespace visible: err = %v", err)
	}
}
