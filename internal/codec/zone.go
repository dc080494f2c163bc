package codec

import (
	"reflect"
	"sync"
	"sync/atomic"
	"time"
)

// How a time.Time's location is encoded, in the byte after its nanoseconds.
const (
	zoneUTC   = 0 // time.UTC
	zoneLocal = 1 // time.Local
	zoneFixed = 2 // then zigzag varint offset and name: time.FixedZone(name, offset)
	zoneNamed = 3 // then name: time.LoadLocation(name)
)

// zoneCacheMax bounds each map of a zoneCache; a full map is cleared.
const zoneCacheMax = 256

// zoneCache remembers, for one time field, how locations encode and what
// the encoded zones decode to, so that neither loads a location or
// allocates one per value.
type zoneCache struct {
	last atomic.Pointer[zoneEntry] // the zone decoded last

	mu      sync.Mutex
	named   map[*time.Location]bool    // encoding: whether a location is loaded by name
	decoded map[zoneKey]*time.Location // decoding; nil for a name that does not load
}

type zoneKey struct {
	kind byte
	off  int
	name string
}

type zoneEntry struct {
	zoneKey
	loc *time.Location
}

// isNamed reports whether loc is a location time.LoadLocation gives back
// by its name (and not, say, a time.FixedZone with the name of a zone).
func (z *zoneCache) isNamed(loc *time.Location) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	named, ok := z.named[loc]
	if !ok {
		name := loc.String()
		if name != "" && name != "UTC" && name != "Local" {
			l, err := time.LoadLocation(name)
			named = err == nil && reflect.DeepEqual(l, loc)
		}
		if z.named == nil || len(z.named) >= zoneCacheMax {
			z.named = make(map[*time.Location]bool)
		}
		z.named[loc] = named
	}
	return named
}

// location returns the location of a zoneFixed or zoneNamed zone, or nil if
// the named one does not load. name may alias the decoder's input.
func (z *zoneCache) location(kind byte, off int, name []byte) *time.Location {
	if e := z.last.Load(); e != nil && e.kind == kind && e.off == off && e.name == string(name) {
		return e.loc
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	k := zoneKey{kind, off, string(name)}
	loc, ok := z.decoded[k]
	if !ok {
		if kind == zoneFixed {
			loc = time.FixedZone(k.name, off)
		} else if l, err := time.LoadLocation(k.name); err == nil && l.String() == k.name && l != time.UTC && l != time.Local {
			loc = l
		}
		if z.decoded == nil || len(z.decoded) >= zoneCacheMax {
			z.decoded = make(map[zoneKey]*time.Location)
		}
		z.decoded[k] = loc
	}
	if loc != nil {
		z.last.Store(&zoneEntry{k, loc})
	}
	return loc
}
