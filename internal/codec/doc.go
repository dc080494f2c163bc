// Package codec is a compact binary codec for row structs: Go structs whose
// fields are the columns of a PostgreSQL row, as scanned by pgx.
//
// For compiles a Codec for one struct type once, using reflection; after
// that, Append and Decode walk a flat list of precompiled field operations
// that read and write the struct's memory directly by field offset, so the
// per-value cost is close to that of hand-written code.
//
// A value decodes reflect.DeepEqual to the value that was encoded, for
// every type pgx v5 scans into by default, so a cache hit returns what the
// miss that filled it read from the database (see Limits for the
// exceptions).
//
// # Fields
//
// A struct encodes its fields in declaration order. Exported fields are
// encoded; unexported fields are ignored, except that an embedded struct
// (exported or not, but not a pointer) contributes its fields in place, as pgx
// does when scanning. Fields tagged `db:"-"` are skipped; Decode leaves them
// untouched. Nested structs are flattened into their parent, so they cost
// nothing beyond their fields.
//
// # Types
//
// Covered, and tested against values read through pgx from PostgreSQL:
//
//   - bool, int, int8..int64, uint, uint8..uint64, float32, float64,
//     string, []byte, [N]byte, and named types of them (time.Duration,
//     `type Cents int64`, net.HardwareAddr, json.RawMessage);
//   - time.Time (timestamptz, timestamp, date), keeping its location;
//   - pointers (NULL), slices (including [][]T for multidimensional arrays
//     and named slices such as `type Tags []string`), arrays and structs
//     of covered types, such as net.IPNet and every pgtype struct:
//     pgtype.Text, Int2/4/8, Float4/8, Bool, Date, Timestamp, Timestamptz,
//     Time, UUID, Interval, Bits, Point, Box, Range[T], Multirange[T] and
//     so on;
//   - maps whose keys are strings, integers or bools, of any covered value
//     type (pgtype.Hstore is map[string]*string);
//   - big.Int (so pgtype.Numeric, including NaN and infinities);
//   - interface fields of type any (so map[string]any and []any for json
//     and jsonb), holding a JSON value (nil, bool, float64, string,
//     json.Number, []any, map[string]any) or a value of one of the types
//     pgx's default scan into *any gives: int, int8..int64, uint..uint64,
//     float32, []byte, time.Time, time.Duration, [16]byte, netip.Addr,
//     netip.Prefix, net.HardwareAddr, []string, pgtype.Numeric,
//     pgtype.Interval, pgtype.Time, pgtype.Bits, pgtype.Point, pgtype.Box,
//     pgtype.Hstore, pgtype.Range[any] and pgtype.Multirange[pgtype.Range[any]];
//   - any type T whose pointer implements encoding.BinaryMarshaler and
//     encoding.BinaryUnmarshaler (netip.Addr, netip.Prefix): encoded with
//     those methods (and with encoding.BinaryAppender when available)
//     instead of by kind, unless the methods are promoted from an embedded
//     field;
//   - as a fallback for a type that cannot be encoded by kind (a struct
//     with only unexported fields, such as big.Float and big.Rat), the
//     first pair its pointer implements, not promoted from an embedded
//     field, of gob.GobEncoder/GobDecoder, encoding.TextMarshaler/
//     TextUnmarshaler and json.Marshaler/Unmarshaler.
//
// For rejects, with an error naming the field path and its type ("codec:
// field Row.Ch: type chan int is not supported"): chan, func, complex64,
// complex128, uintptr, unsafe.Pointer, interfaces with methods, maps with
// other key types, recursive types, slices of types that encode to zero
// bytes, and structs with only unexported fields and none of the methods
// above. Give such a field `db:"-"`, change its type, or give the table
// its own codec.
//
// # Format
//
// The encoding is not self-describing: there are no field names, tags or
// counts, only the field values one after the other. Fingerprint identifies
// the layout; callers must make it part of the cache key (or otherwise store
// it) so that bytes written for one layout are never decoded as another.
// Types are matched by kind, so a named type such as `type Cents int64`
// encodes like its underlying type.
//
//	bool                  1 byte, 0 or 1
//	int, int8..int64      zigzag varint
//	uint, uint8..uint64   uvarint
//	float32, float64      4 or 8 bytes, IEEE 754 bits, little endian
//	string                uvarint length, bytes
//	[]byte                uvarint 0 for nil, else uvarint length+1, bytes
//	[N]byte               N bytes
//	[N]T                  N values of T
//	[]T                   uvarint 0 for nil, else uvarint length+1, values
//	*T                    byte 0 for nil, else byte 1 and the value of T
//	struct                its fields, as above
//	time.Time             zigzag varint Unix seconds, uvarint nanoseconds,
//	                      then a zone byte: 0 time.UTC, 1 time.Local,
//	                      2 fixed zone (zigzag varint offset in seconds,
//	                      string name), 3 named location (string name)
//	map[K]V               uvarint 0 for nil, else uvarint length+1, then
//	                      key and value pairs, sorted by key
//	big.Int               uvarint (magnitude length<<1 | 1 if negative),
//	                      then the magnitude, big-endian, no leading zeros
//	any                   a tag byte and the value: 0 nil, 1 false,
//	                      2 true, 3 float64 (8 bytes), 4 string,
//	                      5 json.Number (as a string), 6 []any (as []T,
//	                      of tagged values), 7 map[string]any (as a map,
//	                      of tagged values), 8+i a value of the i-th
//	                      dynamic type above (encoded as a field of it)
//	map[string]any        as any's tag 7, without the tag
//	marshaler types       uvarint length, the method's bytes
//
// Decode accepts only the canonical encoding that Append produces: varints
// must be minimal and in range for the field's type, bools and presence bytes
// must be 0 or 1, nanoseconds must be below 1e9, map keys must be strictly
// increasing, big.Int magnitudes have no leading zero and zero is not
// negative, a value encoded by a method must marshal back to the same
// bytes, and the input must end exactly where the value does. Anything
// else, including every truncation, fails with an error wrapping
// ErrCorrupt. Lengths are checked against the remaining input before
// anything is allocated, so a hostile length prefix cannot cause a large
// allocation; dynamic values nest at most 10000 deep.
//
// # Time zones
//
// A time.Time decodes with the location it had: time.UTC (a time whose
// location is nil, as Time.UTC gives) and time.Local come back
// pointer-identical, so the pgx values for timestamp and date (UTC) and
// timestamptz (Local) compare reflect.DeepEqual. A location that
// time.LoadLocation gives back by its name (as "Europe/Berlin") is encoded
// by name and loaded again by name; a time.FixedZone keeps its name and
// offset. Each time field of a codec caches the locations it has seen (at
// most 256 of each kind), so neither Append nor Decode loads or allocates
// a location per value. A location that cannot be loaded by its name (from
// time.LoadLocationFromTZData, say) decodes as the fixed zone in effect at
// the instant: the same instant, offset and zone name, but not the same
// rules. A location loaded by name compares reflect.DeepEqual after a round
// trip unless the two loads straddle one of its offset changes (time
// caches the zone of the moment of loading).
//
// # Limits
//
//   - Values are trees: pointers are followed, so two fields sharing one
//     pointer decode as two separate copies.
//   - The monotonic clock reading of a time.Time is dropped (as by
//     Time.Round(0)); pgx never returns one, but a time.Now() value does
//     not compare reflect.DeepEqual after a round trip (Time.Equal does).
//   - A zero big.Int decodes with a nil magnitude, as big.NewInt(0) and
//     pgx build it; one with an empty non-nil magnitude (from
//     SetBytes([]byte{0}), say) is equal by Cmp but not reflect.DeepEqual.
//   - A float NaN decodes with the same bits but, being NaN, is never
//     reflect.DeepEqual to itself.
//   - An interface field holding a dynamic type not listed above (or a
//     cycle) fails to encode: Encode returns the error, Append writes a
//     deliberately corrupt value. A fallback through encoding/json would
//     give back map[string]any or float64 rather than the original type,
//     so there is none.
//   - The strings of one decoded value may share a single backing
//     allocation of at most 1 KiB, so keeping any one of them keeps that
//     allocation alive. []byte fields are always separate allocations.
//   - If a marshaling method fails, Append writes a deliberately
//     non-canonical length (an unknown tag, for an interface field) that
//     Decode rejects, so the failure shows up as a corrupt (missing) cache
//     entry; use Encode to see the error.
//   - Decode sets the value to its zero value when it fails, so a failed
//     decode never leaves a partly decoded value behind.
package codec
