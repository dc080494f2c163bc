package codec

import (
	"encoding"
	"fmt"
	"hash/fnv"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// formatVersion is hashed into every fingerprint; bump it whenever the
// encoding of any kind changes.
const formatVersion = "cachedrepo/codec/v1"

// opKind is the operation a field compiles to.
type opKind uint8

const (
	opBool opKind = iota
	opInt8
	opInt16
	opInt32
	opInt64
	opUint8
	opUint16
	opUint32
	opUint64
	opFloat32
	opFloat64
	opString
	opBytes     // slice of a uint8 kind
	opByteArray // array of a uint8 kind
	opTime
	opPtr
	opSlice
	opArray
	opMap // map[string]string, by kind
	opMarshaler
)

// op encodes or decodes one value at offset off from a base pointer.
type op struct {
	kind     opKind
	appender bool         // opMarshaler: *typ implements encoding.BinaryAppender
	off      uintptr      // offset from the base pointer
	n        int          // opByteArray, opArray: array length
	size     uintptr      // opSlice, opArray: element size
	elem     *plan        // opPtr, opSlice, opArray: the element's operations
	typ      reflect.Type // opPtr: element type; opSlice, opMap: the type; opMarshaler: value type
	zone     *zoneCache   // opTime
	path     string       // field path, for errors
}

// plan is the flattened list of operations for one type, relative to a
// pointer to a value of that type.
type plan struct {
	ops     []op
	minSize int // the fewest bytes any value of the type encodes to
}

func (p *plan) add(o op, minSize int) {
	p.ops = append(p.ops, o)
	p.minSize += minSize
}

// zoneCache remembers the last fixed zone a time field decoded, so that
// values written in one non-UTC zone do not allocate a *time.Location each.
type zoneCache struct {
	last atomic.Pointer[zoneEntry]
}

type zoneEntry struct {
	off int
	loc *time.Location
}

func (z *zoneCache) location(off int) *time.Location {
	if e := z.last.Load(); e != nil && e.off == off {
		return e.loc
	}
	loc := time.FixedZone("", off)
	z.last.Store(&zoneEntry{off: off, loc: loc})
	return loc
}

// compiler builds a plan and the layout description that Fingerprint hashes.
type compiler struct {
	layout strings.Builder
	active map[reflect.Type]bool // types on the current path, to reject recursion

	timeType, marshalerType, unmarshalerType, appenderType reflect.Type
}

// compileType compiles the type T into a plan, returning the plan, the
// layout description and its fingerprint.
func compileType(t reflect.Type) (*plan, string, uint64, error) {
	if t.Kind() != reflect.Struct {
		return nil, "", 0, fmt.Errorf("codec: %s is not a struct type", t)
	}
	c := compiler{
		active:          make(map[reflect.Type]bool),
		timeType:        reflect.TypeFor[time.Time](),
		marshalerType:   reflect.TypeFor[encoding.BinaryMarshaler](),
		unmarshalerType: reflect.TypeFor[encoding.BinaryUnmarshaler](),
		appenderType:    reflect.TypeFor[encoding.BinaryAppender](),
	}
	c.layout.WriteString(formatVersion)
	c.layout.WriteByte(' ')
	pl := new(plan)
	name := t.Name()
	if name == "" {
		name = "struct"
	}
	if err := c.compile(t, name, 0, pl); err != nil {
		return nil, "", 0, err
	}
	layout := c.layout.String()
	h := fnv.New64a()
	h.Write([]byte(layout))
	return pl, layout, h.Sum64(), nil
}

func (c *compiler) write(s ...string) {
	for _, x := range s {
		c.layout.WriteString(x)
	}
}

// compile appends the operations for a value of type t at offset off to pl.
func (c *compiler) compile(t reflect.Type, path string, off uintptr, pl *plan) error {
	if c.active[t] {
		return fmt.Errorf("codec: %s: recursive type %s is not supported", path, t)
	}
	c.active[t] = true
	defer delete(c.active, t)

	if t == c.timeType {
		c.write("time")
		pl.add(op{kind: opTime, off: off, zone: new(zoneCache), path: path}, 3)
		return nil
	}
	if c.isMarshaler(t) {
		name := t.PkgPath() + "." + t.Name()
		if t.Name() == "" {
			name = t.String()
		}
		c.write("marshal(", strconv.Itoa(len(name)), ":", name, ")")
		pt := reflect.PointerTo(t)
		pl.add(op{kind: opMarshaler, off: off, typ: t, appender: pt.Implements(c.appenderType), path: path}, 1)
		return nil
	}

	switch k := t.Kind(); k {
	case reflect.Bool:
		c.write("bool")
		pl.add(op{kind: opBool, off: off, path: path}, 1)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		c.write(k.String())
		pl.add(op{kind: bySize(t, opInt8, opInt16, opInt32, opInt64), off: off, path: path}, 1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		c.write(k.String())
		pl.add(op{kind: bySize(t, opUint8, opUint16, opUint32, opUint64), off: off, path: path}, 1)
	case reflect.Float32:
		c.write("float32")
		pl.add(op{kind: opFloat32, off: off, path: path}, 4)
	case reflect.Float64:
		c.write("float64")
		pl.add(op{kind: opFloat64, off: off, path: path}, 8)
	case reflect.String:
		c.write("string")
		pl.add(op{kind: opString, off: off, path: path}, 1)
	case reflect.Struct:
		return c.compileStruct(t, path, off, pl)
	case reflect.Pointer:
		c.write("*")
		elem := new(plan)
		if err := c.compile(t.Elem(), path, 0, elem); err != nil {
			return err
		}
		pl.add(op{kind: opPtr, off: off, elem: elem, typ: t.Elem(), path: path}, 1)
	case reflect.Slice:
		if c.isByte(t.Elem()) {
			c.write("bytes")
			pl.add(op{kind: opBytes, off: off, path: path}, 1)
			return nil
		}
		c.write("[]")
		elem := new(plan)
		epath := path + "[]"
		if err := c.compile(t.Elem(), epath, 0, elem); err != nil {
			return err
		}
		if elem.minSize == 0 {
			return fmt.Errorf("codec: %s: slice element type %s encodes to zero bytes and is not supported", epath, t.Elem())
		}
		pl.add(op{kind: opSlice, off: off, elem: elem, typ: t, size: t.Elem().Size(), path: path}, 1)
	case reflect.Array:
		n := t.Len()
		if c.isByte(t.Elem()) {
			c.write("bytes[", strconv.Itoa(n), "]")
			if n > 0 {
				pl.add(op{kind: opByteArray, off: off, n: n, path: path}, n)
			}
			return nil
		}
		c.write("[", strconv.Itoa(n), "]")
		elem := new(plan)
		if err := c.compile(t.Elem(), path+"[]", 0, elem); err != nil {
			return err
		}
		if n > 0 && len(elem.ops) > 0 {
			pl.add(op{kind: opArray, off: off, n: n, elem: elem, size: t.Elem().Size(), path: path}, n*elem.minSize)
		}
	case reflect.Map:
		if t.Key().Kind() != reflect.String || t.Elem().Kind() != reflect.String {
			return fmt.Errorf("codec: %s: unsupported map type %s (only map[string]string is supported)", path, t)
		}
		c.write("map[string]string")
		pl.add(op{kind: opMap, off: off, typ: t, path: path}, 1)
	default:
		return fmt.Errorf("codec: %s: unsupported type %s (kind %s)", path, t, k)
	}
	return nil
}

// compileStruct compiles the fields of a struct, flattening them into pl.
func (c *compiler) compileStruct(t reflect.Type, path string, off uintptr, pl *plan) error {
	c.write("struct{")
	encoded, hidden := 0, 0
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, ok := f.Tag.Lookup("db"); ok && tag == "-" {
			continue
		}
		// Embedded structs contribute their fields even when the embedded
		// type is unexported, as with pgx.RowToStructByName.
		embedded := f.Anonymous && f.Type.Kind() == reflect.Struct
		if !f.IsExported() && !embedded {
			if f.Name != "_" {
				hidden++
			}
			continue
		}
		c.write(f.Name, " ")
		if err := c.compile(f.Type, path+"."+f.Name, off+f.Offset, pl); err != nil {
			return err
		}
		c.write(";")
		encoded++
	}
	c.write("}")
	if encoded == 0 && hidden > 0 {
		return fmt.Errorf("codec: %s: struct type %s has only unexported fields; it must implement encoding.BinaryMarshaler and encoding.BinaryUnmarshaler", path, t)
	}
	return nil
}

// bySize picks the operation for an integer type of t's size.
func bySize(t reflect.Type, k8, k16, k32, k64 opKind) opKind {
	switch t.Size() {
	case 1:
		return k8
	case 2:
		return k16
	case 4:
		return k32
	}
	return k64
}

// isByte reports whether t is encoded as a raw byte inside []T and [N]T.
func (c *compiler) isByte(t reflect.Type) bool {
	return t.Kind() == reflect.Uint8 && !c.isMarshaler(t)
}

// isMarshaler reports whether values of t are encoded with their
// MarshalBinary and UnmarshalBinary methods.
func (c *compiler) isMarshaler(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer || t.Kind() == reflect.Interface {
		return false
	}
	pt := reflect.PointerTo(t)
	if !pt.Implements(c.marshalerType) || !pt.Implements(c.unmarshalerType) {
		return false
	}
	if t.Kind() == reflect.Struct {
		// Methods promoted from an embedded field (say, an embedded
		// time.Time) would encode only that field; use the fields instead.
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.Anonymous {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if reflect.PointerTo(ft).Implements(c.marshalerType) || reflect.PointerTo(ft).Implements(c.unmarshalerType) {
				return false
			}
		}
	}
	return true
}
