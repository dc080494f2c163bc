package repo_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
)

type code string

type mixedKey struct {
	A string
	B int64
	C code
	D int32
	E int
}

type mixedRow struct {
	A       string `db:"a"`
	B       int64  `db:"b"`
	C       code   `db:"c"`
	D       int32  `db:"d"`
	E       int    `db:"e"`
	Version int64  `db:"version"`
}

// A composite key of strings and integers has a fast path that builds its
// key without boxing the fields: it must make exactly the key the general
// path (KeyArgs and cachekeys.Part) makes, which earlier releases used and
// other releases of a fleet still use, for every kind of part: escaped
// bytes, empty parts, negative numbers, and keys long enough to be hashed.
func TestCompositeKeyFastPathMatches(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none") // never connected
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	mc := memcache.New("127.0.0.1:1") // never used
	table := repo.Table[mixedRow, mixedKey]{
		Name: "mixed", Key: []string{"a", "b", "c", "d", "e"},
		Columns: []string{"a", "b", "c", "d", "e", "version"}, Version: "version",
	}
	fast, err := repo.New(pool, mc, table, &repo.Options{Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	table.KeyArgs = func(k mixedKey) []any { return []any{k.A, k.B, k.C, k.D, k.E} }
	general, err := repo.New(pool, mc, table, &repo.Options{Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	keys := []mixedKey{
		{},
		{A: "a", B: 1, C: "c", D: 2, E: 3},
		{A: "a:b", B: -9223372036854775808, C: "x y", D: -2147483648, E: -1},
		{A: "%25", B: 9223372036854775807, C: "ÄÖ\n\x7f", D: 2147483647, E: 1 << 40},
		{A: strings.Repeat("long", 100), B: 7, C: "c", D: 8, E: 9},
		{A: "", C: "", E: 0},
	}
	for _, k := range keys {
		if got, want := fast.Key(k), general.Key(k); got != want {
			t.Errorf("key of %+v: fast path %q, general path %q", k, got, want)
		}
	}
	if k := fast.Key(keys[4]); !strings.Contains(k, "#") {
		t.Errorf("the long key %q was not hashed: the test misses that case", k)
	}
}
