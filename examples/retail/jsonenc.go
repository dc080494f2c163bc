package main

import (
	"strconv"
	"sync"
	"time"
)

// The answers read most (a product, a category page, a stock row, an
// article's stock in every store) are encoded by encodeJSON methods instead
// of encoding/json's reflection: on a near-cache hit, encoding the answer
// cost more than reading it (about 130 µs against 50 µs for the 170 rows
// of stock across stores, much of it in compacting the output of
// time.Time's MarshalJSON). The bytes are those encoding/json writes
// (TestEncodeJSONIsEncodingJSON). A string that encoding/json would
// escape, or a time it refuses, fails the encoder, and writeJSON then
// uses encoding/json for the whole value.

// jsonEncoder is an answer that encodes itself with a jsonEnc.
type jsonEncoder interface {
	encodeJSON(e *jsonEnc)
}

// jsonEnc appends a JSON encoding to b; ok turns false, for good, at a
// value it leaves to encoding/json.
type jsonEnc struct {
	b  []byte
	ok bool
}

// jsonBufs holds encoding buffers, reused once written.
var jsonBufs = sync.Pool{New: func() any { return &jsonEnc{b: make([]byte, 0, 4096)} }}

func (e *jsonEnc) open()  { e.b = append(e.b, '{') }
func (e *jsonEnc) close() { e.b = append(e.b, '}') }

// key appends an object's key, after a comma unless it is the first.
func (e *jsonEnc) key(name string) {
	if e.b[len(e.b)-1] != '{' {
		e.b = append(e.b, ',')
	}
	e.b = append(e.b, '"')
	e.b = append(e.b, name...)
	e.b = append(e.b, '"', ':')
}

func (e *jsonEnc) int(name string, v int64) {
	e.key(name)
	e.b = strconv.AppendInt(e.b, v, 10)
}

// str appends s quoted if it holds nothing encoding/json would escape:
// control characters, '"', '\\', HTML's '<', '>' and '&', and anything
// outside ASCII (which it checks for valid UTF-8).
func (e *jsonEnc) str(name, s string) {
	e.key(name)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			e.ok = false
			return
		}
	}
	e.b = append(e.b, '"')
	e.b = append(e.b, s...)
	e.b = append(e.b, '"')
}

// time appends t as MarshalJSON does: AppendText is its encoding without
// the quotes, and fails where it does (a year outside 0-9999, an offset
// of 24 hours or more).
func (e *jsonEnc) time(name string, t time.Time) {
	e.key(name)
	e.b = append(e.b, '"')
	var err error
	if e.b, err = t.AppendText(e.b); err != nil {
		e.ok = false
	}
	e.b = append(e.b, '"')
}

// list appends n elements, each by elem, as an array, or null for a nil
// slice (nilSlice), as encoding/json does.
func (e *jsonEnc) list(name string, n int, nilSlice bool, elem func(i int)) {
	e.key(name)
	if nilSlice {
		e.b = append(e.b, "null"...)
		return
	}
	e.b = append(e.b, '[')
	for i := range n {
		if i > 0 {
			e.b = append(e.b, ',')
		}
		elem(i)
	}
	e.b = append(e.b, ']')
}

func (c Category) encodeJSON(e *jsonEnc) {
	e.open()
	e.int("id", c.ID)
	e.str("name", c.Name)
	e.int("version", c.Version)
	e.close()
}

func (p Product) encodeJSON(e *jsonEnc) {
	e.open()
	e.int("id", p.ID)
	e.str("article_number", p.ArticleNumber)
	e.str("name", p.Name)
	e.int("category_id", p.CategoryID)
	e.int("price_cents", p.PriceCents)
	e.time("updated_at", p.UpdatedAt)
	e.int("version", p.Version)
	e.close()
}

func (s Stock) encodeJSON(e *jsonEnc) {
	e.open()
	e.str("article_number", s.ArticleNumber)
	e.str("uom", s.UOM)
	e.str("store_code", s.StoreCode)
	e.int("quantity", int64(s.Quantity))
	e.time("updated_at", s.UpdatedAt)
	e.int("version", s.Version)
	e.close()
}

func (a stockAcross) encodeJSON(e *jsonEnc) {
	e.open()
	e.str("article_number", a.ArticleNumber)
	e.str("uom", a.UOM)
	e.int("total", a.Total)
	e.list("stores", len(a.Stores), a.Stores == nil, func(i int) { a.Stores[i].encodeJSON(e) })
	e.close()
}

func (p categoryPage) encodeJSON(e *jsonEnc) {
	e.open()
	e.key("category")
	p.Category.encodeJSON(e)
	e.list("products", len(p.Products), p.Products == nil, func(i int) { p.Products[i].encodeJSON(e) })
	e.close()
}
