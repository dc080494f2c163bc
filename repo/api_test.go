package repo_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// InTx rolls back when fn panics, so the connection and its row locks are
// released at once, and re-raises the panic.
func TestInTxRollsBackOnPanic(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	e.insertProduct(t, 1, "before", 100)
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want the panic re-raised", r)
			}
		}()
		_ = repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
			if _, err := s.In(tx).Update(ctx, 1, func(p *Product) error { p.Name = "inside"; return nil }); err != nil {
				t.Fatal(err)
			}
			panic("boom")
		})
	}()
	// The row lock is gone: an Update outside finishes well within its deadline.
	uctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	p, err := s.Update(uctx, 1, func(p *Product) error { p.Price(); return nil })
	if err != nil || p.Name != "before" {
		t.Fatalf("update after the panic: %+v %v; want the row unchanged and unlocked", p, err)
	}
}

// Price is a method so that the mutate function above does something.
func (p *Product) Price() int64 { return p.PriceCents }

// dbtx is sqlc's DBTX: no Begin.
type dbtx struct{ db repo.Beginner }

func (d dbtx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return d.db.Exec(ctx, sql, args...)
}
func (d dbtx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return d.db.Query(ctx, sql, args...)
}
func (d dbtx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return d.db.QueryRow(ctx, sql, args...)
}

// A Store over sqlc's DBTX shape reads and writes; Update, which needs a
// transaction, says so clearly, and works inside InTx.
func TestStoreOverDBTX(t *testing.T) {
	e := newEnv(t)
	s, err := repo.New(dbtx{e.Pool}, e.MC, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Insert(ctx, Product{ID: 1, ArticleNumber: "A1", Name: "one", CategoryID: 1, PriceCents: 5}); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "one" {
		t.Fatalf("get: %+v %v", p, err)
	}
	if _, err := s.Update(ctx, 1, func(p *Product) error { p.Name = "two"; return nil }); !errors.Is(err, repo.ErrNeedsTx) {
		t.Fatalf("Update over a DBTX: %v, want ErrNeedsTx", err)
	}
	err = repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
		_, err := s.In(tx).Update(ctx, 1, func(p *Product) error { p.Name = "two"; return nil })
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "two" {
		t.Fatalf("get after the update in InTx: %+v %v", p, err)
	}
	if err := s.Delete(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, 1); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

// New rejects bad tables clearly, naming the problem.
func TestNewValidatesTable(t *testing.T) {
	e := newEnv(t)
	type hiddenKey struct {
		ArticleNumber string
		uom           string
		StoreCode     string
	}
	bad := []struct {
		name string
		new  func() error
		want string
	}{
		{"injection in the name", func() error {
			tb := productTable
			tb.Name = "items; DROP TABLE x"
			_, err := repo.New(e.Pool, e.MC, tb, nil)
			return err
		}, `"items; DROP TABLE x" is not a name or schema.name`},
		{"three-part name", func() error {
			tb := productTable
			tb.Name = "a.b.c"
			_, err := repo.New(e.Pool, e.MC, tb, nil)
			return err
		}, "not a name or schema.name"},
		{"bad column", func() error {
			tb := productTable
			tb.Columns = append([]string{"id", "name) --"}, tb.Columns[2:]...)
			_, err := repo.New(e.Pool, e.MC, tb, nil)
			return err
		}, `column name "name) --"`},
		{"unexported key field", func() error {
			_, err := repo.New(e.Pool, e.MC, repo.Table[Stock, hiddenKey]{Name: "stock", Key: stockTable.Key, Columns: stockTable.Columns}, nil)
			return err
		}, "field uom is unexported"},
		{"nil cache", func() error {
			_, err := repo.New(e.Pool, nil, productTable, nil)
			return err
		}, "needs a DB and a Cache"},
	}
	for _, tc := range bad {
		if err := tc.new(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	tb := productTable
	tb.Name = "public.products"
	if _, err := repo.New(e.Pool, e.MC, tb, nil); err != nil {
		t.Errorf("schema-qualified name: %v", err)
	}
}

// metaTTL reads the remaining TTL of key with the meta protocol.
func metaTTL(t *testing.T, addr, key string) int64 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "mg %s t\r\n", key)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HD t") {
		t.Fatalf("mg %s t: %q %v", key, line, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(line[4:]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TTLs past memcached's 30-day relative limit are sent as absolute times,
// jitter included; shorter ones are relative.
func TestLongTTLs(t *testing.T) {
	e := newEnv(t)
	for _, ttl := range []time.Duration{2 * time.Hour, 60 * 24 * time.Hour} {
		o := e.Opts(nil)
		o.TTL, o.Jitter = ttl, 0.1
		o.Namespace += strconv.Itoa(int(ttl.Hours()))
		s := e.products(t, o)
		e.Exec(t, `DELETE FROM products`)
		e.insertProduct(t, 1, "p", 1)
		if _, err := s.Get(ctx, 1); err != nil {
			t.Fatal(err)
		}
		got := time.Duration(metaTTL(t, e.MCAddr, s.Key(1))) * time.Second
		if lo := ttl - ttl/10 - time.Minute; got < lo || got > ttl {
			t.Errorf("TTL %v: the item expires in %v, want within [%v, %v] (jitter 0.1)", ttl, got, lo, ttl)
		}
	}
}

// Hooks see each operation's start and end, and its hit, miss and fill,
// with the table and the op.
func TestHooks(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var got []string
	type ctxKey struct{}
	o := e.Opts(nil)
	o.Hooks = observe.Hooks{
		OpStart: func(ctx context.Context, op observe.Op, table string) context.Context {
			mu.Lock()
			got = append(got, "start "+string(op)+" "+table)
			mu.Unlock()
			return context.WithValue(ctx, ctxKey{}, "span")
		},
		OpEnd: func(ctx context.Context, op observe.Op, table string, d time.Duration, err error) {
			mu.Lock()
			got = append(got, fmt.Sprintf("end %s %s %v span=%v", op, table, errors.Is(err, repo.ErrNotFound), ctx.Value(ctxKey{})))
			mu.Unlock()
		},
		Event: func(ctx context.Context, ev observe.Event) {
			mu.Lock()
			got = append(got, fmt.Sprintf("%s %s %s span=%v", ev.Kind, ev.Op, ev.Table, ctx.Value(ctxKey{})))
			mu.Unlock()
		},
	}
	s := e.products(t, o)
	e.insertProduct(t, 1, "p", 1)
	for _, id := range []int64{1, 1, 2} {
		_, _ = s.Get(ctx, id)
	}
	want := []string{
		"start get products", "miss get products span=span", "fill get products span=span", "end get products false span=span",
		"start get products", "hit get products span=span", "end get products false span=span",
		"start get products", "miss get products span=span", "fill get products span=span", "end get products true span=span",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("hooks saw\n%q\nwant\n%q", got, want)
	}
}

// The zero memclient.Client is a client over no servers: it fails, it does
// not panic; New needs servers.
func TestMemclientZeroValue(t *testing.T) {
	var c memclient.Client
	if _, err := c.Get("k"); !errors.Is(err, memcache.ErrNoServers) {
		t.Fatalf("zero Client Get: %v, want ErrNoServers", err)
	}
	if _, err := c.GetMulti([]string{"k"}); !errors.Is(err, memcache.ErrNoServers) {
		t.Fatalf("zero Client GetMulti: %v, want ErrNoServers", err)
	}
	if _, _, err := c.LeaseGet("k", 3); !errors.Is(err, memcache.ErrNoServers) {
		t.Fatalf("zero Client LeaseGet: %v, want ErrNoServers", err)
	}
	if _, err := memclient.New(memclient.Config{}); err == nil {
		t.Fatal("New without servers succeeded")
	}
}

// Query arguments are typed; an argument type that cannot be a key part is
// refused at construction.
func TestQueryArgumentTypes(t *testing.T) {
	e := newEnv(t)
	load := func(context.Context, float64) (int, error) { return 0, nil }
	if _, err := repo.NewQuery(e.MC, repo.QueryConfig[float64, int]{Name: "q", TTL: time.Second, Load: load}); err == nil || !strings.Contains(err.Error(), "float64") {
		t.Fatalf("float64 arguments: %v, want an error naming the type", err)
	}
	type args struct {
		Shop  string
		Page  int
		Since time.Time
	}
	var seen []args
	q, err := repo.NewQuery(e.MC, repo.QueryConfig[args, string]{Name: "q2", TTL: time.Minute, Namespace: e.NS,
		Load: func(_ context.Context, a args) (string, error) {
			seen = append(seen, a)
			return a.Shop + strconv.Itoa(a.Page), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	a := args{Shop: "S1", Page: 2, Since: time.Unix(100, 0)}
	for range 2 {
		if v, err := q.Get(ctx, a); err != nil || v != "S12" {
			t.Fatalf("Get: %q %v", v, err)
		}
	}
	if v, err := q.Get(ctx, args{Shop: "S1", Page: 3}); err != nil || v != "S13" || len(seen) != 2 {
		t.Fatalf("another page: %q %v, loads %v", v, err, seen)
	}
}

// Every type pgx scans into by default is cached, and a hit is DeepEqual to
// the miss that filled it (time.Location included): a row of a table with
// one column of each common type, NULLs in a second row.
type typedRow struct {
	ID      int64               `db:"id"`
	Price   pgtype.Numeric      `db:"price"`
	Doc     map[string]any      `db:"doc"`
	List    []any               `db:"list"`
	UUID    pgtype.UUID         `db:"uid"`
	Span    pgtype.Interval     `db:"span"`
	Range   pgtype.Range[int64] `db:"rng"`
	Net     netip.Prefix        `db:"net"`
	At      time.Time           `db:"at"`
	Day     time.Time           `db:"day"`
	Local   time.Time           `db:"local"`
	Tags    []string            `db:"tags"`
	Grid    [][]int32           `db:"grid"`
	Note    *string             `db:"note"`
	Opt     *int64              `db:"opt"`
	Raw     []byte              `db:"raw"`
	Ts      pgtype.Timestamptz  `db:"ts"`
	Version int64               `db:"version"`
}

func TestEveryPgxTypeRoundTrips(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, `CREATE TABLE typed (
		id bigint PRIMARY KEY, price numeric, doc jsonb, list json, uid uuid, span interval, rng int8range,
		net inet, at timestamptz, day date, local timestamp, tags text[], grid int4[], note text, opt bigint,
		raw bytea, ts timestamptz, version bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY)`)
	e.Exec(t, `INSERT INTO typed (id, price, doc, list, uid, span, rng, net, at, day, local, tags, grid, note, opt, raw, ts) VALUES
		(1, -12345.678900, '{"a": [1, "x", null, {"b": true}], "n": 1.5}', '[1, "two", false]', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
		 '1 year 2 days 03:04:05.000006', '[3,7)', '10.1.0.0/16', '2026-12-01 10:11:12.123456+01', '2026-12-01', '2026-12-01 10:11:12',
		 '{"x","y z"}', '{{1,2},{3,4}}', 'note', 42, '\x00ff', 'infinity'),
		(2, 'NaN', NULL, NULL, NULL, NULL, 'empty', '::1/128', '1970-01-01 00:00:00+00', '0001-01-01', '2000-02-29 23:59:59.999999',
		 '{}', NULL, NULL, NULL, NULL, NULL)`)
	cols := []string{"id", "price", "doc", "list", "uid", "span", "rng", "net", "at", "day", "local", "tags", "grid", "note", "opt", "raw", "ts", "version"}
	s, err := repo.New(e.Pool, e.MC, repo.Table[typedRow, int64]{Name: "typed", Key: []string{"id"}, Columns: cols, Version: "version"}, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{1, 2} {
		miss, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		hit, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(hit, miss) {
			t.Errorf("row %d: the hit differs from the miss:\nmiss %#v\nhit  %#v", id, miss, hit)
		}
	}
	if st := s.Stats(); st.Hits != 2 || st.Fills != 2 || st.CacheErrors != 0 {
		t.Fatalf("stats %+v, want 2 fills and 2 hits", st)
	}
}

// A row type the codec cannot encode is refused at New, naming the field.
func TestNewNamesUnsupportedField(t *testing.T) {
	e := newEnv(t)
	type bad struct {
		ID   int64    `db:"id"`
		Name chan int `db:"name"`
	}
	_, err := repo.New(e.Pool, e.MC, repo.Table[bad, int64]{Name: "products", Key: []string{"id"}, Columns: []string{"id", "name"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "Name") || !strings.Contains(err.Error(), "chan int") || !strings.Contains(err.Error(), "Table.Codec") {
		t.Fatalf("New with a chan field: %v, want an error naming the field, its type and Table.Codec", err)
	}
}

// No row key can equal a library key: a text key named like the table's
// generation (or the breaker's probe) is an ordinary row, and InvalidateAll
// keeps working.
func TestLibraryKeysApartFromRowKeys(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, `CREATE TABLE notes (id text PRIMARY KEY, body text NOT NULL)`)
	names := []string{"generation", "probe", "0:generation", ":probe", "lease", "g"}
	for _, n := range names {
		e.Exec(t, `INSERT INTO notes (id, body) VALUES ($1, $2)`, n, "body of "+n)
	}
	s, err := repo.New(e.Pool, e.MC, repo.Table[Note, string]{Name: "notes", Key: []string{"id"}, Columns: []string{"id", "body"}}, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		for _, n := range names {
			if got, err := s.Get(ctx, n); err != nil || got.Body != "body of "+n {
				t.Fatalf("round %d: Get(%q) = %+v, %v", round, n, got, err)
			}
		}
		before := s.Key("generation")
		if err := s.InvalidateAll(ctx); err != nil {
			t.Fatalf("round %d: InvalidateAll with a row keyed \"generation\" cached: %v", round, err)
		}
		if s.Key("generation") == before {
			t.Fatalf("round %d: InvalidateAll did not change the keys", round)
		}
	}
	if st := s.Stats(); st.CacheErrors != 0 {
		t.Fatalf("stats %+v: cache errors", st)
	}
}
