package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

func mustFor[T any](t testing.TB) *Codec[T] {
	t.Helper()
	c, err := For[T]()
	if err != nil {
		t.Fatalf("For: %v", err)
	}
	return c
}

// roundTrip encodes want, decodes it into a value whose skipped and
// unexported fields hold dummy data, and checks the result and that
// re-encoding gives the same bytes.
func roundTrip[T any](t *testing.T, c *Codec[T], want *T, prefill func(*T)) {
	t.Helper()
	enc := c.Append(nil, want)
	got := new(T)
	if prefill != nil {
		prefill(got)
	}
	if err := c.Decode(enc, got); err != nil {
		t.Fatalf("Decode: %v\nencoding: %x", err, enc)
	}
	if !equal(got, want) {
		t.Errorf("round trip mismatch\n got: %+v\nwant: %+v", *got, *want)
	}
	if again := c.Append(nil, got); !bytes.Equal(again, enc) {
		t.Errorf("re-encoding differs\n got: %x\nwant: %x", again, enc)
	}
	// Appending must extend dst, not overwrite it.
	prefix := []byte("prefix")
	if out := c.Append(prefix, want); !bytes.Equal(out[:6], prefix) || !bytes.Equal(out[6:], enc) {
		t.Errorf("Append(prefix) = %x, want prefix + %x", out, enc)
	}
}

func TestRoundTripAllKinds(t *testing.T) {
	c := mustFor[allKinds](t)
	ist := time.FixedZone("IST", 5*3600+1800)
	west := time.FixedZone("", -(9*3600 + 30*60 + 7))
	tests := []struct {
		name string
		v    allKinds
	}{
		{"zero", allKinds{}},
		{"max", allKinds{
			B: true, I: math.MaxInt, I8: math.MaxInt8, I16: math.MaxInt16, I32: math.MaxInt32, I64: math.MaxInt64,
			U: math.MaxUint, U8: math.MaxUint8, U16: math.MaxUint16, U32: math.MaxUint32, U64: math.MaxUint64,
			F32: math.MaxFloat32, F64: math.MaxFloat64,
			C: math.MaxInt64, Fl: true,
			PI: ptr[int64](math.MaxInt64), PP: ptr(ptr[int32](math.MaxInt32)),
			SI: []int64{math.MaxInt64, math.MinInt64, 0, -1, 1}, SU8: []uint16{math.MaxUint16},
			AI:   [3]int16{math.MaxInt16, math.MinInt16, -1},
			SArr: [][4]int8{{math.MaxInt8, math.MinInt8, 0, -1}},
			T:    time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		}},
		{"min", allKinds{
			I: math.MinInt, I8: math.MinInt8, I16: math.MinInt16, I32: math.MinInt32, I64: math.MinInt64,
			F32: -math.MaxFloat32, F64: -math.MaxFloat64, C: math.MinInt64,
			PI: ptr[int64](math.MinInt64), PP: ptr(ptr[int32](math.MinInt32)),
			T: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		}},
		{"small", allKinds{I: -1, I8: -1, I16: 63, I32: -64, I64: 64, U: 127, U8: 128, U16: 300, U32: 1 << 21, U64: 1 << 63}},
		{"special floats", allKinds{
			F32: float32(math.NaN()), F64: math.NaN(),
			SF: []float64{math.Inf(1), math.Inf(-1), math.Copysign(0, -1), math.SmallestNonzeroFloat64, math.Float64frombits(0x7ff8000000000abc)},
		}},
		{"negative zero and infinities", allKinds{F32: float32(math.Inf(-1)), F64: math.Copysign(0, -1)}},
		{"unicode and binary strings", allKinds{
			S: "héllo, 世界 🌍", Cd: "Ω≈ç√", PS: ptr("\x00\xff invalid utf-8 \xc3\x28"),
			SS: []string{"", "a", "日本語", strings.Repeat("x", 300), "\u202e"},
			M:  map[string]string{"ключ": "значение", "": "empty key", "k": ""},
			AS: [2]string{"", "β"},
		}},
		{"bytes and arrays", allKinds{
			Bs: []byte{0, 1, 2, 255}, Bl: Blob("blob"), PB: ptr([]byte{}),
			Arr: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255},
			ID:  UUID{0xde, 0xad, 0xbe, 0xef},
			SB:  [][]byte{nil, {}, {1}, bytes.Repeat([]byte{7}, 200)},
		}},
		{"empty non-nil", allKinds{
			Bs: []byte{}, Bl: Blob{}, SS: []string{}, SI: []int64{}, SF: []float64{}, ST: []time.Time{},
			SP: []*string{}, SB: [][]byte{}, SIn: []Inner{}, SArr: [][4]int8{}, SPt: []point{},
			M: map[string]string{}, MC: map[Code]Code{}, PS: ptr(""), PI: ptr[int64](0), PIn: &Inner{},
		}},
		{"nil elements", allKinds{SP: []*string{nil, ptr("x"), nil}, APt: [2]*Inner{nil, {A: 1}}}},
		{"time zones", allKinds{
			T:  time.Date(2024, 3, 10, 2, 30, 0, 123456789, ist),
			PT: ptr(time.Date(1969, 12, 31, 23, 59, 59, 999999999, west)),
			ST: []time.Time{
				time.Unix(0, 0).UTC(),
				time.Date(2000, 1, 1, 0, 0, 0, 0, time.Local),
				time.Date(1800, 6, 1, 12, 0, 0, 5, time.FixedZone("X", 14*3600)),
				time.Date(2038, 1, 19, 3, 14, 8, 0, time.FixedZone("Y", -12*3600)),
				time.Now(), // with a monotonic reading
			},
		}},
		{"nested", allKinds{
			PIn: &Inner{A: -7, B: "in"}, In: Inner{A: math.MaxInt32, B: "nested"},
			SIn: []Inner{{}, {A: 1, B: "one"}, {A: -2, B: "two"}},
			APt: [2]*Inner{{A: 3}, {B: "b"}},
		}},
		{"marshalers", allKinds{
			Pt: point{1, -2}, PPt: &point{math.MaxInt32, math.MinInt32},
			SPt: []point{{}, {3, 4}}, V: version{1, 26},
		}},
		{"maps", allKinds{
			M:  map[string]string{"b": "2", "a": "1", "c": "3", "aa": "11"},
			MC: map[Code]Code{"x": "y"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.v
			want.Skip, want.unexported = "kept", 42
			roundTrip(t, c, &want, func(v *allKinds) { v.Skip, v.unexported = "kept", 42 })
		})
	}
}

func TestDecodeOverwrites(t *testing.T) {
	c := mustFor[allKinds](t)
	var src allKinds
	enc := c.Append(nil, &src)
	dst := allKinds{
		B: true, I: 5, S: "old", Bs: []byte("old"), PI: ptr[int64](1), SS: []string{"old"},
		M: map[string]string{"old": "old"}, In: Inner{A: 1, B: "old"}, Pt: point{1, 1},
		T: time.Now(), Skip: "kept",
	}
	if err := c.Decode(enc, &dst); err != nil {
		t.Fatal(err)
	}
	want := allKinds{Skip: "kept"}
	if !equal(&dst, &want) {
		t.Errorf("Decode did not overwrite every field: %+v", dst)
	}
}

type withEmbedded struct {
	Base   // exported embedded struct: fields flattened
	hidden // unexported embedded struct: its exported fields still count
	*Inner // embedded pointer: a nullable nested struct
	time.Time
	Name   string
	Nested struct {
		X int
		Y struct{ Z []string }
	}
}

type withEmbeddedFlat struct {
	ID      int64
	Created time.Time
	H1      string
	H2      uint16
	Inner   *Inner
	Time    time.Time
	Name    string
	Nested  struct {
		X int
		Y struct{ Z []string }
	}
}

func TestNestedAndEmbedded(t *testing.T) {
	c := mustFor[withEmbedded](t)
	now := time.Date(2025, 5, 1, 12, 0, 0, 0, time.FixedZone("", 7200))
	tests := []struct {
		name string
		v    withEmbedded
	}{
		{"zero", withEmbedded{}},
		{"full", func() withEmbedded {
			v := withEmbedded{
				Base:   Base{ID: 99, Created: now},
				hidden: hidden{H1: "h", H2: 7},
				Inner:  &Inner{A: 1, B: "x"},
				Time:   now.Add(time.Hour),
				Name:   "n",
			}
			v.Nested.X = -3
			v.Nested.Y.Z = []string{"z1", "z2"}
			return v
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roundTrip(t, c, &tt.v, nil)
		})
	}

	// Embedding encodes exactly like the equivalent named fields.
	flat := mustFor[withEmbeddedFlat](t)
	v := tests[1].v
	fv := withEmbeddedFlat{ID: v.ID, Created: v.Created, H1: v.H1, H2: v.H2, Inner: v.Inner, Time: v.Time, Name: v.Name, Nested: v.Nested}
	if got, want := c.Append(nil, &v), flat.Append(nil, &fv); !bytes.Equal(got, want) {
		t.Errorf("embedded encoding = %x, flat encoding = %x", got, want)
	}
	// The promoted time.Time methods must not turn the struct into a
	// marshaler.
	if strings.Contains(c.layout, "marshal") {
		t.Errorf("layout uses a marshaler: %s", c.layout)
	}
}

type skipped struct {
	A    int64
	Skip string `db:"-"`
	B    string `db:"b"`
	priv string
	_    int
	Dash string `db:"-,"` // not exactly "-": encoded, as in pgx
}

type notSkipped struct {
	A    int64
	B    string
	Dash string
}

func TestSkippedFields(t *testing.T) {
	c := mustFor[skipped](t)
	v := skipped{A: 1, Skip: "secret", B: "b", priv: "private", Dash: "d"}
	enc := c.Append(nil, &v)
	want := mustFor[notSkipped](t).Append(nil, &notSkipped{A: 1, B: "b", Dash: "d"})
	if !bytes.Equal(enc, want) {
		t.Errorf("encoding = %x, want %x", enc, want)
	}
	if bytes.Contains(enc, []byte("secret")) || bytes.Contains(enc, []byte("private")) {
		t.Errorf("skipped field encoded: %x", enc)
	}
	got := skipped{Skip: "untouched", priv: "untouched"}
	if err := c.Decode(enc, &got); err != nil {
		t.Fatal(err)
	}
	if wantV := (skipped{A: 1, Skip: "untouched", B: "b", priv: "untouched", Dash: "d"}); got != wantV {
		t.Errorf("got %+v, want %+v", got, wantV)
	}
}

type (
	badChan     struct{ C chan int }
	badFunc     struct{ F func() }
	badIface    struct{ I fmt.Stringer }
	badComplex  struct{ C complex128 }
	badUintptr  struct{ U uintptr }
	badUnsafe   struct{ P unsafe.Pointer }
	badMapValue struct{ M map[string]chan int }
	badMapKey   struct{ M map[float64]string }
	badNested   struct {
		In struct{ Deep []struct{ C chan bool } }
	}
	badPtr       struct{ P *func() }
	badArray     struct{ A [2]complex64 }
	opaque       struct{ x int }
	badOpaque    struct{ N *opaque }
	badEmptyElem struct{ E []struct{} }
	node         struct {
		V    int
		Next *node
	}
	tree struct{ Kids []tree }
)

func TestUnsupportedTypes(t *testing.T) {
	tests := []struct {
		name string
		For  func() error
		want []string // substrings of the error
	}{
		{"chan", func() error { _, err := For[badChan](); return err }, []string{"codec: field badChan.C: type chan int is not supported"}},
		{"func", func() error { _, err := For[badFunc](); return err }, []string{"badFunc.F", "func()"}},
		{"interface", func() error { _, err := For[badIface](); return err }, []string{"badIface.I", "interface", "fmt.Stringer"}},
		{"complex", func() error { _, err := For[badComplex](); return err }, []string{"badComplex.C", "complex128"}},
		{"uintptr", func() error { _, err := For[badUintptr](); return err }, []string{"badUintptr.U", "uintptr"}},
		{"unsafe pointer", func() error { _, err := For[badUnsafe](); return err }, []string{"badUnsafe.P", "unsafe.Pointer"}},
		{"map value", func() error { _, err := For[badMapValue](); return err }, []string{"badMapValue.M[]", "chan int"}},
		{"map key", func() error { _, err := For[badMapKey](); return err }, []string{"badMapKey.M", "float64", "key"}},
		{"nested", func() error { _, err := For[badNested](); return err }, []string{"badNested.In.Deep[].C", "chan bool"}},
		{"pointer", func() error { _, err := For[badPtr](); return err }, []string{"badPtr.P", "func()"}},
		{"array", func() error { _, err := For[badArray](); return err }, []string{"badArray.A[]", "complex64"}},
		{"only unexported fields", func() error { _, err := For[badOpaque](); return err }, []string{"badOpaque.N", "codec.opaque", "unexported", "BinaryMarshaler"}},
		{"zero-size slice element", func() error { _, err := For[badEmptyElem](); return err }, []string{"badEmptyElem.E[]", "zero bytes"}},
		{"recursive pointer", func() error { _, err := For[node](); return err }, []string{"node.Next", "recursive"}},
		{"recursive slice", func() error { _, err := For[tree](); return err }, []string{"tree.Kids[]", "recursive"}},
		{"not a struct", func() error { _, err := For[int](); return err }, []string{"int", "not a struct"}},
		{"pointer to struct", func() error { _, err := For[*Inner](); return err }, []string{"not a struct"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.For()
			if err == nil {
				t.Fatal("For succeeded, want an error")
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// sampleValues returns non-trivial values for the truncation tests.
func sampleValues() []allKinds {
	return []allKinds{
		{},
		{
			B: true, I: -12345, I8: -128, I16: 1000, I32: -70000, I64: 1 << 40, U: 1 << 33, U8: 200, U16: 60000, U32: 1 << 30, U64: math.MaxUint64,
			F32: 1.5, F64: math.Pi, S: "string", Bs: []byte("bytes"), Arr: [16]byte{1, 2, 3}, T: time.Date(2020, 2, 29, 1, 2, 3, 4, time.FixedZone("", 3600)),
			C: 12345, Cd: "code", Fl: true, Bl: Blob{9}, ID: UUID{1},
			PI: ptr[int64](7), PS: ptr("p"), PT: ptr(time.Unix(1, 2).UTC()), PP: ptr(ptr[int32](3)), PB: ptr([]byte{1}), PIn: &Inner{A: 1, B: "b"},
			SS: []string{"a", "bc"}, SI: []int64{-1, 300}, SU8: []uint16{500}, SF: []float64{1.25}, ST: []time.Time{time.Unix(5, 0).UTC()},
			SP: []*string{nil, ptr("q")}, SB: [][]byte{nil, {1}}, SIn: []Inner{{A: 2, B: "c"}}, SArr: [][4]int8{{1, -1}},
			AI: [3]int16{1, 2, 3}, AS: [2]string{"x", "y"}, APt: [2]*Inner{nil, {B: "z"}},
			In: Inner{A: 5, B: "in"}, M: map[string]string{"k1": "v1", "k2": "v2"}, MC: map[Code]Code{"a": "b"},
			Pt: point{1, 2}, PPt: &point{3, 4}, SPt: []point{{5, 6}}, V: version{7, 8},
		},
	}
}

func TestDecodeTruncated(t *testing.T) {
	c := mustFor[allKinds](t)
	pc := mustFor[product](t)
	for vi, v := range sampleValues() {
		enc := c.Append(nil, &v)
		for n := range len(enc) {
			got := sampleValues()[1]
			err := c.Decode(enc[:n:n], &got)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("value %d: Decode of %d/%d bytes: err = %v, want ErrCorrupt", vi, n, len(enc), err)
			}
			if zero := (allKinds{}); !equal(&got, &zero) {
				t.Fatalf("value %d: Decode of %d/%d bytes left a non-zero value: %+v", vi, n, len(enc), got)
			}
		}
	}
	p := sampleProduct()
	enc := pc.Append(nil, &p)
	for n := range len(enc) {
		var got product
		if err := pc.Decode(enc[:n], &got); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("product: Decode of %d/%d bytes: err = %v, want ErrCorrupt", n, len(enc), err)
		}
	}
}

func TestDecodeTrailingBytes(t *testing.T) {
	c := mustFor[allKinds](t)
	for _, v := range sampleValues() {
		enc := c.Append(nil, &v)
		for _, extra := range [][]byte{{0}, {1}, {0x80}, []byte("garbage")} {
			got := v
			err := c.Decode(append(enc[:len(enc):len(enc)], extra...), &got)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "trailing") {
				t.Errorf("Decode with %d trailing bytes: err = %v, want trailing-bytes ErrCorrupt", len(extra), err)
			}
		}
	}
}

type (
	oneString struct{ S string }
	oneBytes  struct{ B []byte }
	oneSlice  struct{ L []int64 }
	oneSSlice struct{ L []Inner }
	oneMap    struct{ M map[string]string }
	onePtr    struct{ P *[1 << 16]int64 }
	oneMarsh  struct{ P point }
	oneLarge  struct {
		L []struct {
			A   bool
			pad [8192]byte
		}
	}
)

func decodeErr[T any](t *testing.T, src []byte) error {
	t.Helper()
	c := mustFor[T](t)
	var v T
	return c.Decode(src, &v)
}

func TestDecodeHugeLength(t *testing.T) {
	huge := binary.AppendUvarint(nil, 1<<62)
	huge = append(huge, "some bytes"...)
	maxLen := binary.AppendUvarint(nil, math.MaxUint64)
	tests := []struct {
		name   string
		decode func() error
	}{
		{"string", func() error { return decodeErr[oneString](t, huge) }},
		{"bytes", func() error { return decodeErr[oneBytes](t, huge) }},
		{"bytes max", func() error { return decodeErr[oneBytes](t, maxLen) }},
		{"slice", func() error { return decodeErr[oneSlice](t, huge) }},
		{"slice max", func() error { return decodeErr[oneSlice](t, maxLen) }},
		{"struct slice", func() error { return decodeErr[oneSSlice](t, huge) }},
		{"map", func() error { return decodeErr[oneMap](t, huge) }},
		{"marshaler", func() error { return decodeErr[oneMarsh](t, huge) }},
		{"pointer to large array", func() error { return decodeErr[onePtr](t, []byte{1, 0, 0, 0}) }},
		{"slice of large elements", func() error {
			// Claims 10000 elements of 8 KiB each; the third is invalid.
			b := binary.AppendUvarint(nil, 10001)
			b = append(b, 1, 0, 2)
			return decodeErr[oneLarge](t, append(b, make([]byte, 10000)...))
		}},
		{"slice with a few bytes per element", func() error {
			// Claims 1000 strings but holds 999 bytes.
			b := binary.AppendUvarint(nil, 1001)
			return decodeErr[struct{ L []string }](t, append(b, make([]byte, 999)...))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := tt.decode()
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<10 {
				t.Errorf("decoding allocated %d bytes", alloc)
			}
		})
	}
}

func TestDecodeNonCanonical(t *testing.T) {
	type (
		oneBool  struct{ B bool }
		oneInt8  struct{ I int8 }
		oneU16   struct{ U uint16 }
		oneU64   struct{ U uint64 }
		oneInt32 struct{ I int32 }
		onePtrI  struct{ P *int64 }
		oneTime  struct{ T time.Time }
		oneF64   struct{ F float64 }
		oneBroke struct{ B broken }
	)
	tests := []struct {
		name string
		err  func() error
	}{
		{"bool 2", func() error { return decodeErr[oneBool](t, []byte{2}) }},
		{"non-minimal varint", func() error { return decodeErr[oneInt32](t, []byte{0x80, 0x00}) }},
		{"non-minimal varint 2", func() error { return decodeErr[oneInt32](t, []byte{0x81, 0x80, 0x00}) }},
		{"varint too long", func() error {
			return decodeErr[oneU64](t, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02})
		}},
		{"varint 11 bytes", func() error { return decodeErr[oneU64](t, bytes.Repeat([]byte{0x80}, 11)) }},
		{"int8 out of range", func() error { return decodeErr[oneInt8](t, binary.AppendUvarint(nil, 256)) }},
		{"int32 out of range", func() error { return decodeErr[oneInt32](t, binary.AppendVarint(nil, math.MaxInt32+1)) }},
		{"uint16 out of range", func() error { return decodeErr[oneU16](t, binary.AppendUvarint(nil, 1<<16)) }},
		{"presence 2", func() error { return decodeErr[onePtrI](t, []byte{2, 0}) }},
		{"nanoseconds 1e9", func() error { return decodeErr[oneTime](t, []byte{0, 0x80, 0x94, 0xeb, 0xdc, 0x03, 0}) }},
		{"short float", func() error { return decodeErr[oneF64](t, []byte{1, 2, 3, 4, 5, 6, 7}) }},
		{"map keys unsorted", func() error { return decodeErr[oneMap](t, []byte{3, 1, 'b', 0, 1, 'a', 0}) }},
		{"map keys duplicate", func() error { return decodeErr[oneMap](t, []byte{3, 1, 'a', 0, 1, 'a', 0}) }},
		{"marshaler error", func() error { return decodeErr[oneMarsh](t, []byte{2, 1, 2}) }},
		{"marshaler panic", func() error { return decodeErr[oneBroke](t, []byte{1, '!'}) }},
		{"empty input", func() error { return decodeErr[oneInt32](t, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.err(); !errors.Is(err, ErrCorrupt) {
				t.Errorf("err = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestDecodeNilDestination(t *testing.T) {
	c := mustFor[Inner](t)
	if err := c.Decode([]byte{0, 0}, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Decode(nil) err = %v, want ErrCorrupt", err)
	}
	if _, err := c.Encode(nil, nil); err == nil {
		t.Error("Encode(nil) succeeded")
	}
}

func TestMarshalFailure(t *testing.T) {
	type row struct {
		ID int64
		B  broken
	}
	c := mustFor[row](t)
	bad := row{ID: 1, B: broken{bad: true}}

	dst := []byte("keep")
	out, err := c.Encode(dst, &bad)
	if err == nil || !strings.Contains(err.Error(), "row.B") || !strings.Contains(err.Error(), "cannot marshal") {
		t.Errorf("Encode err = %v, want the MarshalBinary error naming row.B", err)
	}
	if string(out) != "keep" {
		t.Errorf("Encode returned %q on error, want dst unchanged", out)
	}

	enc := c.Append(nil, &bad)
	var got row
	if err := c.Decode(enc, &got); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Decode of a failed marshal: err = %v, want ErrCorrupt", err)
	}

	good := row{ID: 2}
	out, err = c.Encode(nil, &good)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, c.Append(nil, &good)) {
		t.Error("Encode and Append differ")
	}
}

func TestAppenderFailure(t *testing.T) {
	type row struct{ V failingAppender }
	c := mustFor[row](t)
	if _, err := c.Encode(nil, &row{}); err == nil {
		t.Error("Encode succeeded, want the AppendBinary error")
	}
	var got row
	if err := c.Decode(c.Append(nil, &row{}), &got); !errors.Is(err, ErrCorrupt) {
		t.Errorf("err = %v, want ErrCorrupt", err)
	}
}

type failingAppender struct{}

func (failingAppender) AppendBinary(b []byte) ([]byte, error) {
	return append(b, "partial"...), errors.New("no")
}
func (failingAppender) MarshalBinary() ([]byte, error)  { return nil, errors.New("no") }
func (*failingAppender) UnmarshalBinary(b []byte) error { return nil }

func TestStringsDoNotAliasInput(t *testing.T) {
	c := mustFor[allKinds](t)
	v := allKinds{S: "hello", Bs: []byte("bytes"), SS: []string{"a", "b"}, M: map[string]string{"k": "v"}}
	enc := c.Append(nil, &v)
	var got allKinds
	if err := c.Decode(enc, &got); err != nil {
		t.Fatal(err)
	}
	for i := range enc {
		enc[i] = 'X'
	}
	if got.S != "hello" || string(got.Bs) != "bytes" || got.SS[0] != "a" || got.SS[1] != "b" || got.M["k"] != "v" {
		t.Errorf("decoded value changed with its input: %+v", got)
	}
}

func TestLongStringsNotShared(t *testing.T) {
	type row struct{ A, B string }
	c := mustFor[row](t)
	long := strings.Repeat("l", 2*sharedStringMax)
	for _, v := range []row{{long, "short"}, {"short", long}, {long, long}} {
		var got row
		if err := c.Decode(c.Append(nil, &v), &got); err != nil {
			t.Fatal(err)
		}
		if got != v {
			t.Errorf("got %q, %q", got.A[:10], got.B[:10])
		}
	}
}

type (
	fpBase struct {
		ID   int64
		Name string
	}
	fpSame struct {
		ID   int64
		Name string
	}
	fpAdded struct {
		ID    int64
		Name  string
		Extra bool
	}
	fpRenamed struct {
		ID    int64
		Title string
	}
	fpRetyped struct {
		ID   int32
		Name string
	}
	fpRetypedBytes struct {
		ID   int64
		Name []byte
	}
	fpReordered struct {
		Name string
		ID   int64
	}
	fpSkipped struct {
		ID    int64
		Name  string
		Cache string `db:"-"`
		priv  int
	}
	fpNamedKind struct {
		ID   Cents
		Name Code
	}
	fpNullable struct {
		ID   int64
		Name *string
	}
	fpNestedA struct{ In Inner }
	fpNestedB struct {
		In struct {
			A int64
			B string
		}
	}
	fpArray3 struct{ A [3]int16 }
	fpArray4 struct{ A [4]int16 }
	fpBytes  struct{ A []byte }
	fpU8s    struct{ A []Flag }
)

func TestFingerprint(t *testing.T) {
	fp := func(f func() (uint64, error)) uint64 {
		t.Helper()
		v, err := f()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	of := func(c interface{ Fingerprint() uint64 }, err error) (uint64, error) {
		if err != nil {
			return 0, err
		}
		return c.Fingerprint(), nil
	}
	base := fp(func() (uint64, error) { return of(For[fpBase]()) })
	tests := []struct {
		name      string
		fp        uint64
		wantEqual bool
	}{
		{"same type compiled again", fp(func() (uint64, error) { return of(For[fpBase]()) }), true},
		{"identical layout", fp(func() (uint64, error) { return of(For[fpSame]()) }), true},
		{"skipped and unexported fields", fp(func() (uint64, error) { return of(For[fpSkipped]()) }), true},
		{"named types of the same kinds", fp(func() (uint64, error) { return of(For[fpNamedKind]()) }), true},
		{"field added", fp(func() (uint64, error) { return of(For[fpAdded]()) }), false},
		{"field renamed", fp(func() (uint64, error) { return of(For[fpRenamed]()) }), false},
		{"field retyped int32", fp(func() (uint64, error) { return of(For[fpRetyped]()) }), false},
		{"field retyped []byte", fp(func() (uint64, error) { return of(For[fpRetypedBytes]()) }), false},
		{"fields reordered", fp(func() (uint64, error) { return of(For[fpReordered]()) }), false},
		{"field made nullable", fp(func() (uint64, error) { return of(For[fpNullable]()) }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.fp == base; got != tt.wantEqual {
				t.Errorf("fingerprint %x vs base %x: equal = %v, want %v", tt.fp, base, got, tt.wantEqual)
			}
		})
	}

	pairs := []struct {
		name string
		a, b uint64
	}{
		{"nested field retyped", fp(func() (uint64, error) { return of(For[fpNestedA]()) }), fp(func() (uint64, error) { return of(For[fpNestedB]()) })},
		{"array length", fp(func() (uint64, error) { return of(For[fpArray3]()) }), fp(func() (uint64, error) { return of(For[fpArray4]()) })},
		{"bytes vs bool slice", fp(func() (uint64, error) { return of(For[fpBytes]()) }), fp(func() (uint64, error) { return of(For[fpU8s]()) })},
	}
	for _, p := range pairs {
		if p.a == p.b {
			t.Errorf("%s: fingerprints equal (%x)", p.name, p.a)
		}
	}
}

// TestFingerprintGolden pins the fingerprint of one type, so that it stays
// the same across runs, processes and releases. If the format changes on
// purpose, bump formatVersion and update the value.
func TestFingerprintGolden(t *testing.T) {
	c := mustFor[product](t)
	const want = 0xb6c2192398fb5438
	t.Logf("layout: %s", c.layout)
	if got := c.Fingerprint(); got != want {
		t.Errorf("Fingerprint() = %#x, want %#x", got, uint64(want))
	}
}

func TestConcurrentUse(t *testing.T) {
	c := mustFor[allKinds](t)
	values := sampleValues()
	values = append(values, allKinds{T: time.Date(2020, 1, 1, 0, 0, 0, 0, time.FixedZone("", 3600))},
		allKinds{T: time.Date(2020, 1, 1, 0, 0, 0, 0, time.FixedZone("", -7200))})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var buf []byte
			for i := range 200 {
				v := values[(g+i)%len(values)]
				buf = c.Append(buf[:0], &v)
				var got allKinds
				if err := c.Decode(buf, &got); err != nil {
					t.Error(err)
					return
				}
				if !equal(&got, &v) {
					t.Errorf("concurrent round trip mismatch")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestAllocations(t *testing.T) {
	c := mustFor[product](t)
	p := sampleProduct()
	buf := c.Append(nil, &p)
	var got product
	if n := testing.AllocsPerRun(100, func() {
		if err := c.Decode(buf, &got); err != nil {
			t.Fatal(err)
		}
	}); n > 1 {
		t.Errorf("Decode allocates %v times, want at most 1", n)
	}
	if n := testing.AllocsPerRun(100, func() { buf = c.Append(buf[:0], &p) }); n != 0 {
		t.Errorf("Append into a large enough buffer allocates %v times, want 0", n)
	}
	// A non-UTC zone is cached: no allocation beyond the strings.
	p.UpdatedAt = p.UpdatedAt.In(time.FixedZone("CEST", 7200))
	buf = c.Append(buf[:0], &p)
	if n := testing.AllocsPerRun(100, func() {
		if err := c.Decode(buf, &got); err != nil {
			t.Fatal(err)
		}
	}); n > 1 {
		t.Errorf("Decode with a zone offset allocates %v times, want at most 1", n)
	}
}

// TestDecodeSliceGrowth covers slices whose memory exceeds maxPrealloc, which
// grow while decoding.
func TestDecodeSliceGrowth(t *testing.T) {
	type elem struct {
		A   int64
		pad [4000]byte
	}
	type row struct{ L []elem }
	c := mustFor[row](t)
	for _, n := range []int{1, 16, 17, 100} {
		v := row{L: make([]elem, n)}
		for i := range v.L {
			v.L[i].A = int64(i*7 - 3)
		}
		var got row
		if err := c.Decode(c.Append(nil, &v), &got); err != nil {
			t.Fatal(err)
		}
		if len(got.L) != n || cap(got.L) != n {
			t.Fatalf("n=%d: len %d cap %d", n, len(got.L), cap(got.L))
		}
		for i := range v.L {
			if got.L[i].A != v.L[i].A {
				t.Fatalf("n=%d: element %d = %d, want %d", n, i, got.L[i].A, v.L[i].A)
			}
		}
	}
}
