package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestEncodeJSONIsEncodingJSON: writeJSON's answer for the hand-encoded
// types is byte for byte encoding/json's, both where the encoder writes it
// (plain strings, times in any zone) and where it leaves it to
// encoding/json (strings it would escape, times it refuses).
func TestEncodeJSONIsEncodingJSON(t *testing.T) {
	india := time.FixedZone("IST", 5*3600+1800)
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		ny = time.FixedZone("EST", -5*3600)
	}
	at := time.Date(2026, 12, 2, 8, 30, 15, 123456789, time.UTC)
	times := []time.Time{
		at, at.In(india), at.In(ny), at.Truncate(time.Second), {}, time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	}
	plain := []string{"", "A-100", "EA", "S001", "Kaffee 500 g", "x y_z.~!#$%'()*+,-./:;=?@[]^`{|}"}
	escaped := []string{`a"b`, `a\b`, "a<b", "a>b", "a&b", "tab\there", "nl\n", "\x00", "\x7f", "Müsli", "\u2028", "\xff\xfe", "日本"}

	type tc struct {
		name string
		v    any
		fast bool // the hand encoder writes it
	}
	var cases []tc
	stock := func(s string, tm time.Time) Stock { return Stock{s, "EA", "S" + s, -7, tm, 1 << 40} }
	product := func(s string, tm time.Time) Product { return Product{42, s, s + " name", 3, 1999, tm, 9} }
	for _, s := range plain {
		for _, tm := range times {
			cases = append(cases,
				tc{"stock " + s, stock(s, tm), true},
				tc{"product " + s, product(s, tm), true})
		}
		cases = append(cases, tc{"category " + s, Category{1, s, 2}, true})
	}
	for _, s := range escaped {
		cases = append(cases,
			tc{"stock " + s, stock(s, at), false},
			tc{"product " + s, product(s, at), false},
			tc{"category " + s, Category{1, s, 2}, false},
			tc{"across " + s, stockAcross{"A", "EA", 1, []Stock{stock("1", at), stock(s, at)}}, false},
			tc{"page " + s, categoryPage{Category{1, "c", 2}, []Product{product("1", at), product(s, at)}}, false})
	}
	for _, tm := range []time.Time{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 24*3600))} {
		cases = append(cases, tc{"stock at " + tm.String(), stock("1", tm), false}, tc{"product at " + tm.String(), product("1", tm), false})
	}
	var many []Stock
	for i := range 170 {
		many = append(many, stock(plain[i%len(plain)], times[i%len(times)]))
	}
	cases = append(cases,
		tc{"across nil", stockAcross{"A", "EA", 0, nil}, true},
		tc{"across empty", stockAcross{"A", "EA", 0, []Stock{}}, true},
		tc{"across 170", stockAcross{"A-1", "EA", 12345, many}, true},
		tc{"page nil", categoryPage{Category{1, "c", 2}, nil}, true},
		tc{"page empty", categoryPage{Category{1, "c", 2}, []Product{}}, true},
		tc{"page", categoryPage{Category{1, "c", 2}, []Product{product("1", at), product("2", times[2])}}, true})

	for _, c := range cases {
		e := &jsonEnc{ok: true}
		c.v.(jsonEncoder).encodeJSON(e)
		if e.ok != c.fast {
			t.Errorf("%s: encoder ok=%v, want %v", c.name, e.ok, c.fast)
		}
		want, err := json.Marshal(c.v)
		wantCode := http.StatusOK
		if err != nil {
			want, wantCode = []byte(`{"error":"internal error"}`), http.StatusInternalServerError
		}
		if e.ok && !bytes.Equal(e.b, want) {
			t.Errorf("%s: encoder wrote\n%s\nencoding/json\n%s", c.name, e.b, want)
		}
		rec := httptest.NewRecorder()
		writeJSON(rec, http.StatusOK, c.v)
		if got := rec.Body.Bytes(); rec.Code != wantCode || !bytes.Equal(got, append(want, '\n')) {
			t.Errorf("%s: writeJSON answered %d\n%s\nwant %d\n%s", c.name, rec.Code, got, wantCode, want)
		}
	}
}
