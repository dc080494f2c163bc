package codec

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Tags of dynamic values, the values of interface fields.
const (
	tagNil     = 0 // nil
	tagFalse   = 1 // false
	tagTrue    = 2 // true
	tagFloat64 = 3 // float64: 8 bytes, IEEE 754 bits, little endian
	tagString  = 4 // string: uvarint length, bytes
	tagNumber  = 5 // json.Number: as a string
	tagArray   = 6 // []any: uvarint 0 for nil, else length+1, tagged values
	tagObject  = 7 // map[string]any: uvarint 0 for nil, else length+1, then sorted keys and tagged values
	tagTyped   = 8 // tagTyped+i: a value of dynTypes[i], encoded as a field of that type
)

// maxDepth bounds the nesting of dynamic values, as encoding/json does.
const maxDepth = 10000

// dynTypes are the types, beyond the JSON values above, that an interface
// field may hold: what pgx's default scan into *any gives for each type of
// column. A tag is tagTyped plus the index in this list, so only append to
// it, and bump formatVersion when changing it.
var dynTypes = []reflect.Type{
	reflect.TypeFor[int](),
	reflect.TypeFor[int8](),
	reflect.TypeFor[int16](),
	reflect.TypeFor[int32](),
	reflect.TypeFor[int64](),
	reflect.TypeFor[uint](),
	reflect.TypeFor[uint8](),
	reflect.TypeFor[uint16](),
	reflect.TypeFor[uint32](),
	reflect.TypeFor[uint64](),
	reflect.TypeFor[float32](),
	reflect.TypeFor[[]byte](),
	reflect.TypeFor[time.Time](),
	reflect.TypeFor[time.Duration](),
	reflect.TypeFor[[16]byte](),
	reflect.TypeFor[netip.Addr](),
	reflect.TypeFor[netip.Prefix](),
	reflect.TypeFor[net.HardwareAddr](),
	reflect.TypeFor[[]string](),
	reflect.TypeFor[pgtype.Numeric](),
	reflect.TypeFor[pgtype.Interval](),
	reflect.TypeFor[pgtype.Time](),
	reflect.TypeFor[pgtype.Bits](),
	reflect.TypeFor[pgtype.Point](),
	reflect.TypeFor[pgtype.Box](),
	reflect.TypeFor[pgtype.Hstore](),
	reflect.TypeFor[pgtype.Range[any]](),
	reflect.TypeFor[pgtype.Multirange[pgtype.Range[any]]](),
}

// dynTable holds the plans of dynTypes for one codec.
type dynTable struct {
	plans []*plan
	index map[reflect.Type]int
}

// appendAny appends the tagged encoding of the dynamic value v.
func (e *encoder) appendAny(b []byte, o *op, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, tagNil)
	case bool:
		if x {
			return append(b, tagTrue)
		}
		return append(b, tagFalse)
	case float64:
		return binary.LittleEndian.AppendUint64(append(b, tagFloat64), math.Float64bits(x))
	case string:
		return appendString(append(b, tagString), x)
	case json.Number:
		return appendString(append(b, tagNumber), string(x))
	case []any:
		if x == nil {
			return append(b, tagArray, 0)
		}
		if !e.enter(o) {
			return append(b, poison...)
		}
		b = appendUvarint(append(b, tagArray), uint64(len(x))+1)
		for _, y := range x {
			b = e.appendAny(b, o, y)
		}
		e.depth--
		return b
	case map[string]any:
		return e.appendObject(append(b, tagObject), o, x)
	}
	t := reflect.TypeOf(v)
	i, ok := o.dyn.index[t]
	if !ok {
		e.fail(o, fmt.Errorf("dynamic type %s is not supported", t))
		return append(b, poison...)
	}
	if !e.enter(o) {
		return append(b, poison...)
	}
	p := reflect.New(t)
	p.Elem().Set(reflect.ValueOf(v))
	b = e.appendPlan(append(b, byte(tagTyped+i)), o.dyn.plans[i], p.UnsafePointer())
	e.depth--
	return b
}

// appendObject appends a map[string]any (without its tag).
func (e *encoder) appendObject(b []byte, o *op, m map[string]any) []byte {
	if m == nil {
		return append(b, 0)
	}
	if !e.enter(o) {
		return append(b, poison...)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = appendUvarint(b, uint64(len(keys))+1)
	for _, k := range keys {
		b = e.appendAny(appendString(b, k), o, m[k])
	}
	e.depth--
	return b
}

// enter counts one more level of nesting; beyond maxDepth (a cycle, most
// likely) it fails.
func (e *encoder) enter(o *op) bool {
	if e.depth >= maxDepth {
		e.fail(o, fmt.Errorf("dynamic value nested more than %d deep", maxDepth))
		return false
	}
	e.depth++
	return true
}

// decodeAny decodes a tagged dynamic value.
func (d *decoder) decodeAny(o *op) (any, error) {
	if d.pos >= len(d.buf) {
		return nil, d.fail(o, msgShort)
	}
	tag := d.buf[d.pos]
	d.pos++
	switch tag {
	case tagNil:
		return nil, nil
	case tagFalse:
		return false, nil
	case tagTrue:
		return true, nil
	case tagFloat64:
		if len(d.buf)-d.pos < 8 {
			return nil, d.fail(o, msgShort)
		}
		f := math.Float64frombits(binary.LittleEndian.Uint64(d.buf[d.pos:]))
		d.pos += 8
		return f, nil
	case tagString, tagNumber:
		n, msg := d.length(1)
		if msg != "" {
			return nil, d.fail(o, msg)
		}
		if s := d.take(n); tag == tagNumber {
			return json.Number(s), nil
		} else {
			return s, nil
		}
	case tagArray:
		n, msg := d.optLength(1)
		if msg != "" {
			return nil, d.fail(o, msg)
		}
		if n < 0 {
			return []any(nil), nil
		}
		if d.depth++; d.depth > maxDepth {
			return nil, d.fail(o, msgDepth)
		}
		s := make([]any, 0, min(n, maxPrealloc/16))
		for range n {
			v, err := d.decodeAny(o)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		d.depth--
		return s, nil
	case tagObject:
		return d.decodeObject(o)
	}
	i := int(tag) - tagTyped
	if i >= len(o.dyn.plans) {
		return nil, d.fail(o, msgTag)
	}
	if d.depth++; d.depth > maxDepth {
		return nil, d.fail(o, msgDepth)
	}
	p := reflect.New(dynTypes[i])
	if err := d.decodePlan(o.dyn.plans[i], p.UnsafePointer()); err != nil {
		return nil, err
	}
	d.depth--
	return p.Elem().Interface(), nil
}

// decodeObject decodes a map[string]any (without its tag).
func (d *decoder) decodeObject(o *op) (map[string]any, error) {
	n, msg := d.optLength(2) // a key and a tag take at least a byte each
	if msg != "" {
		return nil, d.fail(o, msg)
	}
	if n < 0 {
		return nil, nil
	}
	if d.depth++; d.depth > maxDepth {
		return nil, d.fail(o, msgDepth)
	}
	m := make(map[string]any, min(n, maxPrealloc/64))
	var prev string
	for j := range n {
		kn, msg := d.length(1)
		if msg != "" {
			return nil, d.fail(o, msg)
		}
		k := d.take(kn)
		if j > 0 && k <= prev {
			return nil, d.fail(o, msgMapOrder)
		}
		prev = k
		v, err := d.decodeAny(o)
		if err != nil {
			return nil, err
		}
		m[k] = v
	}
	d.depth--
	return m, nil
}
