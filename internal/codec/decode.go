package codec

import (
	"bytes"
	"encoding"
	"encoding/binary"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"time"
	"unsafe"
)

// sharedStringMax bounds the input a shared string backing may copy: when at
// most this many bytes remain at a value's first non-empty string, the rest of
// the input is copied once and all later strings are slices of that copy.
const sharedStringMax = 1024

// maxPrealloc is the most memory, in bytes, that Decode allocates for a
// slice's elements before any of them has been decoded.
const maxPrealloc = 64 << 10

// decoder reads one value from buf.
type decoder struct {
	buf []byte
	pos int

	// str, when hasStr, is a copy of buf[strBase:], which strings are
	// sliced from.
	str     string
	strBase int
	hasStr  bool

	depth int // nesting of dynamic values
}

// Error messages; short and constant so that the hot path stays small.
const (
	msgShort    = "unexpected end of input"
	msgVarint   = "malformed or non-minimal varint"
	msgRange    = "integer out of range"
	msgBool     = "bool is not 0 or 1"
	msgPresence = "presence byte is not 0 or 1"
	msgLength   = "length exceeds the remaining input"
	msgTime     = "invalid time"
	msgMapOrder = "map keys not strictly increasing"
	msgZone     = "invalid or non-canonical time zone"
	msgBigInt   = "non-canonical big.Int"
	msgTag      = "unknown dynamic value tag"
	msgDepth    = "dynamic value nested too deep"
)

// fail returns the error for a failure decoding o at the current position.
func (d *decoder) fail(o *op, msg string) error {
	return fmt.Errorf("%w: %s at byte %d: %s", ErrCorrupt, o.path, d.pos, msg)
}

// uvarint reads a minimal unsigned varint.
func (d *decoder) uvarint() (uint64, bool) {
	if b := d.buf[d.pos:]; len(b) > 0 && b[0] < 0x80 {
		d.pos++
		return uint64(b[0]), true
	}
	return d.uvarintSlow()
}

func (d *decoder) uvarintSlow() (uint64, bool) {
	buf := d.buf[d.pos:]
	var x uint64
	for i, b := range buf {
		if i == binary.MaxVarintLen64 {
			break
		}
		if b < 0x80 {
			if b == 0 && i > 0 {
				return 0, false // non-minimal
			}
			if i == binary.MaxVarintLen64-1 && b > 1 {
				return 0, false // overflows 64 bits
			}
			d.pos += i + 1
			return x | uint64(b)<<(7*i), true
		}
		x |= uint64(b&0x7f) << (7 * i)
	}
	return 0, false
}

// varint reads a minimal zigzag varint.
func (d *decoder) varint() (int64, bool) {
	u, ok := d.uvarint()
	return int64(u>>1) ^ -int64(u&1), ok
}

// length reads a length or count and checks that at least n*unit bytes
// remain.
func (d *decoder) length(unit int) (int, string) {
	n, ok := d.uvarint()
	if !ok {
		return 0, msgVarint
	}
	if n > uint64((len(d.buf)-d.pos)/unit) {
		return 0, msgLength
	}
	return int(n), ""
}

// optLength reads the length of a nil-able slice or map: 0 for nil (-1 is
// returned), else the length plus one.
func (d *decoder) optLength(unit int) (int, string) {
	m, ok := d.uvarint()
	if !ok {
		return 0, msgVarint
	}
	if m == 0 {
		return -1, ""
	}
	if m-1 > uint64((len(d.buf)-d.pos)/unit) {
		return 0, msgLength
	}
	return int(m - 1), ""
}

// take returns the next n bytes, already checked to exist, as a string.
func (d *decoder) take(n int) string {
	if n == 0 {
		return ""
	}
	start := d.pos
	d.pos += n
	if !d.hasStr {
		if len(d.buf)-start > sharedStringMax {
			return string(d.buf[start:d.pos])
		}
		d.str = string(d.buf[start:])
		d.strBase = start
		d.hasStr = true
	}
	return d.str[start-d.strBase : d.pos-d.strBase]
}

// decodePlan decodes the value at base, as described by pl.
func (d *decoder) decodePlan(pl *plan, base unsafe.Pointer) error {
	for i := range pl.ops {
		o := &pl.ops[i]
		p := unsafe.Add(base, o.off)
		switch o.kind {
		case opBool:
			if d.pos >= len(d.buf) {
				return d.fail(o, msgShort)
			}
			x := d.buf[d.pos]
			if x > 1 {
				return d.fail(o, msgBool)
			}
			d.pos++
			*(*bool)(p) = x == 1
		case opInt8:
			x, ok := d.varint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			if int64(int8(x)) != x {
				return d.fail(o, msgRange)
			}
			*(*int8)(p) = int8(x)
		case opInt16:
			x, ok := d.varint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			if int64(int16(x)) != x {
				return d.fail(o, msgRange)
			}
			*(*int16)(p) = int16(x)
		case opInt32:
			x, ok := d.varint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			if int64(int32(x)) != x {
				return d.fail(o, msgRange)
			}
			*(*int32)(p) = int32(x)
		case opInt64:
			x, ok := d.varint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			*(*int64)(p) = x
		case opUint8:
			x, ok := d.uvarint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			if x > math.MaxUint8 {
				return d.fail(o, msgRange)
			}
			*(*uint8)(p) = uint8(x)
		case opUint16:
			x, ok := d.uvarint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			if x > math.MaxUint16 {
				return d.fail(o, msgRange)
			}
			*(*uint16)(p) = uint16(x)
		case opUint32:
			x, ok := d.uvarint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			if x > math.MaxUint32 {
				return d.fail(o, msgRange)
			}
			*(*uint32)(p) = uint32(x)
		case opUint64:
			x, ok := d.uvarint()
			if !ok {
				return d.fail(o, msgVarint)
			}
			*(*uint64)(p) = x
		case opFloat32:
			if len(d.buf)-d.pos < 4 {
				return d.fail(o, msgShort)
			}
			*(*float32)(p) = math.Float32frombits(binary.LittleEndian.Uint32(d.buf[d.pos:]))
			d.pos += 4
		case opFloat64:
			if len(d.buf)-d.pos < 8 {
				return d.fail(o, msgShort)
			}
			*(*float64)(p) = math.Float64frombits(binary.LittleEndian.Uint64(d.buf[d.pos:]))
			d.pos += 8
		case opString:
			n, msg := d.length(1)
			if msg != "" {
				return d.fail(o, msg)
			}
			*(*string)(p) = d.take(n)
		case opBytes:
			n, msg := d.optLength(1)
			if msg != "" {
				return d.fail(o, msg)
			}
			if n < 0 {
				*(*[]byte)(p) = nil
				break
			}
			s := make([]byte, n)
			copy(s, d.buf[d.pos:])
			d.pos += n
			*(*[]byte)(p) = s
		case opByteArray:
			if len(d.buf)-d.pos < o.n {
				return d.fail(o, msgShort)
			}
			copy(unsafe.Slice((*byte)(p), o.n), d.buf[d.pos:])
			d.pos += o.n
		case opTime:
			if err := d.decodeTime(o, (*time.Time)(p)); err != nil {
				return err
			}
		case opPtr:
			if d.pos >= len(d.buf) {
				return d.fail(o, msgShort)
			}
			switch d.buf[d.pos] {
			case 0:
				d.pos++
				*(*unsafe.Pointer)(p) = nil
			case 1:
				d.pos++
				if len(d.buf)-d.pos < o.elem.minSize {
					return d.fail(o, msgShort)
				}
				q := reflect.New(o.typ).UnsafePointer()
				if err := d.decodePlan(o.elem, q); err != nil {
					return err
				}
				*(*unsafe.Pointer)(p) = q
			default:
				return d.fail(o, msgPresence)
			}
		case opSlice:
			n, msg := d.optLength(o.elem.minSize)
			if msg != "" {
				return d.fail(o, msg)
			}
			if n < 0 {
				*(*sliceHeader)(p) = sliceHeader{}
				break
			}
			// The length is at most the remaining input divided by the
			// element's minimum encoded size, but an element's memory may
			// be much larger than that; beyond maxPrealloc bytes, grow the
			// slice as elements actually decode.
			c := n
			if uintptr(c) > maxPrealloc/o.size {
				c = max(int(maxPrealloc/o.size), 1)
			}
			s := reflect.MakeSlice(o.typ, c, c)
			data := s.UnsafePointer()
			for j := range n {
				if j == c {
					c = min(2*c, n)
					grown := reflect.MakeSlice(o.typ, c, c)
					reflect.Copy(grown, s)
					s, data = grown, grown.UnsafePointer()
				}
				if err := d.decodePlan(o.elem, unsafe.Add(data, uintptr(j)*o.size)); err != nil {
					return err
				}
			}
			*(*sliceHeader)(p) = sliceHeader{data: data, len: n, cap: n}
		case opArray:
			for j := range o.n {
				if err := d.decodePlan(o.elem, unsafe.Add(p, uintptr(j)*o.size)); err != nil {
					return err
				}
			}
		case opMap:
			if err := d.decodeMap(o, reflect.NewAt(o.typ, p).Elem()); err != nil {
				return err
			}
		case opMarshaler:
			if err := d.decodeMarshaler(o, p); err != nil {
				return err
			}
		case opBigInt:
			if err := d.decodeBigInt(o, (*big.Int)(p)); err != nil {
				return err
			}
		case opAny:
			v, err := d.decodeAny(o)
			if err != nil {
				return err
			}
			*(*any)(p) = v
		case opObject:
			m, err := d.decodeObject(o)
			if err != nil {
				return err
			}
			*(*map[string]any)(p) = m
		}
	}
	return nil
}

func (d *decoder) decodeTime(o *op, t *time.Time) error {
	sec, ok := d.varint()
	if !ok {
		return d.fail(o, msgVarint)
	}
	nsec, ok := d.uvarint()
	if !ok {
		return d.fail(o, msgVarint)
	}
	if nsec >= 1e9 || d.pos >= len(d.buf) {
		return d.fail(o, msgTime)
	}
	kind := d.buf[d.pos]
	d.pos++
	switch kind {
	case zoneUTC:
		*t = time.Unix(sec, int64(nsec)).UTC()
		return nil
	case zoneLocal:
		*t = time.Unix(sec, int64(nsec))
		return nil
	}
	var off int64
	if kind == zoneFixed {
		if off, ok = d.varint(); !ok || int64(int(off)) != off {
			return d.fail(o, msgZone)
		}
	} else if kind != zoneNamed {
		return d.fail(o, msgZone)
	}
	n, msg := d.length(1)
	if msg != "" {
		return d.fail(o, msg)
	}
	loc := o.zone.location(kind, int(off), d.buf[d.pos:d.pos+n])
	if loc == nil {
		return d.fail(o, msgZone)
	}
	d.pos += n
	*t = time.Unix(sec, int64(nsec)).In(loc)
	return nil
}

// decodeBigInt decodes a big.Int the way pgx builds one, so that the
// result is reflect.DeepEqual to pgx's: its magnitude by SetBytes (nil for
// zero), then its sign.
func (d *decoder) decodeBigInt(o *op, x *big.Int) error {
	h, ok := d.uvarint()
	if !ok {
		return d.fail(o, msgVarint)
	}
	n := h >> 1
	if n > uint64(len(d.buf)-d.pos) {
		return d.fail(o, msgLength)
	}
	mag := d.buf[d.pos : d.pos+int(n)]
	if (n == 0 && h&1 != 0) || (n > 0 && mag[0] == 0) {
		return d.fail(o, msgBigInt)
	}
	d.pos += int(n)
	*x = big.Int{} // never reuse (and so share) the old magnitude
	x.SetBytes(mag)
	if h&1 != 0 {
		x.Neg(x)
	}
	return nil
}

// decodeMap decodes a map (by kind) into the settable m.
func (d *decoder) decodeMap(o *op, m reflect.Value) error {
	n, msg := d.optLength(o.key.minSize + o.elem.minSize)
	if msg != "" {
		return d.fail(o, msg)
	}
	if n < 0 {
		m.SetZero()
		return nil
	}
	t := o.typ
	mv := reflect.MakeMapWithSize(t, min(n, maxPrealloc/64))
	k, prev := reflect.New(t.Key()).Elem(), reflect.New(t.Key()).Elem()
	v := reflect.New(t.Elem()).Elem()
	for j := range n {
		if err := d.decodePlan(o.key, k.Addr().UnsafePointer()); err != nil {
			return err
		}
		if j > 0 && compareKeys(k, prev) <= 0 {
			return d.fail(o, msgMapOrder)
		}
		prev.Set(k)
		v.SetZero()
		if err := d.decodePlan(o.elem, v.Addr().UnsafePointer()); err != nil {
			return err
		}
		mv.SetMapIndex(k, v)
	}
	m.Set(mv)
	return nil
}

// decodeMarshaler zeroes the value at p and calls its unmarshaling method
// with the next length-prefixed bytes. The value must marshal back to the
// same bytes: Decode accepts only the encoding Append produces.
func (d *decoder) decodeMarshaler(o *op, p unsafe.Pointer) error {
	n, msg := d.length(1)
	if msg != "" {
		return d.fail(o, msg)
	}
	data := d.buf[d.pos : d.pos+n : d.pos+n]
	v := reflect.NewAt(o.typ, p)
	v.Elem().SetZero()
	if err := unmarshal(o, v.Interface(), data); err != nil {
		return fmt.Errorf("%w: %s at byte %d: %w", ErrCorrupt, o.path, d.pos, err)
	}
	d.pos += n
	return nil
}

// unmarshal calls the unmarshaling method of v and checks that v marshals
// back to data, turning a panic on malformed input into an error.
func unmarshal(o *op, v any, data []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	switch o.method {
	case methodGob:
		err = v.(gob.GobDecoder).GobDecode(data)
	case methodText:
		err = v.(encoding.TextUnmarshaler).UnmarshalText(data)
	case methodJSON:
		err = v.(json.Unmarshaler).UnmarshalJSON(data)
	default:
		err = v.(encoding.BinaryUnmarshaler).UnmarshalBinary(data)
	}
	if err != nil {
		return err
	}
	var again []byte
	if o.appender {
		again, err = v.(encoding.BinaryAppender).AppendBinary(nil)
	} else {
		again, err = marshal(o, reflect.ValueOf(v).UnsafePointer())
	}
	if err != nil || !bytes.Equal(again, data) {
		return errors.New("not the canonical encoding")
	}
	return nil
}
