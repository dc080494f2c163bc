// Package cachekeys builds deterministic, collision-free memcached keys for
// rows of database tables.
//
// # Key format
//
// A key has the form
//
//	<namespace>:<table>:<version>:<generation>:<part1>:<part2>...
//
// namespace, table and version are validated by [New] to consist of
// [A-Za-z0-9._-] only. generation is the decimal [Builder.Generation].
// Each part is one primary-key column value (see [Part] for the canonical
// string form of typed values) and is escaped: bytes in [A-Za-z0-9._-] are
// kept, every other byte (including ':', '%', '#', space, control bytes and
// non-ASCII bytes) becomes %XX with uppercase hex digits, and the empty part
// is written as a lone "%". A key with no parts is the prefix alone,
// "<namespace>:<table>:<version>:<generation>:".
//
// If that unhashed key would be longer than [MaxKeyLen] bytes, the key is
//
//	<namespace>:<table>:<version>:<generation>:#<sha256>
//
// where <sha256> is the unpadded base64url encoding of the SHA-256 of the
// whole unhashed key. If the readable prefix is so long that the result
// would still exceed [MaxKeyLen], the prefix is cut to fit; the hash always
// covers the complete unhashed key.
//
// # Guarantees
//
//   - Every key is a legal memcached key: 1 to 250 bytes, ASCII only, no
//     byte <= 0x20 and no 0x7f (see [Valid]).
//   - Keys are deterministic: the same builder and parts give the same key
//     in every process and on every platform.
//   - Distinct (namespace, table, version, generation, parts) tuples give
//     distinct unhashed keys; the escaping is reversible, so ["a:b"],
//     ["a", "b"], ["a", ""] and ["a"] all differ. Hashed keys differ unless
//     SHA-256 collides, and a hashed key never equals an unhashed one,
//     because '#' occurs only in hashed keys.
//   - Bumping the generation with [Builder.WithGeneration] changes every key
//     of the table, making earlier entries unreachable.
package cachekeys

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"time"
)

// MaxKeyLen is memcached's key length limit in bytes.
const MaxKeyLen = 250

// maxNameLen is the limit for namespace, table and version.
const maxNameLen = 64

// hashLen is the length of "#" followed by an unpadded base64url SHA-256.
const hashLen = 1 + 43

// maxReadable is the longest readable prefix that fits before the hash.
const maxReadable = MaxKeyLen - hashLen

const upperHex = "0123456789ABCDEF"

// ErrInvalid is wrapped by every error about a bad namespace, table,
// version, key or key value. Test for it with [errors.Is].
var ErrInvalid = errors.New("cachekeys: invalid key")

// Builder builds the keys of one table. Create it with [New]; the zero
// Builder is not usable (its Key returns "", which [Valid] rejects).
// A Builder is immutable and safe for concurrent use by multiple goroutines.
type Builder struct {
	base   string // "<namespace>:<table>:<version>:"
	prefix string // base + "<generation>:"
	gen    uint64
}

// New validates namespace (e.g. "shop"), table (e.g. "products") and version
// (a schema or codec version such as "v1" or a hex fingerprint) and returns a
// Builder with generation 0. Each must be 1 to 64 bytes of [A-Za-z0-9._-];
// otherwise New returns an error wrapping [ErrInvalid] that names the field.
// New is safe for concurrent use.
func New(namespace, table, version string) (Builder, error) {
	for _, f := range [...]struct{ name, value string }{
		{"namespace", namespace},
		{"table", table},
		{"version", version},
	} {
		if err := checkName(f.name, f.value); err != nil {
			return Builder{}, err
		}
	}
	b := Builder{base: namespace + ":" + table + ":" + version + ":"}
	return b.WithGeneration(0), nil
}

func checkName(field, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, field)
	case len(s) > maxNameLen:
		return fmt.Errorf("%w: %s is %d bytes, longer than %d", ErrInvalid, field, len(s), maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !safe(s[i]) {
			return fmt.Errorf("%w: %s %q has byte %q at offset %d, want only [A-Za-z0-9._-]", ErrInvalid, field, s, s[i], i)
		}
	}
	return nil
}

// WithGeneration returns a copy of b whose keys carry generation gen.
// Bumping the generation makes every key built with an earlier generation
// unreachable, which invalidates a whole table at once. b is not modified;
// WithGeneration is safe for concurrent use.
func (b Builder) WithGeneration(gen uint64) Builder {
	b.gen = gen
	if b.base != "" {
		b.prefix = b.base + strconv.FormatUint(gen, 10) + ":"
	}
	return b
}

// Generation returns the generation carried by b's keys (0 by default).
// It is safe for concurrent use.
func (b Builder) Generation() uint64 { return b.gen }

// Key returns the key for parts, one per primary-key column in column
// order. The result is always a legal memcached key, except for the zero
// Builder, for which Key returns "". Key makes exactly one allocation (the
// result) unless the key has to be hashed. It is safe for concurrent use.
func (b Builder) Key(parts ...string) string {
	var buf [MaxKeyLen]byte
	return string(b.AppendKey(buf[:0], parts...))
}

// IntKey returns Key(strconv.FormatInt(id, 10)) with a single allocation.
// It is the fast path for tables keyed by one integer column and is safe
// for concurrent use.
func (b Builder) IntKey(id int64) string {
	if b.prefix == "" {
		return ""
	}
	var buf [MaxKeyLen]byte
	return string(AppendInt(b.AppendKey(buf[:0]), id))
}

// AppendKey appends the bytes that Key(parts...) returns to dst and returns
// the extended slice. It does not allocate when dst has enough spare
// capacity (at most MaxKeyLen bytes are appended) and the key is not
// hashed. It is safe for concurrent use as long as dst is not shared.
func (b Builder) AppendKey(dst []byte, parts ...string) []byte {
	if b.prefix == "" {
		return dst
	}
	n := len(b.prefix)
	for i, p := range parts {
		if i > 0 {
			n++
		}
		n += escapedLen(p)
	}
	if n <= MaxKeyLen {
		dst = append(dst, b.prefix...)
		for i, p := range parts {
			if i > 0 {
				dst = append(dst, ':')
			}
			dst = appendEscaped(dst, p)
		}
		return dst
	}
	sum := b.hashFull(parts)
	dst = append(dst, b.prefix[:min(len(b.prefix), maxReadable)]...)
	dst = append(dst, '#')
	return base64.RawURLEncoding.AppendEncode(dst, sum[:])
}

// hashFull returns the SHA-256 of the unhashed key without building it in
// memory at once.
func (b Builder) hashFull(parts []string) [sha256.Size]byte {
	h := sha256.New()
	var chunk [512]byte
	w := append(chunk[:0], b.prefix...)
	for i, p := range parts {
		if i > 0 {
			w = append(w, ':')
		}
		if p == "" {
			w = append(w, '%')
			continue
		}
		for j := 0; j < len(p); j++ {
			if len(w) > len(chunk)-4 {
				h.Write(w)
				w = chunk[:0]
			}
			w = appendEscapedByte(w, p[j])
		}
	}
	h.Write(w)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// AppendInt appends the canonical part for v (its decimal form, which needs
// no escaping) to dst without allocating when dst has spare capacity.
// Because a key with no parts is the bare prefix, for a single integer
// column AppendInt(b.AppendKey(dst), v) equals
// append(dst, b.Key(strconv.FormatInt(v, 10))...) and never needs hashing.
// AppendInt is safe for concurrent use as long as dst is not shared.
func AppendInt(dst []byte, v int64) []byte {
	return strconv.AppendInt(dst, v, 10)
}

// Part converts one typed key value to its canonical part string:
//
//   - string: as is
//   - signed and unsigned integers: decimal
//   - bool: "t" or "f"
//   - []byte and [16]byte (UUIDs): lowercase hex
//   - time.Time: UTC in time.RFC3339Nano
//   - named types (e.g. type ID int64, type UUID [16]byte) by the kind of
//     their underlying type, as above, even if they implement fmt.Stringer
//   - any other fmt.Stringer (except a nil pointer): its String()
//
// Anything else, including nil and floating-point numbers, gives an error
// wrapping [ErrInvalid]. Part is safe for concurrent use.
func Part(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case int:
		return strconv.FormatInt(int64(x), 10), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case int32:
		return strconv.FormatInt(int64(x), 10), nil
	case int16:
		return strconv.FormatInt(int64(x), 10), nil
	case int8:
		return strconv.FormatInt(int64(x), 10), nil
	case uint:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case uint32:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint16:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint8:
		return strconv.FormatUint(uint64(x), 10), nil
	case bool:
		return boolPart(x), nil
	case []byte:
		return hex.EncodeToString(x), nil
	case [16]byte:
		return hex.EncodeToString(x[:]), nil
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano), nil
	case nil:
		return "", fmt.Errorf("%w: nil key value", ErrInvalid)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String:
		return rv.String(), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.FormatUint(rv.Uint(), 10), nil
	case reflect.Bool:
		return boolPart(rv.Bool()), nil
	case reflect.Slice:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return hex.EncodeToString(rv.Bytes()), nil
		}
	case reflect.Array:
		if rv.Len() == 16 && rv.Type().Elem().Kind() == reflect.Uint8 {
			var u [16]byte
			for i := range u {
				u[i] = byte(rv.Index(i).Uint())
			}
			return hex.EncodeToString(u[:]), nil
		}
	}
	if s, ok := v.(fmt.Stringer); ok {
		if rv.Kind() == reflect.Pointer && rv.IsNil() {
			return "", fmt.Errorf("%w: nil %T key value", ErrInvalid, v)
		}
		return s.String(), nil
	}
	return "", fmt.Errorf("%w: unsupported key value type %T", ErrInvalid, v)
}

func boolPart(v bool) string {
	if v {
		return "t"
	}
	return "f"
}

// Valid reports whether key is a legal memcached key: 1 to MaxKeyLen bytes
// with no byte <= 0x20 (space and control characters) and no 0x7f. It
// returns nil for a legal key and otherwise an error wrapping [ErrInvalid]
// that says why. Valid is safe for concurrent use.
func Valid(key string) error {
	if key == "" {
		return fmt.Errorf("%w: key is empty", ErrInvalid)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key is %d bytes, longer than %d", ErrInvalid, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: key has byte %#02x at offset %d", ErrInvalid, c, i)
		}
	}
	return nil
}

// safe reports whether c is kept unescaped: [A-Za-z0-9._-].
func safe(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}

// escapedLen returns len(appendEscaped(nil, p)).
func escapedLen(p string) int {
	if p == "" {
		return 1
	}
	n := len(p)
	for i := 0; i < len(p); i++ {
		if !safe(p[i]) {
			n += 2
		}
	}
	return n
}

// appendEscaped appends the escaped form of part p: "%" for the empty part,
// otherwise safe bytes as is and every other byte as %XX.
func appendEscaped(dst []byte, p string) []byte {
	if p == "" {
		return append(dst, '%')
	}
	for i := 0; i < len(p); i++ {
		dst = appendEscapedByte(dst, p[i])
	}
	return dst
}

func appendEscapedByte(dst []byte, c byte) []byte {
	if safe(c) {
		return append(dst, c)
	}
	return append(dst, '%', upperHex[c>>4], upperHex[c&0xf])
}
