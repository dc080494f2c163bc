package main

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/cachedrepo/cachedrepo/examples/retail/catalogdb"
	"github.com/cachedrepo/cachedrepo/repo"
)

// The sqlc-typed store: a miss is served by sqlc's GetProduct (and GetMany's
// misses by ListProductsByIDs), the hit that follows is DeepEqual to it
// (pgtype.Timestamptz in its Location included), and a write through the
// store reaches the cache.
func TestSQLCProducts(t *testing.T) {
	a := newTestApp(t, true)
	ctx := context.Background()
	s := a.cat.sqlcProducts
	direct, err := catalogdb.New(a.pool).GetProduct(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	miss, err := s.Get(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	hit, err := s.Get(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(miss, direct) || !reflect.DeepEqual(hit, miss) {
		t.Fatalf("sqlc: %#v\nmiss: %#v\nhit:  %#v", direct, miss, hit)
	}
	if st := s.Stats(); st.Hits != 1 || st.Misses != 1 || st.DBReads != 1 {
		t.Fatalf("stats %+v, want one miss read by sqlc and one hit", st)
	}
	many, err := s.GetMany(ctx, []int64{3, 4, 5, 999})
	if err != nil || len(many) != 3 || !reflect.DeepEqual(many[3], hit) {
		t.Fatalf("GetMany: %d rows %v", len(many), err)
	}
	err = repo.InTx(ctx, a.pool, func(tx *repo.Tx) error {
		_, err := s.In(tx).Update(ctx, 4, func(p *catalogdb.Product) error { p.PriceCents = 12345; return nil })
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.Get(ctx, 4); err != nil || p.PriceCents != 12345 {
		t.Fatalf("after the update: %+v %v", p, err)
	}
	if _, err := s.Get(ctx, 999); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("missing product: %v", err)
	}
}
