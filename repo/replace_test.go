package repo_test

import (
	"errors"
	"testing"

	"github.com/cachedrepo/cachedrepo/repo"
)

// Replace overwrites a row in one statement and writes it through: a
// store that reads next finds the new row in the cache, with a newer
// version. A missing row is ErrNotFound and is not created. Inside InTx
// the cache learns the row only once the transaction commits, and not at
// all if it rolls back.
func TestReplace(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "one", 100)
	db, statements := countDB(e.Pool) // Query and QueryRow
	s, err := repo.New(db, e.MC, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	old, err := s.Get(ctx, 1) // cached
	if err != nil {
		t.Fatal(err)
	}
	before := statements.Load()
	v := old
	v.Name, v.PriceCents = "replaced", 250
	got, err := s.Replace(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	if n := statements.Load() - before; n != 1 {
		t.Errorf("Replace sent %d statements, want 1", n)
	}
	if got.Name != "replaced" || got.PriceCents != 250 || got.Version <= old.Version {
		t.Fatalf("Replace returned %+v; want the new row with a version above %d", got, old.Version)
	}
	reader := e.products(t, nil)
	if r, err := reader.Get(ctx, 1); err != nil || r != got {
		t.Fatalf("a read after Replace: %+v, %v; want %+v", r, err, got)
	}
	if st := reader.Stats(); st.Hits != 1 || st.DBReads != 0 {
		t.Fatalf("the read after Replace was not a cache hit: %+v", st)
	}

	if _, err := s.Replace(ctx, Product{ID: 99, ArticleNumber: "A99", Name: "none", CategoryID: 1}); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("Replace of a missing row: %v, want ErrNotFound", err)
	}
	var n int
	if err := e.Pool.QueryRow(ctx, "SELECT count(*) FROM products WHERE id = 99").Scan(&n); err != nil || n != 0 {
		t.Fatalf("Replace of a missing row left %d rows (%v)", n, err)
	}

	rollback := errors.New("roll back")
	err = repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
		w := got
		w.Name = "rolled back"
		if _, err := s.In(tx).Replace(ctx, w); err != nil {
			return err
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatal(err)
	}
	if r, err := reader.Get(ctx, 1); err != nil || r != got {
		t.Fatalf("after a rolled back Replace: %+v, %v; want %+v", r, err, got)
	}
	var inTx Product
	err = repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
		w := got
		w.Name = "committed"
		var err error
		if inTx, err = s.In(tx).Replace(ctx, w); err != nil {
			return err
		}
		if r, err := reader.Get(ctx, 1); err != nil || r != got {
			t.Errorf("before the commit, a read outside the transaction: %+v, %v; want %+v", r, err, got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := reader.Get(ctx, 1); err != nil || r != inTx || r.Name != "committed" {
		t.Fatalf("after a committed Replace: %+v, %v; want %+v", r, err, inTx)
	}
}
