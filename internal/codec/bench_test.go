package codec

import (
	"encoding/json"
	"testing"
	"time"
)

// product is the benchmark row: a typical 7-column table.
type product struct {
	ID         int64     `db:"id" json:"id"`
	SKU        string    `db:"sku" json:"sku"`
	Name       string    `db:"name" json:"name"`
	Category   string    `db:"category" json:"category"`
	PriceCents int64     `db:"price_cents" json:"price_cents"`
	Stock      int32     `db:"stock" json:"stock"`
	UpdatedAt  time.Time `db:"updated_at" json:"updated_at"`
}

func sampleProduct() product {
	return product{
		ID:         1234567,
		SKU:        "SKU-000123-XL",
		Name:       "Ergonomic Stainless Steel Water Bottle, 750 ml",
		Category:   "kitchen/drinkware",
		PriceCents: 2499,
		Stock:      42,
		UpdatedAt:  time.Date(2025, 6, 14, 9, 30, 15, 123456000, time.UTC),
	}
}

func BenchmarkDecode(b *testing.B) {
	p := sampleProduct()
	b.Run("codec", func(b *testing.B) {
		c := mustFor[product](b)
		buf := c.Append(nil, &p)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		var got product
		for b.Loop() {
			if err := c.Decode(buf, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		buf, err := json.Marshal(&p)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			var got product
			if err := json.Unmarshal(buf, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	p := sampleProduct()
	b.Run("codec", func(b *testing.B) {
		c := mustFor[product](b)
		buf := c.Append(nil, &p)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			buf = c.Append(buf[:0], &p)
		}
	})
	b.Run("json", func(b *testing.B) {
		buf, _ := json.Marshal(&p)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(&p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
