package repo_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
)

// Races between writers that reach the cache in another order than they
// reached the database. Each test holds one writer between its commit and
// its cache step, lets the others finish, then releases it, and checks that
// a read returns what the database holds.

// blockAfter returns a store whose first statement containing sub holds the
// caller after the statement has run (committed, in autocommit) until
// release is closed; ran is closed when it is held.
func blockAfter(t *testing.T, e *env, sub string) (s *repo.Store[Product, int64], ran, release chan struct{}) {
	t.Helper()
	ran, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	db := &testenv.ScanHookDB{Beginner: e.Pool}
	f := func(sql string) {
		if strings.Contains(sql, sub) {
			once.Do(func() { close(ran); <-release })
		}
	}
	db.After.Store(&f)
	s, err := repo.New(db, e.MC, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	return s, ran, release
}

func wantNotFound(t *testing.T, s *repo.Store[Product, int64], id int64, why string) {
	t.Helper()
	p, err := s.Get(ctx, id)
	if !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("%s: Get = %+v, %v; the database has no row", why, p, err)
	}
}

// A Delete that finds the row already gone tells its caller so; a Get after
// it must not return the row from the cache, even though the deleter that
// won has not reached the cache yet.
func TestDeleteThatFindsNothingLeavesNoRow(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "old", 100)
	s := e.products(t, nil)
	if _, err := s.Get(ctx, 1); err != nil { // cached
		t.Fatal(err)
	}
	slow, ran, release := blockAfter(t, e, "DELETE")
	done := make(chan error, 1)
	go func() { done <- slow.Delete(ctx, 1) }()
	<-ran
	if err := s.Delete(ctx, 1); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("second Delete: %v, want ErrNotFound", err)
	}
	wantNotFound(t, s, 1, "after a Delete returned ErrNotFound")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, s, 1, "after both deletes")
}

// The same for an Update that finds no row, and an Insert that finds one.
func TestWriteErrorsDoNotHideTheDatabase(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "old", 100)
	s := e.products(t, nil)
	if _, err := s.Get(ctx, 1); err != nil {
		t.Fatal(err)
	}
	slow, ran, release := blockAfter(t, e, "DELETE")
	done := make(chan error, 1)
	go func() { done <- slow.Delete(ctx, 1) }()
	<-ran
	if _, err := s.Update(ctx, 1, func(p *Product) error { return nil }); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("Update of a deleted row: %v", err)
	}
	wantNotFound(t, s, 1, "after Update returned ErrNotFound")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Insert: a concurrent Insert committed but has not reached the cache,
	// which still says "not found"; a losing Insert learns the row exists.
	wantNotFound(t, s, 2, "before the insert") // caches "not found"
	slowIns, ran2, release2 := blockAfter(t, e, "INSERT")
	go func() {
		_, err := slowIns.Insert(ctx, Product{ID: 2, ArticleNumber: "A2", Name: "first", CategoryID: 1})
		done <- err
	}()
	<-ran2
	if _, err := s.Insert(ctx, Product{ID: 2, ArticleNumber: "A2", Name: "second", CategoryID: 1}); err == nil {
		t.Fatal("second Insert of the same key succeeded")
	}
	if p, err := s.Get(ctx, 2); err != nil || p.Name != "first" {
		t.Fatalf("after an Insert failed on a duplicate key: %+v %v, want the row %q", p, err, "first")
	}
	close(release2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A writer that committed before a delete reaches the cache after the
// delete, after a reader cached "not found": it must not bring the row back.
func TestLateWriterDoesNotResurrectADeletedRow(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "old", 100)
	s := e.products(t, nil)
	late, ran, release := blockAfter(t, e, "INSERT")
	done := make(chan error, 1)
	go func() {
		_, err := late.Upsert(ctx, Product{ID: 1, ArticleNumber: "A1", Name: "late", CategoryID: 1})
		done <- err
	}()
	<-ran // the upsert has committed; its cache step waits
	if err := s.Delete(ctx, 1); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, s, 1, "after the delete") // a reader caches "not found"
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, s, 1, "after the late writer reached the cache")
}

// An Upsert that waits on a row another transaction first updates and then
// deletes ends up inserting the row anew. Its version must be newer than
// the deleted row's, or the delete's tombstone would hide the new row.
func TestInsertAfterAConcurrentDeleteIsNewer(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "old", 100)
	s := e.products(t, nil)
	if _, err := s.Get(ctx, 1); err != nil { // cached, so the delete leaves a tombstone
		t.Fatal(err)
	}
	locked, proceed := make(chan struct{}), make(chan struct{})
	txDone := make(chan error, 1)
	go func() {
		txDone <- repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
			if _, err := s.In(tx).Update(ctx, 1, func(p *Product) error {
				close(locked)
				<-proceed // the upsert below starts, and waits for this lock
				p.Name = "updated"
				return nil
			}); err != nil {
				return err
			}
			return s.In(tx).Delete(ctx, 1)
		})
	}()
	<-locked
	up := make(chan error, 1)
	go func() {
		_, err := s.Upsert(ctx, Product{ID: 1, ArticleNumber: "A1", Name: "reborn", CategoryID: 1})
		up <- err
	}()
	e.WaitForLockWait(t)
	close(proceed)
	if err := <-txDone; err != nil {
		t.Fatal(err)
	}
	if err := <-up; err != nil {
		t.Fatal(err)
	}
	p, err := s.Get(ctx, 1)
	if err != nil || p.Name != "reborn" {
		t.Fatalf("after the upsert re-inserted the row: Get = %+v, %v", p, err)
	}
}
