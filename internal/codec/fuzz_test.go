package codec

import (
	"bytes"
	"errors"
	"testing"
	"time"
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
}

func FuzzDecode(f *testing.F) {
	c, err := For[fuzzRow]()
	if err != nil {
		f.Fatal(err)
	}
	del := time.Date(2024, 1, 2, 3, 4, 5, 6, time.FixedZone("", -3600))
	for _, v := range []fuzzRow{
		{},
		{ID: -1, Small: -128, Count: 1 << 31, OK: true, Price: -0.5, Ratio: 2, Name: "name", Data: []byte{},
			UUID: [16]byte{1}, At: time.Unix(1700000000, 5).UTC(), Deleted: &del, Note: ptr("n"), Parent: ptr[int64](9),
			Tags: []string{"a", ""}, Scores: []int32{-5, 1 << 20}, Kids: []Inner{{A: 1, B: "k"}}, Opt: []*Inner{nil, {}},
			Attrs: map[string]string{"a": "1", "b": "2"}, Pos: point{1, -1}, Ver: &version{1, 2}, Inner: Inner{A: 3, B: "emb"}},
		{Tags: []string{}, Scores: []int32{}, Attrs: map[string]string{}, Data: []byte("\x00\xff")},
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
