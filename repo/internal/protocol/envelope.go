package protocol

import (
	"encoding/binary"
	"hash/crc32"
)

// The cache envelope. Every value the store writes to memcached is one of
// three kinds, told apart by the item's flags:
//
//	value     a row: row version and the codec's bytes
//	absent    a tombstone or negative entry: no row (with the deleting version)
//	lease     a placeholder owned by one filler: a random token, or an
//	          empty item with flags 0 (a lease taken by mg; see memclient.Lease)
//
// Flags hold the kind in the low byte and the envelope format in the next.
// The value is [crc32c of the rest, 4 bytes][uvarint row version][payload].
// Anything else (unknown flags, a bad checksum, a short value) is corrupt and
// is treated as a miss.
type Kind uint8

// The kinds of envelope.
const (
	KindValue  Kind = 1
	KindAbsent Kind = 2
	KindLease  Kind = 3

	envelopeFormat = 1
	headerMax      = 4 + binary.MaxVarintLen64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// FlagsOf returns the item flags of an envelope of kind k.
func FlagsOf(k Kind) uint32 { return uint32(k) | envelopeFormat<<8 }

// BeginEnvelope returns a buffer holding the envelope header for version,
// ready for the payload to be appended; FinishEnvelope seals it.
func BeginEnvelope(dst []byte, version int64) []byte {
	dst = append(dst[:0], 0, 0, 0, 0)
	return binary.AppendUvarint(dst, uint64(version))
}

// FinishEnvelope seals an envelope begun by BeginEnvelope: it writes the
// checksum of everything after it.
func FinishEnvelope(b []byte) []byte {
	binary.LittleEndian.PutUint32(b, crc32.Checksum(b[4:], castagnoli))
	return b
}

// OpenEnvelope checks flags and checksum and returns the kind, the row
// version and the payload. ok is false for anything it does not recognise.
func OpenEnvelope(flags uint32, b []byte) (k Kind, version int64, payload []byte, ok bool) {
	if flags == 0 && len(b) == 0 { // the placeholder of a meta lease (see memclient.Lease)
		return KindLease, 0, nil, true
	}
	if flags>>8 != envelopeFormat || len(b) < 5 {
		return 0, 0, nil, false
	}
	k = Kind(flags & 0xff)
	if k < KindValue || k > KindLease {
		return 0, 0, nil, false
	}
	if binary.LittleEndian.Uint32(b) != crc32.Checksum(b[4:], castagnoli) {
		return 0, 0, nil, false
	}
	v, n := binary.Uvarint(b[4:])
	if n <= 0 || v > 1<<63-1 {
		return 0, 0, nil, false
	}
	return k, int64(v), b[4+n:], true
}
