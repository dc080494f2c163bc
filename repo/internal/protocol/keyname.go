package protocol

import (
	"hash/fnv"
	"strconv"

	"github.com/cachedrepo/cachedrepo/cachekeys"
)

// KeyName returns name if it is usable in a cache key as is, else a readable
// form with every other byte replaced by '_' and a hash of the real name
// appended, so distinct names never share keys.
func KeyName(name string) string {
	if _, err := cachekeys.New("x", name, "x"); err == nil {
		return name
	}
	b := []byte(name)
	if len(b) > 40 {
		b = b[:40]
	}
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			b[i] = '_'
		}
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	return string(b) + "_" + strconv.FormatUint(h.Sum64(), 36)
}
