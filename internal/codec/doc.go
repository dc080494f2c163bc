// Package codec is a compact binary codec for row structs: Go structs whose
// fields are the columns of a PostgreSQL row, as scanned by pgx.
//
// For compiles a Codec for one struct type once, using reflection; after
// that, Append and Decode walk a flat list of precompiled field operations
// that read and write the struct's memory directly by field offset, so the
// per-value cost is close to that of hand-written code.
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
//	                      zigzag varint zone offset in seconds
//	map[string]string     uvarint 0 for nil, else uvarint length+1, then the
//	                      key and value strings, sorted by key
//	encoding.BinaryMarshaler
//	                      uvarint length, MarshalBinary's bytes
//
// A type T whose pointer implements both encoding.BinaryMarshaler and
// encoding.BinaryUnmarshaler is encoded with those methods (and with
// encoding.BinaryAppender when available) instead of by kind, unless the
// methods are promoted from an embedded field. time.Time is always encoded as
// above.
//
// Decode accepts only the canonical encoding that Append produces: varints
// must be minimal and in range for the field's type, bools and presence bytes
// must be 0 or 1, nanoseconds must be below 1e9, map keys must be strictly
// increasing, and the input must end exactly where the value does. Anything
// else, including every truncation, fails with an error wrapping ErrCorrupt.
// Lengths are checked against the remaining input before anything is
// allocated, so a hostile length prefix cannot cause a large allocation.
//
// # Limits
//
//   - Supported: the kinds above, pointers, slices, arrays and structs of
//     them. Rejected by For, naming the field: chan, func, interface,
//     complex, uintptr, unsafe.Pointer, maps other than map[string]string,
//     recursive types, slices of types that encode to zero bytes, and
//     structs with only unexported fields (such as big.Int) that do not
//     implement encoding.BinaryMarshaler.
//   - Values are trees: pointers are followed, so two fields sharing one
//     pointer decode as two separate copies.
//   - time.Time keeps its instant and zone offset but not the zone name or
//     the monotonic clock reading; an offset of zero decodes as UTC. Compare
//     decoded times with Time.Equal.
//   - The strings of one decoded value may share a single backing
//     allocation of at most 1 KiB, so keeping any one of them keeps that
//     allocation alive. []byte fields are always separate allocations.
//   - If a MarshalBinary method fails, Append writes a deliberately
//     non-canonical length that Decode rejects, so the failure shows up as
//     a corrupt (missing) cache entry; use Encode to see the error.
//   - Decode sets the value to its zero value when it fails, so a failed
//     decode never leaves a partly decoded value behind.
package codec
