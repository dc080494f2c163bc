package codec

import (
	"encoding/json"
	"math/big"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
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

// pgProduct is the benchmark row of pgx's own types: what pgx returns for
// a row with numeric, jsonb, uuid, interval, int8range, inet and
// timestamptz columns.
type pgProduct struct {
	ID        int64                     `db:"id" json:"id"`
	Price     pgtype.Numeric            `db:"price" json:"price"`
	Attrs     map[string]any            `db:"attrs" json:"attrs"`
	UUID      pgtype.UUID               `db:"uuid" json:"uuid"`
	Warranty  pgtype.Interval           `db:"warranty" json:"warranty"`
	Sizes     pgtype.Range[pgtype.Int8] `db:"sizes" json:"sizes"`
	Network   netip.Prefix              `db:"network" json:"network"`
	UpdatedAt time.Time                 `db:"updated_at" json:"updated_at"`
}

func samplePgProduct() pgProduct {
	return pgProduct{
		ID:       1234567,
		Price:    pgtype.Numeric{Int: big.NewInt(2499), Exp: -2, Valid: true},
		Attrs:    map[string]any{"color": "steel", "volume_ml": 750.0, "tags": []any{"kitchen", "outdoor"}, "dishwasher": true},
		UUID:     pgtype.UUID{Bytes: [16]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}, Valid: true},
		Warranty: pgtype.Interval{Months: 24, Valid: true},
		Sizes: pgtype.Range[pgtype.Int8]{Lower: pgtype.Int8{Int64: 1, Valid: true}, Upper: pgtype.Int8{Int64: 10, Valid: true},
			LowerType: pgtype.Inclusive, UpperType: pgtype.Exclusive, Valid: true},
		Network:   netip.MustParsePrefix("10.1.0.0/16"),
		UpdatedAt: time.Unix(1749893415, 123456000), // time.Local, as pgx gives timestamptz
	}
}

// BenchmarkDecodePgTypes is BenchmarkDecode for pgProduct.
func BenchmarkDecodePgTypes(b *testing.B) {
	p := samplePgProduct()
	b.Run("codec", func(b *testing.B) {
		c := mustFor[pgProduct](b)
		buf := c.Append(nil, &p)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		var got pgProduct
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
			var got pgProduct
			if err := json.Unmarshal(buf, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEncodePgTypes is BenchmarkEncode for pgProduct.
func BenchmarkEncodePgTypes(b *testing.B) {
	p := samplePgProduct()
	b.Run("codec", func(b *testing.B) {
		c := mustFor[pgProduct](b)
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
