package migrations_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/migrations"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

func tables(t *testing.T, url string) map[string]bool {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(context.Background(), `SELECT tablename FROM pg_tables WHERE schemaname = 'public'`)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}

// The library's tables apply on their own, with their own history table, so
// a user's golang-migrate history (schema_migrations) is not touched; Up adds
// the catalogue and Down removes both.
func TestLibraryApartFromCatalog(t *testing.T) {
	url := repotest.NewDatabase(t)
	if err := migrations.UpLibrary(url); err != nil {
		t.Fatal(err)
	}
	got := tables(t, url)
	for _, want := range []string{"cachedrepo_outbox", "counters", "scores", migrations.LibraryTable} {
		if !got[want] {
			t.Errorf("after UpLibrary: no table %s (have %v)", want, got)
		}
	}
	if got["products"] || got["schema_migrations"] {
		t.Errorf("UpLibrary created the catalogue or the default history table: %v", got)
	}
	if err := migrations.UpLibrary(url); err != nil {
		t.Fatalf("UpLibrary again: %v", err)
	}
	if err := migrations.Up(url); err != nil {
		t.Fatal(err)
	}
	if got := tables(t, url); !got["products"] || !got["stock"] || !got["schema_migrations"] {
		t.Errorf("after Up: %v", got)
	}
	if err := migrations.Down(url); err != nil {
		t.Fatal(err)
	}
	for name := range tables(t, url) {
		if name != "schema_migrations" && name != migrations.LibraryTable {
			t.Errorf("after Down: table %s is left", name)
		}
	}
}
