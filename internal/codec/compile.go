package codec

import (
	"encoding"
	"encoding/gob"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/big"
	"reflect"
	"strconv"
	"time"
)

// formatVersion is hashed into every fingerprint; bump it whenever the
// encoding of any kind changes (including the list of dynamic types).
const formatVersion = "cachedrepo/codec/v2"

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
	opMap       // any map with string, integer or bool keys, by kind
	opMarshaler // encoded with the methods named by op.method
	opBigInt    // big.Int
	opAny       // an empty interface: a tagged dynamic value
	opObject    // map[string]any: a JSON object without its tag
)

// methodKind is the pair of methods an opMarshaler encodes with.
type methodKind uint8

const (
	methodBinary methodKind = iota // encoding.BinaryMarshaler
	methodGob                      // gob.GobEncoder
	methodText                     // encoding.TextMarshaler
	methodJSON                     // json.Marshaler
)

// op encodes or decodes one value at offset off from a base pointer.
type op struct {
	kind     opKind
	method   methodKind   // opMarshaler
	appender bool         // opMarshaler: *typ implements encoding.BinaryAppender
	off      uintptr      // offset from the base pointer
	n        int          // opByteArray, opArray: array length
	size     uintptr      // opSlice, opArray: element size
	elem     *plan        // opPtr, opSlice, opArray: the element's operations; opMap: the value's
	key      *plan        // opMap: the key's operations
	typ      reflect.Type // opPtr: element type; opSlice, opMap: the type; opMarshaler: value type
	zone     *zoneCache   // opTime
	dyn      *dynTable    // opAny, opObject
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

// methods is one pair of marshaling interfaces a type may be encoded with.
type methods struct {
	kind      methodKind
	label     string // in the layout
	marshal   reflect.Type
	unmarshal reflect.Type
}

// fallbacks are the methods tried, in order, for a type the kind-based
// encoding cannot handle.
var fallbacks = []methods{
	{methodGob, "gob", reflect.TypeFor[gob.GobEncoder](), reflect.TypeFor[gob.GobDecoder]()},
	{methodText, "text", reflect.TypeFor[encoding.TextMarshaler](), reflect.TypeFor[encoding.TextUnmarshaler]()},
	{methodJSON, "json", reflect.TypeFor[json.Marshaler](), reflect.TypeFor[json.Unmarshaler]()},
}

var (
	timeType      = reflect.TypeFor[time.Time]()
	bigIntType    = reflect.TypeFor[big.Int]()
	objectType    = reflect.TypeFor[map[string]any]()
	binaryMethods = methods{methodBinary, "marshal", reflect.TypeFor[encoding.BinaryMarshaler](), reflect.TypeFor[encoding.BinaryUnmarshaler]()}
	appenderType  = reflect.TypeFor[encoding.BinaryAppender]()
)

// compiler builds a plan and the layout description that Fingerprint hashes.
type compiler struct {
	layout []byte
	active map[reflect.Type]bool // types on the current path, to reject recursion
	dyn    *dynTable             // shared by the codec's interface fields, built on first use
}

// compileType compiles the type T into a plan, returning the plan, the
// layout description and its fingerprint.
func compileType(t reflect.Type) (*plan, string, uint64, error) {
	if t.Kind() != reflect.Struct {
		return nil, "", 0, fmt.Errorf("codec: %s is not a struct type", t)
	}
	c := compiler{active: make(map[reflect.Type]bool)}
	c.write(formatVersion, " ")
	pl := new(plan)
	name := t.Name()
	if name == "" {
		name = "struct"
	}
	if err := c.compile(t, name, 0, pl); err != nil {
		return nil, "", 0, err
	}
	h := fnv.New64a()
	h.Write(c.layout)
	return pl, string(c.layout), h.Sum64(), nil
}

func (c *compiler) write(s ...string) {
	for _, x := range s {
		c.layout = append(c.layout, x...)
	}
}

// compile appends the operations for a value of type t at offset off to pl.
// When t cannot be encoded by kind, it falls back to t's gob, text or JSON
// methods, if it has them.
func (c *compiler) compile(t reflect.Type, path string, off uintptr, pl *plan) error {
	if c.active[t] {
		return fmt.Errorf("codec: field %s: recursive type %s is not supported", path, t)
	}
	c.active[t] = true
	defer delete(c.active, t)

	switch {
	case t == timeType:
		c.write("time")
		pl.add(op{kind: opTime, off: off, zone: new(zoneCache), path: path}, 3)
		return nil
	case t == bigIntType:
		c.write("bigint")
		pl.add(op{kind: opBigInt, off: off, path: path}, 1)
		return nil
	case hasMethods(t, binaryMethods):
		c.addMarshaler(t, binaryMethods, path, off, pl)
		return nil
	}
	nops, minSize, nlayout := len(pl.ops), pl.minSize, len(c.layout)
	err := c.compileKind(t, path, off, pl)
	if err == nil {
		return nil
	}
	for _, m := range fallbacks {
		if hasMethods(t, m) {
			pl.ops, pl.minSize, c.layout = pl.ops[:nops], minSize, c.layout[:nlayout]
			c.addMarshaler(t, m, path, off, pl)
			return nil
		}
	}
	return err
}

func (c *compiler) addMarshaler(t reflect.Type, m methods, path string, off uintptr, pl *plan) {
	name := t.PkgPath() + "." + t.Name()
	if t.Name() == "" {
		name = t.String()
	}
	c.write(m.label, "(", strconv.Itoa(len(name)), ":", name, ")")
	appender := m.kind == methodBinary && reflect.PointerTo(t).Implements(appenderType)
	pl.add(op{kind: opMarshaler, method: m.kind, off: off, typ: t, appender: appender, path: path}, 1)
}

func unsupported(path string, t reflect.Type) error {
	return fmt.Errorf("codec: field %s: type %s is not supported", path, t)
}

// compileKind compiles t by its kind.
func (c *compiler) compileKind(t reflect.Type, path string, off uintptr, pl *plan) error {
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
		if isByte(t.Elem()) {
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
			return fmt.Errorf("codec: field %s: slice element type %s encodes to zero bytes and is not supported", epath, t.Elem())
		}
		pl.add(op{kind: opSlice, off: off, elem: elem, typ: t, size: t.Elem().Size(), path: path}, 1)
	case reflect.Array:
		n := t.Len()
		if isByte(t.Elem()) {
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
		if t == objectType {
			c.write("object")
			pl.add(op{kind: opObject, off: off, dyn: c.dynTable(), path: path}, 1)
			return nil
		}
		switch t.Key().Kind() {
		case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		default:
			return fmt.Errorf("codec: field %s: map key type %s is not supported (use string, integer or bool keys)", path, t.Key())
		}
		c.write("map[")
		key, elem := new(plan), new(plan)
		if err := c.compile(t.Key(), path+"[key]", 0, key); err != nil {
			return err
		}
		c.write("]")
		if err := c.compile(t.Elem(), path+"[]", 0, elem); err != nil {
			return err
		}
		if len(key.ops) != 1 || key.ops[0].kind == opMarshaler {
			return fmt.Errorf("codec: field %s: map key type %s is not supported (its MarshalBinary order is not its key order)", path, t.Key())
		}
		pl.add(op{kind: opMap, off: off, key: key, elem: elem, typ: t, path: path}, 1)
	case reflect.Interface:
		if t.NumMethod() != 0 {
			return fmt.Errorf("codec: field %s: interface type %s is not supported (only any, interface{}, is)", path, t)
		}
		c.write("any")
		pl.add(op{kind: opAny, off: off, dyn: c.dynTable(), path: path}, 1)
	default:
		return unsupported(path, t)
	}
	return nil
}

// dynTable returns the codec's table of dynamic types, compiling it on first
// use.
func (c *compiler) dynTable() *dynTable {
	if c.dyn != nil {
		return c.dyn
	}
	c.dyn = &dynTable{index: make(map[reflect.Type]int, len(dynTypes))}
	// The table is not part of the layout (formatVersion covers it), and
	// its types are compiled apart from the path being compiled.
	active, layout := c.active, len(c.layout)
	c.active = make(map[reflect.Type]bool)
	for i, t := range dynTypes {
		pl := new(plan)
		if err := c.compile(t, "any("+t.String()+")", 0, pl); err != nil {
			panic(err) // the table is fixed: a failure is a bug in this package
		}
		c.dyn.plans = append(c.dyn.plans, pl)
		c.dyn.index[t] = i
	}
	c.active, c.layout = active, c.layout[:layout]
	return c.dyn
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
		return fmt.Errorf("codec: field %s: struct type %s has only unexported fields; it must implement encoding.BinaryMarshaler, gob.GobEncoder, encoding.TextMarshaler or json.Marshaler, with the matching unmarshaler", path, t)
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
func isByte(t reflect.Type) bool {
	return t.Kind() == reflect.Uint8 && !hasMethods(t, binaryMethods)
}

// hasMethods reports whether values of t can be encoded with the methods m:
// *t implements both of them, and they are not promoted from an embedded
// field (say, an embedded time.Time), which would encode only that field.
func hasMethods(t reflect.Type, m methods) bool {
	if t.Kind() == reflect.Pointer || t.Kind() == reflect.Interface {
		return false
	}
	pt := reflect.PointerTo(t)
	if !pt.Implements(m.marshal) || !pt.Implements(m.unmarshal) {
		return false
	}
	if t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.Anonymous {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if reflect.PointerTo(ft).Implements(m.marshal) || reflect.PointerTo(ft).Implements(m.unmarshal) {
				return false
			}
		}
	}
	return true
}
