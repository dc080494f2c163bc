package repo_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
)

// A Delete whose connection stalls returns an error after its deadline while
// the statement, blocked on a row lock, is still on the server; another
// store then fills the key with the row; then the statement commits. The
// store deletes the key at once and again WriteTimeout later, so the
// deleted row is served at most until then. Without the second delete
// (WriteTimeout < 0) it is served until its TTL: the control.
func TestLateCommitOfAnUnknownOutcome(t *testing.T) {
	for _, tc := range []struct {
		name         string
		writeTimeout time.Duration
		wantRepaired bool
	}{
		{"second delete", 1500 * time.Millisecond, true},
		{"control without it", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.insertProduct(t, 1, "doomed", 100)
			reader := e.products(t, nil)
			if p, err := reader.Get(ctx, 1); err != nil || p.Name != "doomed" {
				t.Fatalf("warm: %+v %v", p, err)
			}

			writer, px, _ := stallableWriter(t, e, tc.writeTimeout, nil)
			if _, err := writer.Get(ctx, 1); err != nil { // the writer's connection is open
				t.Fatal(err)
			}

			lock := e.LockRows(t, `SELECT 1 FROM products WHERE id = 1 FOR UPDATE`)
			dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- writer.Delete(dctx, 1) }()
			e.WaitForLockWait(t) // the DELETE is on the server, waiting for the lock
			px.Partition()       // and its link stalls: not even the cancel request gets through
			derr := <-done
			if derr == nil || errors.Is(derr, repo.ErrNotFound) {
				t.Fatalf("Delete over a stalled link: %v, want an error of unknown outcome", derr)
			}
			if p, err := reader.Get(ctx, 1); err != nil || p.Name != "doomed" { // a fill of the row, before the commit
				t.Fatalf("reader before the late commit: %+v %v", p, err)
			}
			if err := lock.Commit(ctx); err != nil { // the DELETE goes on and commits
				t.Fatal(err)
			}
			waitGone := time.Now().Add(5 * time.Second)
			for {
				var n int
				if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM products WHERE id = 1`).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					break
				}
				if time.Now().After(waitGone) {
					t.Fatal("the stalled DELETE never committed")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, err := reader.Get(ctx, 1); err != nil {
				t.Fatalf("right after the late commit the filled row should still be cached: %v", err)
			}
			deadline := time.Now().Add(tc.writeTimeout + time.Second)
			if !tc.wantRepaired {
				deadline = time.Now().Add(2500 * time.Millisecond)
			}
			repaired := false
			for time.Now().Before(deadline) {
				if _, err := reader.Get(ctx, 1); errors.Is(err, repo.ErrNotFound) {
					repaired = true
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if repaired != tc.wantRepaired {
				t.Fatalf("deleted row served until the bound: repaired=%v, want %v", repaired, tc.wantRepaired)
			}
			px.Heal()
		})
	}
}

// The store sets statement_timeout (Options.WriteTimeout) on its own
// single-statement writes, in the same round trip: a Delete blocked on a row
// lock for longer is cancelled by the server, so it cannot commit after the
// store's second delete. Over a stalled link the same holds: the lock's
// holder commits after WriteTimeout and the row survives. The connection's
// own statement_timeout is untouched afterwards.
func TestWriteTimeoutBoundsTheStatement(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "kept", 100)
	const writeTimeout = 400 * time.Millisecond
	writer, px, wpool := stallableWriter(t, e, writeTimeout, map[string]string{"statement_timeout": "10s"})
	lock := e.LockRows(t, `SELECT 1 FROM products WHERE id = 1 FOR UPDATE`)

	// A caller that waits: the server cancels the statement.
	start := time.Now()
	err := writer.Delete(ctx, 1)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" {
		t.Fatalf("Delete blocked past WriteTimeout: %v, want the server's statement timeout (57014)", err)
	}
	if d := time.Since(start); d < writeTimeout || d > writeTimeout+2*time.Second {
		t.Fatalf("statement cancelled after %v, want about %v", d, writeTimeout)
	}
	var st string
	if err := wpool.QueryRow(ctx, `SHOW statement_timeout`).Scan(&st); err != nil || st != "10s" {
		t.Fatalf("the connection's statement_timeout after the write: %q %v, want its own 10s", st, err)
	}

	// A caller that gives up over a stalled link: the statement is still
	// cancelled by the server, and the holder's commit after WriteTimeout
	// finds no delete waiting behind it.
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- writer.Delete(dctx, 1) }()
	e.WaitForLockWait(t)
	px.Partition()
	if err := <-done; err == nil {
		t.Fatal("Delete over a stalled link succeeded")
	}
	time.Sleep(writeTimeout + 300*time.Millisecond)
	if err := lock.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	var n int
	if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM products WHERE id = 1`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows after the late holder's commit: %d %v, want the row kept (the DELETE was cancelled)", n, err)
	}
	px.Heal()
}

// stallableWriter returns a store over a one-connection pool whose database
// link goes through a proxy the test can stall, with Options.WriteTimeout
// writeTimeout and the pool's connections started with params.
func stallableWriter(t *testing.T, e *env, writeTimeout time.Duration, params map[string]string) (*repo.Store[Product, int64], *proxy, *pgxpool.Pool) {
	t.Helper()
	u, err := url.Parse(e.URL)
	if err != nil {
		t.Fatal(err)
	}
	px := newProxy(t, u.Host)
	u.Host = px.Addr()
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	wpool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wpool.Close)
	o := e.Opts(nil)
	o.WriteTimeout = writeTimeout
	writer, err := repo.New(wpool, e.MC, productTable, o)
	if err != nil {
		t.Fatal(err)
	}
	return writer, px, wpool
}
