package codec

import (
	"cmp"
	"encoding"
	"encoding/binary"
	"encoding/gob"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"slices"
	"time"
	"unsafe"
)

// sliceHeader is the memory layout of every slice type.
type sliceHeader struct {
	data unsafe.Pointer
	len  int
	cap  int
}

// encoder carries the first marshaling error of one Append.
type encoder struct {
	err   error
	depth int // nesting of dynamic values
}

func appendUvarint(b []byte, x uint64) []byte {
	if x < 0x80 {
		return append(b, byte(x))
	}
	return binary.AppendUvarint(b, x)
}

func appendVarint(b []byte, x int64) []byte {
	return appendUvarint(b, uint64(x<<1)^uint64(x>>63))
}

func appendString(b []byte, s string) []byte {
	return append(appendUvarint(b, uint64(len(s))), s...)
}

// appendPlan appends the encoding of the value at base, as described by pl.
func (e *encoder) appendPlan(b []byte, pl *plan, base unsafe.Pointer) []byte {
	for i := range pl.ops {
		o := &pl.ops[i]
		p := unsafe.Add(base, o.off)
		switch o.kind {
		case opBool:
			if *(*bool)(p) {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		case opInt8:
			b = appendVarint(b, int64(*(*int8)(p)))
		case opInt16:
			b = appendVarint(b, int64(*(*int16)(p)))
		case opInt32:
			b = appendVarint(b, int64(*(*int32)(p)))
		case opInt64:
			b = appendVarint(b, *(*int64)(p))
		case opUint8:
			b = appendUvarint(b, uint64(*(*uint8)(p)))
		case opUint16:
			b = appendUvarint(b, uint64(*(*uint16)(p)))
		case opUint32:
			b = appendUvarint(b, uint64(*(*uint32)(p)))
		case opUint64:
			b = appendUvarint(b, *(*uint64)(p))
		case opFloat32:
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(*(*float32)(p)))
		case opFloat64:
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(*(*float64)(p)))
		case opString:
			b = appendString(b, *(*string)(p))
		case opBytes:
			s := *(*[]byte)(p)
			if s == nil {
				b = append(b, 0)
			} else {
				b = appendUvarint(b, uint64(len(s))+1)
				b = append(b, s...)
			}
		case opByteArray:
			b = append(b, unsafe.Slice((*byte)(p), o.n)...)
		case opTime:
			b = appendTime(b, o.zone, (*time.Time)(p))
		case opPtr:
			q := *(*unsafe.Pointer)(p)
			if q == nil {
				b = append(b, 0)
			} else {
				b = append(b, 1)
				b = e.appendPlan(b, o.elem, q)
			}
		case opSlice:
			h := (*sliceHeader)(p)
			if h.data == nil {
				b = append(b, 0)
				break
			}
			b = appendUvarint(b, uint64(h.len)+1)
			for j := range h.len {
				b = e.appendPlan(b, o.elem, unsafe.Add(h.data, uintptr(j)*o.size))
			}
		case opArray:
			for j := range o.n {
				b = e.appendPlan(b, o.elem, unsafe.Add(p, uintptr(j)*o.size))
			}
		case opMap:
			b = e.appendMap(b, o, reflect.NewAt(o.typ, p).Elem())
		case opMarshaler:
			b = e.appendMarshaler(b, o, p)
		case opBigInt:
			b = appendBigInt(b, (*big.Int)(p))
		case opAny:
			b = e.appendAny(b, o, *(*any)(p))
		case opObject:
			b = e.appendObject(b, o, *(*map[string]any)(p))
		}
	}
	return b
}

// appendTime appends t's instant and location; see zone.go.
func appendTime(b []byte, z *zoneCache, t *time.Time) []byte {
	b = appendVarint(b, t.Unix())
	b = appendUvarint(b, uint64(t.Nanosecond()))
	switch loc := t.Location(); {
	case loc == time.UTC:
		return append(b, zoneUTC)
	case loc == time.Local:
		return append(b, zoneLocal)
	case z.isNamed(loc):
		return appendString(append(b, zoneNamed), loc.String())
	default:
		name, off := t.Zone()
		return appendString(appendVarint(append(b, zoneFixed), int64(off)), name)
	}
}

// appendBigInt appends x as uvarint(len(magnitude)<<1 | sign) and the
// magnitude's big-endian bytes, without leading zeros.
func appendBigInt(b []byte, x *big.Int) []byte {
	n := (x.BitLen() + 7) / 8
	h := uint64(n) << 1
	if x.Sign() < 0 {
		h |= 1
	}
	b = appendUvarint(b, h)
	b = slices.Grow(b, n)
	x.FillBytes(b[len(b) : len(b)+n])
	return b[:len(b)+n]
}

// appendMap appends a map with its keys sorted, so that equal maps always
// encode to equal bytes.
func (e *encoder) appendMap(b []byte, o *op, m reflect.Value) []byte {
	if m.IsNil() {
		return append(b, 0)
	}
	keys := m.MapKeys()
	slices.SortFunc(keys, compareKeys)
	b = appendUvarint(b, uint64(len(keys))+1)
	k := reflect.New(o.typ.Key()).Elem()
	v := reflect.New(o.typ.Elem()).Elem()
	for _, key := range keys {
		k.Set(key)
		v.Set(m.MapIndex(key))
		b = e.appendPlan(b, o.key, k.Addr().UnsafePointer())
		b = e.appendPlan(b, o.elem, v.Addr().UnsafePointer())
	}
	return b
}

// compareKeys orders map keys of one string, integer or bool kind.
func compareKeys(x, y reflect.Value) int {
	switch x.Kind() {
	case reflect.String:
		return cmp.Compare(x.String(), y.String())
	case reflect.Bool:
		if x.Bool() == y.Bool() {
			return 0
		} else if x.Bool() {
			return 1
		}
		return -1
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return cmp.Compare(x.Int(), y.Int())
	}
	return cmp.Compare(x.Uint(), y.Uint())
}

// poison is written in place of a value that failed to encode: a
// non-minimal varint where a length is expected, an unknown tag where a
// dynamic value is, which Decode always rejects.
var poison = []byte{0x80, 0x00}

// appendMarshaler appends the length-prefixed output of the marshaling
// method of the value at p. On failure it records the error and appends
// poison.
func (e *encoder) appendMarshaler(b []byte, o *op, p unsafe.Pointer) []byte {
	if o.appender {
		v := reflect.NewAt(o.typ, p).Interface().(encoding.BinaryAppender)
		start := len(b)
		out, err := v.AppendBinary(b)
		if err == nil && len(out) < start {
			err = fmt.Errorf("AppendBinary returned %d bytes, fewer than it was given", len(out))
		}
		if err != nil {
			e.fail(o, err)
			return append(b[:start], poison...)
		}
		// Move the appended bytes up to make room for their length.
		n := len(out) - start
		var hdr [binary.MaxVarintLen64]byte
		h := binary.PutUvarint(hdr[:], uint64(n))
		out = append(out, hdr[:h]...)
		copy(out[start+h:], out[start:start+n])
		copy(out[start:], hdr[:h])
		return out
	}
	data, err := marshal(o, p)
	if err != nil {
		e.fail(o, err)
		return append(b, poison...)
	}
	return append(appendUvarint(b, uint64(len(data))), data...)
}

// marshal calls the marshaling method of the value at p.
func marshal(o *op, p unsafe.Pointer) ([]byte, error) {
	v := reflect.NewAt(o.typ, p).Interface()
	switch o.method {
	case methodGob:
		return v.(gob.GobEncoder).GobEncode()
	case methodText:
		return v.(encoding.TextMarshaler).MarshalText()
	case methodJSON:
		return v.(json.Marshaler).MarshalJSON()
	}
	return v.(encoding.BinaryMarshaler).MarshalBinary()
}

func (e *encoder) fail(o *op, err error) {
	if e.err == nil {
		e.err = fmt.Errorf("codec: %s: %w", o.path, err)
	}
}
