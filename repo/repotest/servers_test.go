package repotest

import (
	"context"
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestNewScratch(t *testing.T) {
	pgURL, mcAddr, err := Servers()
	if err != nil {
		t.Fatal(err)
	}
	if pgURL != Postgres(t) || mcAddr != Memcached(t) {
		t.Fatalf("Servers() = %q, %q; want the shared servers %q, %q", pgURL, mcAddr, Postgres(t), Memcached(t))
	}

	a, err := NewScratch("ExampleThing_Do")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewScratch("ExampleThing_Do")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.DatabaseURL == b.DatabaseURL || a.Namespace == b.Namespace {
		t.Fatalf("two scratches share a database or namespace: %+v %+v", a, b)
	}
	if a.Memcached != mcAddr {
		t.Errorf("Memcached = %q, want %q", a.Memcached, mcAddr)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`).MatchString(a.Namespace) {
		t.Errorf("Namespace = %q", a.Namespace)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, a.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	name := a.dbName
	// Close drops the database with the connection still open.
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	conn.Close(ctx)
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	admin, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil || n != 0 {
		t.Fatalf("database %s after Close: count %d, %v", name, n, err)
	}
}

func TestErrNotInstalled(t *testing.T) {
	err := error(&notInstalledError{what: "memcached", install: memcachedInstallHint, looked: "PATH"})
	if !errors.Is(err, ErrNotInstalled) {
		t.Errorf("errors.Is(%v, ErrNotInstalled) = false", err)
	}
	if errors.Is(errors.New("initdb failed"), ErrNotInstalled) {
		t.Error("an unrelated error is ErrNotInstalled")
	}
}
