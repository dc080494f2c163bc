package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/big"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// fuzzRow is a representative row with every kind of field.
type fuzzRow struct {
	ID      int64
	Small   int8
	Count   uint32
	OK      bool
	Price   float64
	Ratio   float32
	Name    string
	Data    []byte
	UUID    [16]byte
	At      time.Time
	Deleted *time.Time
	Note    *string
	Parent  *int64
	Tags    []string
	Scores  []int32
	Kids    []Inner
	Opt     []*Inner
	Attrs   map[string]string
	Pos     point
	Ver     *version
	Inner
	Cache string `db:"-"`

	// pgx's types and the fallbacks.
	Num    pgtype.Numeric
	JSON   map[string]any
	Any    any
	Iv     pgtype.Interval
	Range  pgtype.Range[pgtype.Timestamptz]
	Prefix netip.Prefix
	Local  time.Time
	Hs     pgtype.Hstore
	MI     map[int16][]byte
	BigF   *big.Float
	Txt    textOnly
	Js     jsonOnly
}

func FuzzDecode(f *testing.F) {
	c, err := For[fuzzRow]()
	if err != nil {
		f.Fatal(err)
	}
	del := time.Date(2024, 1, 2, 3, 4, 5, 6, time.FixedZone("", -3600))
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		f.Fatal(err)
	}
	for _, v := range []fuzzRow{
		{},
		{ID: -1, Small: -128, Count: 1 << 31, OK: true, Price: -0.5, Ratio: 2, Name: "name", Data: []byte{},
			UUID: [16]byte{1}, At: time.Unix(1700000000, 5).UTC(), Deleted: &del, Note: ptr("n"), Parent: ptr[int64](9),
			Tags: []string{"a", ""}, Scores: []int32{-5, 1 << 20}, Kids: []Inner{{A: 1, B: "k"}}, Opt: []*Inner{nil, {}},
			Attrs: map[string]string{"a": "1", "b": "2"}, Pos: point{1, -1}, Ver: &version{1, 2}, Inner: Inner{A: 3, B: "emb"}},
		{Tags: []string{}, Scores: []int32{}, Attrs: map[string]string{}, Data: []byte("\x00\xff")},
		{
			At:   time.Date(2024, 3, 31, 2, 30, 0, 0, berlin),
			Num:  pgtype.Numeric{Int: big.NewInt(-150), Exp: -2, Valid: true},
			JSON: map[string]any{"a": []any{1.0, "x", nil, true, false}, "b": map[string]any{"c": json.Number("1.5")}},
			Any:  []any{int64(1), pgtype.Numeric{NaN: true, Valid: true}, time.Unix(1, 2), [16]byte{1}, netip.MustParseAddr("::1")},
			Iv:   pgtype.Interval{Microseconds: -1, Days: 2, Months: 3, Valid: true},
			Range: pgtype.Range[pgtype.Timestamptz]{Lower: pgtype.Timestamptz{Time: time.Unix(0, 0), Valid: true},
				LowerType: pgtype.Inclusive, UpperType: pgtype.Unbounded, Valid: true},
			Prefix: netip.MustParsePrefix("10.0.0.0/8"), Local: time.Unix(1718357415, 123456000),
			Hs: pgtype.Hstore{"k": ptr("v"), "n": nil}, MI: map[int16][]byte{-1: nil, 7: {1}},
			BigF: big.NewFloat(1.5), Txt: textOnly{"t"}, Js: jsonOnly{12},
		},
		{Num: pgtype.Numeric{InfinityModifier: pgtype.NegativeInfinity, Valid: true}, JSON: map[string]any{}, Any: "s",
			Deleted: ptr(time.Unix(5, 0).In(time.FixedZone("EST", -5*3600))), BigF: new(big.Float), MI: map[int16][]byte{}},
	} {
		f.Add(c.Append(nil, &v))
	}
	f.Add([]byte{})
	f.Add([]byte{0x80, 0x00})
	f.Add(bytes.Repeat([]byte{0xff}, 64))

	f.Fuzz(func(t *testing.T, src []byte) {
		var v fuzzRow
		if err := c.Decode(src, &v); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			if zero := (fuzzRow{}); !equal(&v, &zero) {
				t.Fatalf("failed Decode left a non-zero value: %+v", v)
			}
			return
		}
		// Decode accepts only canonical encodings, so re-encoding must give
		// back the input, and decoding that an equal value.
		enc := c.Append(nil, &v)
		if !bytes.Equal(enc, src) {
			t.Fatalf("re-encoding differs from the accepted input\n  in: %x\n out: %x", src, enc)
		}
		var again fuzzRow
		if err := c.Decode(enc, &again); err != nil {
			t.Fatalf("decoding a re-encoded value: %v", err)
		}
		if !equal(&again, &v) {
			t.Fatalf("decode(encode(v)) != v\n got: %+v\nwant: %+v", again, v)
		}
	})
}

// FuzzRoundTrip builds rows of pgx's types from random parts and checks
// that each encodes without error and decodes to an equal value that
// re-encodes to the same bytes.
func FuzzRoundTrip(f *testing.F) {
	c, err := For[pgRow]()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(int64(0), 0.0, "", []byte(nil))
	f.Add(int64(-150), 1.5, "Europe/Berlin", []byte{1, 2, 3})
	f.Add(int64(1<<40), -0.0, "k\x00\xff", []byte("\x00\x00\x01"))
	f.Fuzz(func(t *testing.T, n int64, x float64, s string, raw []byte) {
		mag := new(big.Int).SetBytes(raw)
		if mag.Sign() == 0 {
			mag = big.NewInt(0) // as pgx builds zero: see the package doc
		}
		if n < 0 {
			mag.Neg(mag)
		}
		loc := time.FixedZone(s, int(n%86400))
		if l, err := time.LoadLocation(s); err == nil {
			loc = l
		}
		at := time.Unix(n, int64(uint64(n)%1e9))
		dyn := []any{nil, x, s, n, int32(n), float32(x), raw, at, at.In(loc), json.Number(s),
			pgtype.Numeric{Int: mag, Exp: int32(n), Valid: true}, netip.AddrFrom16([16]byte(append(raw[:len(raw):len(raw)], make([]byte, 16)...)))}
		v := pgRow{
			I64: n, F64: x, Str: s, Bytes: raw, Tz: at, Ts: at.In(loc), PT: &at,
			Num:    pgtype.Numeric{Int: mag, Exp: int32(n >> 32), Valid: n%3 != 0, NaN: n%5 == 0},
			BigI:   *mag,
			JSON:   map[string]any{s: x, "n": []any{s, x, map[string]any{s: nil}}, "d": dyn[uint64(n)%uint64(len(dyn))]},
			Arr:    dyn,
			Any:    dyn[uint64(len(raw))%uint64(len(dyn))],
			Hstore: pgtype.Hstore{s: &s, s + "x": nil},
			MI:     map[int]string{int(n): s, int(n) + 1: ""},
			RTz:    pgtype.Range[pgtype.Timestamptz]{Lower: pgtype.Timestamptz{Time: at.In(loc), Valid: true}, Valid: true},
			Txt:    textOnly{s},
			Js:     jsonOnly{int(int32(n))},
			SS:     []string{s, s},
			Raw:    raw,
		}
		enc, err := c.Encode(nil, &v)
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		var got pgRow
		if err := c.Decode(enc, &got); err != nil {
			t.Fatalf("Decode: %v\n%x", err, enc)
		}
		if !equal(&got, &v) {
			t.Fatalf("decode(encode(v)) != v\n got: %+v\nwant: %+v", got, v)
		}
		if again := c.Append(nil, &got); !bytes.Equal(again, enc) {
			t.Fatalf("re-encoding differs\n got: %x\nwant: %x", again, enc)
		}
	})
}
