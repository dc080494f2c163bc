package repo_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

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

			// The writer's database link goes through a proxy we can stall.
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
			wpool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(wpool.Close)
			o := e.Opts(nil)
			o.WriteTimeout = tc.writeTimeout
			writer, err := repo.New(wpool, e.MC, productTable, o)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := writer.Get(ctx, 1); err != nil { // the writer's connection is open
				t.Fatal(err)
			}

			lock, err := e.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Rollback(ctx)
			if _, err := lock.Exec(ctx, `SELECT 1 FROM products WHERE id = 1 FOR UPDATE`); err != nil {
				t.Fatal(err)
			}
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
