package repo_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
)

// ProductV2 is the products row as a next release reads it: without
// updated_at, so its codec's fingerprint differs from Product's.
type ProductV2 struct {
	ID            int64  `db:"id"`
	ArticleNumber string `db:"article_number"`
	Name          string `db:"name"`
	CategoryID    int64  `db:"category_id"`
	PriceCents    int64  `db:"price_cents"`
	Version       int64  `db:"version"`
}

var productV2Table = repo.Table[ProductV2, int64]{
	Name:    "products",
	Key:     []string{"id"},
	Columns: []string{"id", "article_number", "name", "category_id", "price_cents", "version"},
	Version: "version",
}

// Two releases of the row type serve one table during a rolling deploy:
// each sees the other's writes (they share keys; versions compare across
// them) and never decodes the other's bytes as its own. Before, each cached
// under its own fingerprint's keys: after the new release's Update the old
// one served the old row until TTL, and after the old one's Delete the new
// one still served the row.
func TestRollingDeploy(t *testing.T) {
	e := newEnv(t)
	old := e.products(t, nil)
	next, err := repo.New(e.Pool, e.MC, productV2Table, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	e.insertProduct(t, 1, "v1", 100)
	if p, err := old.Get(ctx, 1); err != nil || p.Name != "v1" {
		t.Fatalf("old release: %+v %v", p, err)
	}
	if old.Key(1) != next.Key(1) {
		t.Fatalf("the releases use different keys: %q and %q", old.Key(1), next.Key(1))
	}
	if _, err := next.Update(ctx, 1, func(p *ProductV2) error { p.Name = "by next"; return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if p, err := old.Get(ctx, 1); err != nil || p.Name != "by next" {
			t.Fatalf("old release, read %d after the new release's Update: %+v %v", i, p, err)
		}
		if p, err := next.Get(ctx, 1); err != nil || p.Name != "by next" {
			t.Fatalf("new release, read %d after its Update: %+v %v", i, p, err)
		}
	}
	if _, err := old.Update(ctx, 1, func(p *Product) error { p.Name = "by old"; return nil }); err != nil {
		t.Fatal(err)
	}
	if p, err := next.Get(ctx, 1); err != nil || p.Name != "by old" {
		t.Fatalf("new release after the old one's Update: %+v %v", p, err)
	}
	if err := old.Delete(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := next.Get(ctx, 1); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("new release after the old one's Delete: %v", err)
	}
	if st := old.Stats(); st.CacheErrors != 0 {
		t.Fatalf("old release reported cache errors (another release's bytes taken as corrupt?): %+v", st)
	}

	// The cost during a deploy: readers of both releases alternate on the
	// same keys, and each read of the other release's entry reads the
	// database and converts the entry. After the deploy (only the new
	// release reads), every key costs one conversion, then hits.
	const keys = 10
	for i := int64(2); i < 2+keys; i++ {
		e.insertProduct(t, i, fmt.Sprint("p", i), i)
	}
	b0o, b0n := old.Stats(), next.Stats()
	start := time.Now()
	reads := 0
	for round := range 20 {
		for i := int64(2); i < 2+keys; i++ {
			var err error
			if round%2 == 0 {
				_, err = old.Get(ctx, i)
			} else {
				_, err = next.Get(ctx, i)
			}
			if err != nil {
				t.Fatal(err)
			}
			reads++
		}
	}
	during := old.Stats().DBReads - b0o.DBReads + next.Stats().DBReads - b0n.DBReads
	b1 := next.Stats()
	for range 5 {
		for i := int64(2); i < 2+keys; i++ {
			if _, err := next.Get(ctx, i); err != nil {
				t.Fatal(err)
			}
		}
	}
	after := next.Stats().DBReads - b1.DBReads
	testenv.Summaryf("releases: reads=%d db_reads_during_deploy=%d (%.2f per read) db_reads_after=%d for %d keys, %v\n",
		reads, during, float64(during)/float64(reads), after, keys, time.Since(start).Round(time.Millisecond))
	if after != 0 {
		t.Fatalf("%d database reads after the deploy: the last conversions should have left every key cached for the new release", after)
	}
}
