package codec_test

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/cachedrepo/cachedrepo/internal/codec"
)

type (
	cents int64
	tags  []string
)

// Embedded struct, flattened by pgx.RowToStructByName.
type Audit struct {
	CreatedBy string    `db:"created_by"`
	CreatedAt time.Time `db:"created_at"`
}

type meta struct {
	Rev int32 `db:"rev"`
}

// pgxRow has a column of every type pgx v5 scans into by default.
type pgxRow struct {
	Bool     bool                                         `db:"bool"`
	I16      int16                                        `db:"i16"`
	I32      int32                                        `db:"i32"`
	I64      int64                                        `db:"i64"`
	F32      float32                                      `db:"f32"`
	F64      float64                                      `db:"f64"`
	Str      string                                       `db:"str"`
	Bytes    []byte                                       `db:"bytes"`
	Tz       time.Time                                    `db:"tz"`
	Ts       time.Time                                    `db:"ts"`
	Date     time.Time                                    `db:"date"`
	Dur      time.Duration                                `db:"dur"`
	Prefix   netip.Prefix                                 `db:"prefix"`
	Addr     netip.Addr                                   `db:"addr"`
	IPNet    net.IPNet                                    `db:"ipnet"`
	MAC      net.HardwareAddr                             `db:"mac"`
	UUIDA    [16]byte                                     `db:"uuida"`
	UUID     pgtype.UUID                                  `db:"uuid"`
	Num      pgtype.Numeric                               `db:"num"`
	Interval pgtype.Interval                              `db:"interval"`
	R8       pgtype.Range[pgtype.Int8]                    `db:"r8"`
	RTz      pgtype.Range[pgtype.Timestamptz]             `db:"rtz"`
	MR       pgtype.Multirange[pgtype.Range[pgtype.Int8]] `db:"mr"`
	Text     pgtype.Text                                  `db:"text"`
	Int4     pgtype.Int4                                  `db:"int4"`
	Int8     pgtype.Int8                                  `db:"int8"`
	Float8   pgtype.Float8                                `db:"float8"`
	PBool    pgtype.Bool                                  `db:"pbool"`
	PDate    pgtype.Date                                  `db:"pdate"`
	PTs      pgtype.Timestamp                             `db:"pts"`
	PTstz    pgtype.Timestamptz                           `db:"ptstz"`
	PTime    pgtype.Time                                  `db:"ptime"`
	Bits     pgtype.Bits                                  `db:"bits"`
	Point    pgtype.Point                                 `db:"point"`
	Box      pgtype.Box                                   `db:"box"`
	Hstore   pgtype.Hstore                                `db:"hstore"`
	JSONB    map[string]any                               `db:"jsonb"`
	JSON     map[string]any                               `db:"json"`
	Arr      []any                                        `db:"arr"`
	Any      any                                          `db:"any"`
	AnyNum   any                                          `db:"any_num"`
	AnyTz    any                                          `db:"any_tz"`
	AnyInts  any                                          `db:"any_ints"`
	Raw      json.RawMessage                              `db:"raw"`
	SS       []string                                     `db:"ss"`
	SI       []int64                                      `db:"si"`
	MD       [][]int32                                    `db:"md"`
	ST       []pgtype.Text                                `db:"st"`
	PS       *string                                      `db:"ps"`
	PI       *int64                                       `db:"pi"`
	PT       *time.Time                                   `db:"pt"`
	PJ       *map[string]any                              `db:"pj"`
	Cents    cents                                        `db:"cents"`
	Tags     tags                                         `db:"tags"`
	Audit
	meta
}

const pgxQuery = `SELECT
	true AS bool, 32767::int2 AS i16, '-2147483648'::int4 AS i32, 9223372036854775807::int8 AS i64,
	1.5::float4 AS f32, '1.7976931348623157e308'::float8 AS f64, 'héllo'::text AS str, '\x00ff'::bytea AS bytes,
	now() AS tz, '2024-06-14 09:30:15.123456'::timestamp AS ts, '2024-02-29'::date AS date,
	'1 day 02:03:04.5'::interval AS dur,
	'10.1.0.0/16'::inet AS prefix, '2001:db8::1'::inet AS addr, '192.168.0.0/24'::cidr AS ipnet,
	'08:00:2b:01:02:03'::macaddr AS mac,
	'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS uuida, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'::uuid AS uuid,
	$1::numeric AS num, '1 year 2 mons -3 days 04:05:06.789'::interval AS interval,
	'[1,10)'::int8range AS r8, '[2024-01-01 00:00+00,)'::tstzrange AS rtz, '{[1,3), [5,7)}'::int8multirange AS mr,
	'text'::text AS text, 4::int4 AS int4, NULL::int8 AS int8, '-Infinity'::float8 AS float8, false AS pbool,
	'infinity'::date AS pdate, '2000-01-01 00:00:00'::timestamp AS pts, '-infinity'::timestamptz AS ptstz,
	'23:59:59.999999'::time AS ptime, B'10110'::varbit AS bits, '(1.5,-2)'::point AS point,
	'((2,2),(0,0))'::box AS box, 'a=>1, b=>NULL, "x y"=>""'::hstore AS hstore,
	'{"a":[1,"x",null],"b":{"c":true,"d":1.25e300},"e":""}'::jsonb AS jsonb,
	'{"z": 1, "a": [false, {}]}'::json AS json, '[1, "two", null, [], {}]'::jsonb AS arr,
	'"scalar"'::jsonb AS any, '-1.50'::numeric AS any_num, '2024-01-01 12:00+02'::timestamptz AS any_tz,
	'{1,NULL,3}'::int4[] AS any_ints, '{"raw": [1, 2]}'::jsonb AS raw,
	'{a,"",NULL-not,c}'::text[] AS ss, '{-9223372036854775808,0}'::int8[] AS si,
	'{{1,2},{3,4},{5,6}}'::int4[] AS md, '{x,NULL}'::text[] AS st,
	$2::text AS ps, $3::int8 AS pi, $4::timestamptz AS pt, $5::jsonb AS pj,
	2499::int8 AS cents, '{new,sale}'::text[] AS tags,
	'alice' AS created_by, '2025-01-01 00:00:00+00'::timestamptz AS created_at, 3::int4 AS rev`

func connect(t *testing.T) *pgx.Conn {
	t.Helper()
	url := os.Getenv("CACHEDREPO_TEST_DATABASE_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s: %v", url, err)
		}
		t.Skipf("PostgreSQL at %s is unreachable (set CACHEDREPO_TEST_DATABASE_URL): %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestPgxRoundTrip does what a cache miss does: it reads rows from a real
// PostgreSQL through pgx, encodes them, decodes them, and requires the
// result to be reflect.DeepEqual to what pgx returned.
func TestPgxRoundTrip(t *testing.T) {
	conn := connect(t)
	ctx := context.Background()
	// hstore is an extension: create it in a transaction that is rolled
	// back, and register its type for this connection.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS hstore"); err != nil {
		t.Fatal(err)
	}
	var oid uint32
	if err := tx.QueryRow(ctx, "SELECT 'hstore'::regtype::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	conn.TypeMap().RegisterType(&pgtype.Type{Name: "hstore", OID: oid, Codec: pgtype.HstoreCodec{}})

	c, err := codec.For[pgxRow]()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		num  string
		args []any // ps, pi, pt, pj
	}{
		{"numeric 1.50", "1.50", []any{"s", 7, "2024-03-31 02:30:00+02", `{"k": [1, 2.5, "x"]}`}},
		{"numeric zero", "0", []any{"", 0, "1970-01-01 00:00:00+00", `{}`}},
		{"numeric zero scaled", "0.000", []any{nil, nil, nil, nil}},
		{"numeric NaN", "NaN", []any{nil, nil, nil, `null`}},
		{"numeric Infinity", "Infinity", []any{nil, nil, nil, nil}},
		{"numeric -Infinity", "-Infinity", []any{nil, nil, nil, nil}},
		{"numeric negative", "-12345678901234567890.000001", []any{nil, nil, nil, nil}},
		{"numeric big exponent", "1e100", []any{nil, nil, nil, nil}},
		{"numeric small exponent", "1e-100", []any{nil, nil, nil, nil}},
		{"numeric integer", "100000000", []any{nil, nil, nil, nil}},
		{"numeric NULL", "", []any{nil, nil, nil, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var num any = tt.num
			if tt.num == "" {
				num = nil
			}
			rows, err := tx.Query(ctx, pgxQuery, append([]any{num}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			want, err := pgx.CollectOneRow(rows, pgx.RowToStructByName[pgxRow])
			if err != nil {
				t.Fatal(err)
			}
			checkRoundTrip(t, c, &want)
		})
	}

	// A row of NULLs, for every field that can hold one.
	type nullRow struct {
		Num     pgtype.Numeric                   `db:"num"`
		Text    pgtype.Text                      `db:"text"`
		PTstz   pgtype.Timestamptz               `db:"ptstz"`
		R8      pgtype.Range[pgtype.Int8]        `db:"r8"`
		RTz     pgtype.Range[pgtype.Timestamptz] `db:"rtz"`
		Hstore  pgtype.Hstore                    `db:"hstore"`
		JSONB   map[string]any                   `db:"jsonb"`
		Arr     []any                            `db:"arr"`
		Any     any                              `db:"any"`
		Bytes   []byte                           `db:"bytes"`
		SS      []string                         `db:"ss"`
		PS      *string                          `db:"ps"`
		PT      *time.Time                       `db:"pt"`
		PJ      *map[string]any                  `db:"pj"`
		Prefix  *netip.Prefix                    `db:"prefix"`
		EmptyR8 pgtype.Range[pgtype.Int8]        `db:"empty_r8"`
	}
	rows, err := tx.Query(ctx, `SELECT NULL::numeric AS num, NULL::text AS text, NULL::timestamptz AS ptstz,
		NULL::int8range AS r8, NULL::tstzrange AS rtz, NULL::hstore AS hstore, NULL::jsonb AS jsonb, NULL::jsonb AS arr,
		NULL::jsonb AS any, NULL::bytea AS bytes, NULL::text[] AS ss, NULL::text AS ps, NULL::timestamptz AS pt,
		NULL::jsonb AS pj, NULL::inet AS prefix, 'empty'::int8range AS empty_r8`)
	if err != nil {
		t.Fatal(err)
	}
	nulls, err := pgx.CollectOneRow(rows, pgx.RowToStructByName[nullRow])
	if err != nil {
		t.Fatal(err)
	}
	nc, err := codec.For[nullRow]()
	if err != nil {
		t.Fatal(err)
	}
	checkRoundTrip(t, nc, &nulls)
}

func checkRoundTrip[T any](t *testing.T, c *codec.Codec[T], want *T) {
	t.Helper()
	enc, err := c.Encode(nil, want)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	var got T
	if err := c.Decode(enc, &got); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if reflect.DeepEqual(&got, want) {
		return
	}
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(*want)
	for i := range gv.NumField() {
		if f := gv.Type().Field(i); f.IsExported() && !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
			t.Errorf("field %s:\n got: %#v\nwant: %#v", f.Name, gv.Field(i), wv.Field(i))
		}
	}
	t.Fatal("decoded value is not reflect.DeepEqual to pgx's")
}
