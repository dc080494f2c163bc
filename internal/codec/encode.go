package codec

import (
	"cmp"
	"encoding"
	"encoding/binary"
	"fmt"
	"math"
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
	err error
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
			t := (*time.Time)(p)
			_, off := t.Zone()
			b = appendVarint(b, t.Unix())
			b = appendUvarint(b, uint64(t.Nanosecond()))
			b = appendVarint(b, int64(off))
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
			b = appendMap(b, reflect.NewAt(o.typ, p).Elem())
		case opMarshaler:
			b = e.appendMarshaler(b, o, p)
		}
	}
	return b
}

// appendMap appends a map[string]string (by kind) with its keys sorted, so
// that equal maps always encode to equal bytes.
func appendMap(b []byte, m reflect.Value) []byte {
	if m.IsNil() {
		return append(b, 0)
	}
	type pair struct{ k, v string }
	pairs := make([]pair, 0, m.Len())
	for it := m.MapRange(); it.Next(); {
		pairs = append(pairs, pair{it.Key().String(), it.Value().String()})
	}
	slices.SortFunc(pairs, func(x, y pair) int { return cmp.Compare(x.k, y.k) })
	b = appendUvarint(b, uint64(len(pairs))+1)
	for _, kv := range pairs {
		b = appendString(b, kv.k)
		b = appendString(b, kv.v)
	}
	return b
}

// appendMarshaler appends the length-prefixed MarshalBinary form of the
// value at p. On failure it records the error and appends poison.
func (e *encoder) appendMarshaler(b []byte, o *op, p unsafe.Pointer) []byte {
	v := reflect.NewAt(o.typ, p).Interface()
	// On failure, poison is written in place of the length: a non-minimal
	// varint, which Decode always rejects.
	poison := [2]byte{0x80, 0x00}
	if o.appender {
		start := len(b)
		out, err := v.(encoding.BinaryAppender).AppendBinary(b)
		if err == nil && len(out) < start {
			err = fmt.Errorf("AppendBinary returned %d bytes, fewer than it was given", len(out))
		}
		if err != nil {
			e.fail(o, err)
			return append(b[:start], poison[:]...)
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
	data, err := v.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		e.fail(o, err)
		return append(b, poison[:]...)
	}
	return append(appendUvarint(b, uint64(len(data))), data...)
}

func (e *encoder) fail(o *op, err error) {
	if e.err == nil {
		e.err = fmt.Errorf("codec: %s: %w", o.path, err)
	}
}
