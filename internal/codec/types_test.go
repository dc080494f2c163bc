package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin etc. even without a system zoneinfo

	"github.com/jackc/pgx/v5/pgtype"
)

// Types for the tests of pgx's types and of the fallbacks.
type (
	Tags []string

	EmbedPub struct {
		E1 int64
		E2 string
	}
	embedPriv struct{ P1 *string }

	// textOnly is encoded with MarshalText (only unexported fields).
	textOnly struct{ v string }
	// jsonOnly is encoded with MarshalJSON (only unexported fields).
	jsonOnly struct{ v int }
)

func (t textOnly) MarshalText() ([]byte, error) { return []byte(t.v), nil }
func (t *textOnly) UnmarshalText(b []byte) error {
	t.v = string(b)
	return nil
}
func (j jsonOnly) MarshalJSON() ([]byte, error) { return []byte(strconv.Itoa(j.v)), nil }
func (j *jsonOnly) UnmarshalJSON(b []byte) (err error) {
	j.v, err = strconv.Atoi(string(b))
	return err
}

// pgRow has a field of every type pgx v5 scans into by default, and of
// the types that need a fallback.
type pgRow struct {
	Bool  bool
	I     int
	I8    int8
	I16   int16
	I32   int32
	I64   int64
	U     uint
	U8    uint8
	U16   uint16
	U32   uint32
	U64   uint64
	F32   float32
	F64   float64
	Str   string
	Bytes []byte
	Tz    time.Time // timestamptz: time.Local
	Ts    time.Time // timestamp: UTC
	Date  time.Time // date: UTC
	Dur   time.Duration

	Prefix netip.Prefix
	Addr   netip.Addr
	IPNet  net.IPNet
	MAC    net.HardwareAddr
	UUIDA  [16]byte
	UUID   pgtype.UUID

	Num      pgtype.Numeric
	Interval pgtype.Interval
	R8       pgtype.Range[pgtype.Int8]
	RTz      pgtype.Range[pgtype.Timestamptz]
	MR       pgtype.Multirange[pgtype.Range[pgtype.Int8]]
	Text     pgtype.Text
	Int4     pgtype.Int4
	Int8     pgtype.Int8
	Float8   pgtype.Float8
	PBool    pgtype.Bool
	PDate    pgtype.Date
	PTs      pgtype.Timestamp
	PTstz    pgtype.Timestamptz
	PTime    pgtype.Time
	Bits     pgtype.Bits
	Point    pgtype.Point
	Box      pgtype.Box
	Hstore   pgtype.Hstore

	JSON map[string]any
	Arr  []any
	Any  any
	Raw  json.RawMessage

	SS []string
	SI []int64
	MD [][]int32
	ST []pgtype.Text

	PS *string
	PI *int64
	PT *time.Time
	PJ *map[string]any

	Cents Cents
	Tags  Tags
	EmbedPub
	embedPriv

	BigI big.Int
	BigF *big.Float
	Rat  *big.Rat
	MI   map[int]string
	MB   map[bool][]int16
	MU   map[uint8]*Inner
	Txt  textOnly
	Js   jsonOnly
	Skip string `db:"-"`
}

func mustLoad(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func bigInt(s string) *big.Int {
	x, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic(s)
	}
	return x
}

// pgRowValues are the property test's values: zero values, NULLs,
// extremes and nesting.
func pgRowValues(t testing.TB) map[string]pgRow {
	berlin := mustLoad(t, "Europe/Berlin")
	ist := time.FixedZone("IST", 5*3600+1800)
	tz := time.Unix(1718357415, 123456000) // time.Local, as pgx gives timestamptz
	ts := time.Date(2024, 6, 14, 9, 30, 15, 123456000, time.UTC)
	date := time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)
	str := "s"
	n := int64(-9)
	hs := "v"
	obj := map[string]any{"a": []any{1.0, "x", nil}, "b": map[string]any{"c": true, "d": false}, "e": "", "n": json.Number("12.50")}
	full := pgRow{
		Bool: true, I: -1, I8: math.MinInt8, I16: math.MaxInt16, I32: math.MinInt32, I64: math.MaxInt64,
		U: math.MaxUint, U8: 255, U16: 65535, U32: 1 << 31, U64: math.MaxUint64, F32: -1.5, F64: math.Pi,
		Str: "héllo \x00", Bytes: []byte{0, 1, 255}, Tz: tz, Ts: ts, Date: date, Dur: -90 * time.Minute,
		Prefix: netip.MustParsePrefix("10.1.0.0/16"), Addr: netip.MustParseAddr("2001:db8::1"),
		IPNet: net.IPNet{IP: net.IPv4(192, 168, 0, 0).To4(), Mask: net.CIDRMask(24, 32)},
		MAC:   net.HardwareAddr{0, 0x1b, 0x63, 0x84, 0x45, 0xe6},
		UUIDA: [16]byte{0xde, 0xad, 15: 0xff}, UUID: pgtype.UUID{Bytes: [16]byte{1, 2, 3}, Valid: true},
		Num:      pgtype.Numeric{Int: big.NewInt(150), Exp: -2, Valid: true},
		Interval: pgtype.Interval{Microseconds: 3600e6, Days: -2, Months: 14, Valid: true},
		R8: pgtype.Range[pgtype.Int8]{Lower: pgtype.Int8{Int64: 1, Valid: true}, Upper: pgtype.Int8{Int64: 10, Valid: true},
			LowerType: pgtype.Inclusive, UpperType: pgtype.Exclusive, Valid: true},
		RTz: pgtype.Range[pgtype.Timestamptz]{Lower: pgtype.Timestamptz{Time: tz, Valid: true},
			LowerType: pgtype.Inclusive, UpperType: pgtype.Unbounded, Valid: true},
		MR: pgtype.Multirange[pgtype.Range[pgtype.Int8]]{
			{Lower: pgtype.Int8{Int64: 1, Valid: true}, Upper: pgtype.Int8{Int64: 3, Valid: true}, LowerType: pgtype.Inclusive, UpperType: pgtype.Exclusive, Valid: true},
			{LowerType: pgtype.Unbounded, UpperType: pgtype.Unbounded, Valid: true},
		},
		Text: pgtype.Text{String: "t", Valid: true}, Int4: pgtype.Int4{Int32: -4, Valid: true}, Int8: pgtype.Int8{Int64: 8, Valid: true},
		Float8: pgtype.Float8{Float64: math.Inf(-1), Valid: true}, PBool: pgtype.Bool{Bool: true, Valid: true},
		PDate: pgtype.Date{Time: date, Valid: true}, PTs: pgtype.Timestamp{InfinityModifier: pgtype.Infinity, Valid: true},
		PTstz: pgtype.Timestamptz{Time: tz, Valid: true}, PTime: pgtype.Time{Microseconds: 86399e6, Valid: true},
		Bits:   pgtype.Bits{Bytes: []byte{0xa0}, Len: 3, Valid: true},
		Point:  pgtype.Point{P: pgtype.Vec2{X: 1.5, Y: -2}, Valid: true},
		Box:    pgtype.Box{P: [2]pgtype.Vec2{{X: 2, Y: 2}, {X: 0, Y: 0}}, Valid: true},
		Hstore: pgtype.Hstore{"a": &hs, "null": nil, "": &str},
		JSON:   obj, Arr: []any{1.0, "two", []any{}, map[string]any{}, nil}, Any: "scalar", Raw: json.RawMessage(`{"raw":1}`),
		SS: []string{"a", ""}, SI: []int64{math.MinInt64, 0}, MD: [][]int32{{1, 2}, {}, nil, {-3}},
		ST: []pgtype.Text{{String: "x", Valid: true}, {}},
		PS: &str, PI: &n, PT: &tz, PJ: &obj,
		Cents: 2499, Tags: Tags{"new", "sale"},
		EmbedPub: EmbedPub{E1: 7, E2: "pub"}, embedPriv: embedPriv{P1: &str},
		BigI: *bigInt("-123456789012345678901234567890"),
		BigF: big.NewFloat(-2.75).SetPrec(100), Rat: big.NewRat(-22, 7),
		MI: map[int]string{-1: "m", 0: "", 1 << 40: "big"}, MB: map[bool][]int16{true: {1}, false: nil},
		MU:  map[uint8]*Inner{0: nil, 255: {A: 1, B: "b"}},
		Txt: textOnly{"text"}, Js: jsonOnly{-42},
	}
	empty := pgRow{
		Bytes: []byte{}, MAC: net.HardwareAddr{}, JSON: map[string]any{}, Arr: []any{}, Raw: json.RawMessage{}, SS: []string{}, SI: []int64{},
		MD: [][]int32{}, ST: []pgtype.Text{}, Hstore: pgtype.Hstore{}, Tags: Tags{}, MR: pgtype.Multirange[pgtype.Range[pgtype.Int8]]{},
		MI: map[int]string{}, MB: map[bool][]int16{}, MU: map[uint8]*Inner{}, PJ: new(map[string]any),
		BigF: new(big.Float), Rat: new(big.Rat),
	}
	return map[string]pgRow{
		"zero":        {},
		"full":        full,
		"empty":       empty,
		"numeric NaN": {Num: pgtype.Numeric{NaN: true, Valid: true}},
		"numeric Infinity": {Num: pgtype.Numeric{InfinityModifier: pgtype.Infinity, Valid: true},
			PDate: pgtype.Date{InfinityModifier: pgtype.NegativeInfinity, Valid: true}},
		"numeric -Infinity": {Num: pgtype.Numeric{InfinityModifier: pgtype.NegativeInfinity, Valid: true}},
		"numeric zero":      {Num: pgtype.Numeric{Int: big.NewInt(0), Valid: true}},
		"numeric negative":  {Num: pgtype.Numeric{Int: big.NewInt(-1), Exp: -30, Valid: true}},
		"numeric big exponents": {Num: pgtype.Numeric{Int: bigInt("98765432109876543210987654321098765432109876543210"), Exp: 131000, Valid: true},
			BigI: *bigInt("340282366920938463463374607431768211456")},
		"numeric small exponent": {Num: pgtype.Numeric{Int: big.NewInt(1), Exp: -16383, Valid: true}},
		"locations": {
			Tz: time.Date(2024, 3, 31, 2, 30, 0, 0, berlin), Ts: time.Date(2024, 1, 1, 0, 0, 0, 1, ist),
			Date: time.Date(1900, 1, 1, 0, 0, 0, 0, time.FixedZone("", -3600)),
			PT:   ptr(time.Date(2024, 10, 27, 2, 30, 0, 0, mustLoad(t, "America/New_York"))),
			Any:  time.Date(2000, 1, 1, 0, 0, 0, 0, berlin),
			RTz:  pgtype.Range[pgtype.Timestamptz]{Upper: pgtype.Timestamptz{Time: time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("UTC", 0)), Valid: true}, Valid: true},
		},
		"dynamic scalars": {Any: int64(5), Arr: []any{int32(-1), int16(2), float32(0.5), []byte("b"), [16]byte{1},
			netip.MustParsePrefix("::1/128"), pgtype.Numeric{Int: big.NewInt(1), Valid: true}, pgtype.Interval{Days: 1, Valid: true},
			pgtype.Range[any]{Lower: int64(1), Upper: int64(5), LowerType: pgtype.Inclusive, UpperType: pgtype.Exclusive, Valid: true},
			pgtype.Hstore{"k": nil}, tz, []any(nil), map[string]any(nil), json.Number("1e3")}},
		"deep json": {JSON: map[string]any{"l1": map[string]any{"l2": []any{map[string]any{"l3": []any{[]any{1e300, -0.0}}}}}}},
		"nulls":     {PS: nil, PI: nil, PT: nil, PJ: nil, Hstore: pgtype.Hstore{"x": nil}, Any: nil},
	}
}

// TestPgTypesRoundTrip is the property test: every supported type, every
// value decodes reflect.DeepEqual to the original, time.Location included,
// and re-encodes to the same bytes.
func TestPgTypesRoundTrip(t *testing.T) {
	c := mustFor[pgRow](t)
	for name, want := range pgRowValues(t) {
		t.Run(name, func(t *testing.T) {
			want.Skip = "kept"
			enc, err := c.Encode(nil, &want)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(enc, c.Append(nil, &want)) {
				t.Fatal("Encode and Append differ")
			}
			got := pgRow{Skip: "kept"}
			if err := c.Decode(enc, &got); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
				for i := range gv.NumField() {
					if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
						t.Errorf("field %s:\n got: %#v\nwant: %#v", gv.Type().Field(i).Name, gv.Field(i), wv.Field(i))
					}
				}
				t.Fatal("decode(encode(v)) is not reflect.DeepEqual to v")
			}
			if again := c.Append(nil, &got); !bytes.Equal(again, enc) {
				t.Errorf("re-encoding differs\n got: %x\nwant: %x", again, enc)
			}
			for n := range len(enc) {
				var v pgRow
				if err := c.Decode(enc[:n], &v); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Decode of %d/%d bytes: err = %v, want ErrCorrupt", n, len(enc), err)
				}
				if !reflect.DeepEqual(v, pgRow{}) {
					t.Fatalf("Decode of %d/%d bytes left a non-zero value", n, len(enc))
				}
			}
		})
	}
}

func TestTimeLocation(t *testing.T) {
	type row struct{ T time.Time }
	c := mustFor[row](t)
	custom, err := time.LoadLocationFromTZData("Custom/Zone", mustTZData(t))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 7, 1, 12, 0, 0, 5, time.UTC)
	tests := []struct {
		name     string
		in       time.Time
		want     time.Time // DeepEqual to the decoded value
		wantName string    // the decoded Location's name
	}{
		{"UTC", at, at, "UTC"},
		{"Local", at.Local(), at.Local(), time.Local.String()},
		{"named", at.In(mustLoad(t, "Europe/Berlin")), at.In(mustLoad(t, "Europe/Berlin")), "Europe/Berlin"},
		{"fixed, named", at.In(time.FixedZone("EST", -5*3600)), at.In(time.FixedZone("EST", -5*3600)), "EST"},
		{"fixed, unnamed", at.In(time.FixedZone("", 3600)), at.In(time.FixedZone("", 3600)), ""},
		{"fixed, offset 0", at.In(time.FixedZone("", 0)), at.In(time.FixedZone("", 0)), ""},
		{"fixed named UTC", at.In(time.FixedZone("UTC", 0)), at.In(time.FixedZone("UTC", 0)), "UTC"},
		{"fixed, odd offset", at.In(time.FixedZone("LMT", -(9*3600 + 30*60 + 7))), at.In(time.FixedZone("LMT", -(9*3600 + 30*60 + 7))), "LMT"},
		// Documented losses: the monotonic reading, and a location that
		// cannot be loaded by name decodes as the fixed zone in effect.
		{"monotonic dropped", time.Now().UTC(), time.Time{}, "UTC"},
		{"unloadable location", at.In(custom), at.In(time.FixedZone("CUS", 7200)), "CUS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := row{tt.in}
			var got row
			if err := c.Decode(c.Append(nil, &in), &got); err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want.IsZero() {
				want = tt.in.Round(0)
			}
			if !reflect.DeepEqual(got.T, want) {
				t.Errorf("got %v (%#v)\nwant %v (%#v)", got.T, got.T.Location(), want, want.Location())
			}
			if got.T.Location().String() != tt.wantName {
				t.Errorf("location %q, want %q", got.T.Location(), tt.wantName)
			}
		})
	}
	// time.UTC and time.Local come back pointer-identical.
	for _, loc := range []*time.Location{time.UTC, time.Local} {
		var got row
		if err := c.Decode(c.Append(nil, &row{at.In(loc)}), &got); err != nil || got.T.Location() != loc {
			t.Errorf("%v: decoded location %p, want %p (err %v)", loc, got.T.Location(), loc, err)
		}
	}
}

// mustTZData builds a TZif file with one zone, "CUS" at +2h, and no name
// that time.LoadLocation knows.
func mustTZData(t *testing.T) []byte {
	t.Helper()
	var b []byte
	b = append(b, "TZif\x00"...)
	b = append(b, make([]byte, 15)...)
	be := func(n uint32) { b = append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n)) }
	// counts: isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
	for _, n := range []uint32{0, 0, 0, 0, 1, 4} {
		be(n)
	}
	be(7200)
	b = append(b, 0, 0)
	b = append(b, "CUS\x00"...)
	return b
}

func TestDynamicValues(t *testing.T) {
	type row struct{ V any }
	c := mustFor[row](t)
	cyclic := map[string]any{}
	cyclic["self"] = cyclic
	deep := any(nil)
	for range maxDepth + 1 {
		deep = []any{deep}
	}
	bad := []struct {
		name string
		v    any
		want string
	}{
		{"unsupported type", struct{ X int }{1}, "dynamic type struct { X int } is not supported"},
		{"unsupported nested", map[string]any{"k": []any{1.0, complex(1, 2)}}, "complex128"},
		{"pointer", ptr("x"), "*string"},
		{"cycle", cyclic, "nested more than"},
		{"too deep", deep, "nested more than"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			v := row{tt.v}
			out, err := c.Encode([]byte("keep"), &v)
			if err == nil || !strings.Contains(err.Error(), "row.V") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Encode err = %v, want one naming row.V and %q", err, tt.want)
			}
			if string(out) != "keep" {
				t.Errorf("Encode returned %q on error, want dst unchanged", out)
			}
			var got row
			if err := c.Decode(c.Append(nil, &v), &got); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Decode of a failed Append: err = %v, want ErrCorrupt", err)
			}
		})
	}

	corrupt := []struct {
		name string
		src  []byte
	}{
		{"unknown tag", []byte{0xff}},
		{"typed tag out of range", []byte{byte(tagTyped + len(dynTypes))}},
		{"object keys unsorted", []byte{tagObject, 3, 1, 'b', tagNil, 1, 'a', tagNil}},
		{"object keys duplicate", []byte{tagObject, 3, 1, 'a', tagNil, 1, 'a', tagNil}},
		{"array too long", []byte{tagArray, 5, tagNil}},
		{"short float", []byte{tagFloat64, 1, 2, 3}},
		{"nested too deep", append(bytes.Repeat([]byte{tagArray, 2}, maxDepth+1), tagNil)},
	}
	for _, tt := range corrupt {
		t.Run(tt.name, func(t *testing.T) {
			if err := decodeErr[row](t, tt.src); !errors.Is(err, ErrCorrupt) {
				t.Errorf("err = %v, want ErrCorrupt", err)
			}
		})
	}
	// Exactly maxDepth levels decode.
	var v row
	if err := c.Decode(append(bytes.Repeat([]byte{tagArray, 2}, maxDepth), tagNil), &v); err != nil {
		t.Errorf("%d levels: %v", maxDepth, err)
	}
}

func TestDecodeNonCanonicalNewTypes(t *testing.T) {
	type (
		oneBig    struct{ N big.Int }
		oneTime   struct{ T time.Time }
		onePrefix struct{ P netip.Prefix }
		oneMap    struct{ M map[int8]bool }
		oneText   struct{ T textOnly }
		oneNum    struct{ N jsonOnly }
	)
	tests := []struct {
		name string
		err  func() error
	}{
		{"big.Int leading zero", func() error { return decodeErr[oneBig](t, []byte{4, 0, 1}) }},
		{"big.Int negative zero", func() error { return decodeErr[oneBig](t, []byte{1}) }},
		{"big.Int short", func() error { return decodeErr[oneBig](t, []byte{6, 1}) }},
		{"zone kind 4", func() error { return decodeErr[oneTime](t, []byte{0, 0, 4}) }},
		{"zone missing", func() error { return decodeErr[oneTime](t, []byte{0, 0}) }},
		{"named zone UTC", func() error { return decodeErr[oneTime](t, []byte{0, 0, zoneNamed, 3, 'U', 'T', 'C'}) }},
		{"named zone Local", func() error { return decodeErr[oneTime](t, []byte{0, 0, zoneNamed, 5, 'L', 'o', 'c', 'a', 'l'}) }},
		{"named zone empty", func() error { return decodeErr[oneTime](t, []byte{0, 0, zoneNamed, 0}) }},
		{"named zone unknown", func() error { return decodeErr[oneTime](t, []byte{0, 0, zoneNamed, 3, 'N', 'o', '/'}) }},
		{"named zone path", func() error { return decodeErr[oneTime](t, append([]byte{0, 0, zoneNamed, 11}, "../../etc/x"...)) }},
		{"fixed zone short", func() error { return decodeErr[oneTime](t, []byte{0, 0, zoneFixed, 2}) }},
		{"prefix bits out of range", func() error { return decodeErr[onePrefix](t, []byte{5, 10, 0, 0, 0, 200}) }},
		{"int map keys unsorted", func() error { return decodeErr[oneMap](t, []byte{3, 2, 1, 0, 1}) }},
		{"int map key out of range", func() error { return decodeErr[oneMap](t, []byte{2, 0x80, 0x02, 1}) }},
		{"json not canonical", func() error { return decodeErr[oneNum](t, []byte{2, '0', '1'}) }},
		{"json error", func() error { return decodeErr[oneNum](t, []byte{1, 'x'}) }},
		{"text huge length", func() error { return decodeErr[oneText](t, []byte{0xff, 0x7f}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.err(); !errors.Is(err, ErrCorrupt) {
				t.Errorf("err = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestFallbackLayout(t *testing.T) {
	type row struct {
		F *big.Float
		R big.Rat
		T textOnly
		J jsonOnly
		N big.Int
		P netip.Prefix
	}
	c := mustFor[row](t)
	for _, s := range []string{"gob(14:math/big.Float)", "gob(12:math/big.Rat)", "text(", "json(", "bigint", "marshal(16:net/netip.Prefix)"} {
		if !strings.Contains(c.layout, s) {
			t.Errorf("layout %s does not contain %s", c.layout, s)
		}
	}
}

func TestAllocationsNewTypes(t *testing.T) {
	// A Local time and a named location decode without allocating (the
	// location is cached per field).
	type row struct{ A, B, C time.Time }
	c := mustFor[row](t)
	v := row{time.Unix(1, 0), time.Unix(2, 0).In(mustLoad(t, "Europe/Berlin")), time.Unix(3, 0).In(time.FixedZone("X", 60))}
	buf := c.Append(nil, &v)
	var got row
	if err := c.Decode(buf, &got); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if err := c.Decode(buf, &got); err != nil {
			t.Fatal(err)
		}
	}); n > 0 {
		t.Errorf("Decode allocates %v times, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { buf = c.Append(buf[:0], &v) }); n != 0 {
		t.Errorf("Append allocates %v times, want 0", n)
	}
}
