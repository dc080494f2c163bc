package main

import (
	"context"
	"net/http"

	"github.com/cachedrepo/cachedrepo/examples/retail/catalogdb"
	"github.com/cachedrepo/cachedrepo/repo"
)

// The products table once more, as an sqlc user has it: the row type is
// sqlc's generated catalogdb.Product (pgtype.Timestamptz included) and a
// miss is served by sqlc's query functions, GetProduct and
// ListProductsByIDs, instead of the store's own SELECT. Writes still go
// through the store, which writes them through to the cache. The store
// shares the products' table but caches under its own key space (its row
// type has another fingerprint), so GET /sqlc/products/{id} and
// GET /products/{id} answer from separate entries.
var sqlcProductsTable = repo.Table[catalogdb.Product, int64]{
	Name:    "products",
	Key:     []string{"id"},
	Columns: []string{"id", "article_number", "name", "category_id", "price_cents", "updated_at", "version"},
	Version: "version",
	Load: func(ctx context.Context, db repo.DB, id int64) (catalogdb.Product, error) {
		return catalogdb.New(db).GetProduct(ctx, id)
	},
	LoadMany: func(ctx context.Context, db repo.DB, ids []int64) ([]catalogdb.Product, error) {
		return catalogdb.New(db).ListProductsByIDs(ctx, ids)
	},
}

// getSQLCProduct serves GET /sqlc/products/{id} from the sqlc-typed store.
func (a *app) getSQLCProduct(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	p, err := a.cat.sqlcProducts.Get(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}
