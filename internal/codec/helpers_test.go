package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"
	"time"
	"unsafe"
)

// Test types shared by the tests, the fuzz test and the benchmarks.

// Named types, which encode like their underlying kinds.
type (
	Cents int64
	Code  string
	Flag  bool
	Blob  []byte
	UUID  [16]byte
)

// point is encoded with MarshalBinary (canonical: exactly 8 bytes).
type point struct{ x, y int32 }

func (p point) MarshalBinary() ([]byte, error) {
	b := binary.LittleEndian.AppendUint32(nil, uint32(p.x))
	return binary.LittleEndian.AppendUint32(b, uint32(p.y)), nil
}

func (p *point) UnmarshalBinary(b []byte) error {
	if len(b) != 8 {
		return fmt.Errorf("point: want 8 bytes, got %d", len(b))
	}
	p.x = int32(binary.LittleEndian.Uint32(b))
	p.y = int32(binary.LittleEndian.Uint32(b[4:]))
	return nil
}

// version is encoded with AppendBinary (canonical: exactly 4 bytes).
type version struct{ major, minor uint16 }

func (v *version) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, v.major)
	return binary.BigEndian.AppendUint16(b, v.minor), nil
}

func (v *version) MarshalBinary() ([]byte, error) { return v.AppendBinary(nil) }

func (v *version) UnmarshalBinary(b []byte) error {
	if len(b) != 4 {
		return errors.New("version: want 4 bytes")
	}
	v.major, v.minor = binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:])
	return nil
}

// broken fails to marshal when bad is set, and panics on unmarshaling "!".
type broken struct{ bad bool }

func (b broken) MarshalBinary() ([]byte, error) {
	if b.bad {
		return nil, errors.New("broken: cannot marshal")
	}
	return []byte{'o', 'k'}, nil
}

func (b *broken) UnmarshalBinary(data []byte) error {
	if string(data) == "!" {
		panic("broken: bad input")
	}
	if string(data) != "ok" {
		return errors.New("broken: bad input")
	}
	return nil
}

// Inner is a nested struct.
type Inner struct {
	A int32
	B string
}

// Base is an embedded struct.
type Base struct {
	ID      int64
	Created time.Time
}

type hidden struct {
	H1 string
	H2 uint16
}

// allKinds has a field of every supported kind.
type allKinds struct {
	B   bool
	I   int
	I8  int8
	I16 int16
	I32 int32
	I64 int64
	U   uint
	U8  uint8
	U16 uint16
	U32 uint32
	U64 uint64
	F32 float32
	F64 float64
	S   string
	Bs  []byte
	Arr [16]byte
	T   time.Time

	C   Cents
	Cd  Code
	Fl  Flag
	Bl  Blob
	ID  UUID
	ID0 [0]byte

	PI  *int64
	PS  *string
	PT  *time.Time
	PP  **int32
	PB  *[]byte
	PIn *Inner

	SS   []string
	SI   []int64
	SU8  []uint16
	SF   []float64
	ST   []time.Time
	SP   []*string
	SB   [][]byte
	SIn  []Inner
	SArr [][4]int8

	AI  [3]int16
	AS  [2]string
	APt [2]*Inner

	In Inner
	M  map[string]string
	MC map[Code]Code

	Pt  point
	PPt *point
	SPt []point
	V   version
	Br  broken

	Skip       string `db:"-"`
	unexported int
}

// equalValues reports whether a and b (addressable, same type) are equal,
// comparing floats by bits, times with Equal, zone offset and location
// name, interfaces by dynamic type and value, and treating nil and non-nil
// slices and maps as different.
func equalValues(a, b reflect.Value) bool {
	if a.Type() == reflect.TypeFor[time.Time]() {
		ta := *(*time.Time)(unsafe.Pointer(a.UnsafeAddr()))
		tb := *(*time.Time)(unsafe.Pointer(b.UnsafeAddr()))
		_, oa := ta.Zone()
		_, ob := tb.Zone()
		return ta.Equal(tb) && oa == ob && ta.Location().String() == tb.Location().String()
	}
	switch a.Kind() {
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return a.Uint() == b.Uint()
	case reflect.Float32:
		return math.Float32bits(*(*float32)(unsafe.Pointer(a.UnsafeAddr()))) ==
			math.Float32bits(*(*float32)(unsafe.Pointer(b.UnsafeAddr())))
	case reflect.Float64:
		return math.Float64bits(a.Float()) == math.Float64bits(b.Float())
	case reflect.String:
		return a.String() == b.String()
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return equalValues(a.Elem(), b.Elem())
	case reflect.Slice:
		if a.IsNil() != b.IsNil() || a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !equalValues(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Array:
		for i := range a.Len() {
			if !equalValues(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.IsNil() != b.IsNil() || a.Len() != b.Len() {
			return false
		}
		for it := a.MapRange(); it.Next(); {
			bv := b.MapIndex(it.Key())
			if !bv.IsValid() || !equalValues(addressable(it.Value()), addressable(bv)) {
				return false
			}
		}
		return true
	case reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return a.Elem().Type() == b.Elem().Type() && equalValues(addressable(a.Elem()), addressable(b.Elem()))
	case reflect.Struct:
		for i := range a.NumField() {
			if !equalValues(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	}
	panic("equalValues: unhandled kind " + a.Kind().String())
}

// addressable returns an addressable copy of v.
func addressable(v reflect.Value) reflect.Value {
	c := reflect.New(v.Type()).Elem()
	c.Set(v)
	return c
}

func equal[T any](a, b *T) bool {
	return equalValues(reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem())
}

func ptr[T any](v T) *T { return &v }
