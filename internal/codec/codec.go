package codec

import (
	"errors"
	"fmt"
	"reflect"
	"unsafe"
)

// ErrCorrupt is wrapped by every decode error ("codec: corrupt value").
var ErrCorrupt = errors.New("codec: corrupt value")

// Codec encodes and decodes values of struct type T. Safe for concurrent use.
//
// A Codec is immutable once compiled; create it with For (the zero Codec is
// not usable), once per type, and share it.
type Codec[T any] struct {
	plan        *plan
	name        string // T's name, for errors
	layout      string // the description Fingerprint hashes
	fingerprint uint64
}

// For compiles a codec for T (T must be a struct type). It returns an error
// (not a panic) naming the field path and its type if a field type is
// unsupported; the package documentation lists what is.
//
// Each call compiles afresh and returns a new *Codec; callers that need one
// per type should keep it.
func For[T any]() (*Codec[T], error) {
	t := reflect.TypeFor[T]()
	pl, layout, fp, err := compileType(t)
	if err != nil {
		return nil, err
	}
	name := t.Name()
	if name == "" {
		name = "struct"
	}
	return &Codec[T]{plan: pl, name: name, layout: layout, fingerprint: fp}, nil
}

// Append appends the encoding of *v to dst and returns the extended slice.
// v must not be nil.
//
// If a field's marshaling method fails, or an interface field holds a
// value of an unsupported dynamic type, Append still returns an encoding,
// but one that Decode rejects with ErrCorrupt; use Encode to observe the
// error.
func (c *Codec[T]) Append(dst []byte, v *T) []byte {
	var e encoder
	return e.appendPlan(dst, c.plan, unsafe.Pointer(v))
}

// Encode is Append that reports the first error: one returned by a field's
// marshaling method (MarshalBinary, AppendBinary, GobEncode, MarshalText or
// MarshalJSON), or an interface field's unsupported dynamic type or
// excessive nesting. On error it returns dst unchanged.
func (c *Codec[T]) Encode(dst []byte, v *T) ([]byte, error) {
	if v == nil {
		return dst, fmt.Errorf("codec: Encode of nil *%s", c.name)
	}
	var e encoder
	out := e.appendPlan(dst, c.plan, unsafe.Pointer(v))
	if e.err != nil {
		return dst, e.err
	}
	return out, nil
}

// Decode decodes src into *v (overwriting every encoded field). Any
// malformed, truncated or over-long input (including trailing bytes) returns
// an error wrapping ErrCorrupt; it never panics and never allocates more
// than the input's size warrants. When Decode fails it sets *v to the zero
// value of T, so a failed decode never leaves a partly decoded value.
//
// Decode does not retain src: strings and byte slices are copied.
func (c *Codec[T]) Decode(src []byte, v *T) error {
	if v == nil {
		return fmt.Errorf("%w: Decode into nil *%s", ErrCorrupt, c.name)
	}
	d := decoder{buf: src}
	err := d.decodePlan(c.plan, unsafe.Pointer(v))
	if err == nil && d.pos != len(src) {
		err = fmt.Errorf("%w: %s: %d trailing bytes after the value", ErrCorrupt, c.name, len(src)-d.pos)
	}
	if err != nil {
		var zero T
		*v = zero
		return err
	}
	return nil
}

// Fingerprint is a stable 64-bit hash of T's encoded layout (field names,
// order, and kinds/types, recursively). It changes when the struct changes
// so cached bytes of an old layout are never decoded as the new one. It is
// the same across processes and runs.
//
// Named types count by kind (renaming `type Cents int64` keeps the
// fingerprint); types encoded with MarshalBinary count by package path and
// name. Fields tagged `db:"-"` and unexported fields do not count. The
// format version is part of it, so an encoding change (such as the v2
// time zones) changes every fingerprint.
func (c *Codec[T]) Fingerprint() uint64 {
	return c.fingerprint
}
