package memclient

import (
	"cmp"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/bradfitz/gomemcache/memcache"
)

// Server is one memcached server of a Ketama ring.
type Server struct {
	// Addr is "host:port", or the path of a Unix socket (any address
	// containing "/").
	Addr string

	// Weight scales the server's share of the keys. 0 means 1.
	Weight int

	// Name is what the ring hashes to place the server's points. "" means
	// twemproxy's default, the name of a server its configuration does not
	// name: Addr without ":11211" when the port is 11211 (libmemcached's
	// name too), else Addr; for a Unix socket, the path followed by ":"
	// (libmemcached uses "path:0"). A name keeps the server's keys in place
	// when it moves to another address.
	Name string
}

// name returns the name the ring hashes for s.
func (s Server) name() string {
	if s.Name != "" {
		return s.Name
	}
	if isUnixAddr(s.Addr) {
		return s.Addr + ":"
	}
	if i := strings.LastIndexByte(s.Addr, ':'); i >= 0 {
		if port, err := strconv.Atoi(s.Addr[i+1:]); err == nil && port == 11211 {
			return s.Addr[:i]
		}
	}
	return s.Addr
}

// weight returns the weight of s, 1 for 0.
func (s Server) weight() int { return max(s.Weight, 1) }

// isUnixAddr reports whether addr is a Unix socket path, as gomemcache's
// ServerList decides it.
func isUnixAddr(addr string) bool { return strings.Contains(addr, "/") }

// Ketama is a memcache.ServerSelector that places keys on a ketama
// consistent-hash ring, as twemproxy does with "distribution: ketama" and
// "hash: md5", and as libmemcached does with weighted ketama
// (MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED: MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA
// with MD5 keys): a client using it and such a proxy or client over the same
// servers put every key on the same server.
//
// Each server gets floor(w/W·160/4·n)·4 points (w its weight, W the total
// weight, n the number of servers, computed in float32 as those libraries
// do), four from each md5 digest of "<name>-<i>" (i from 0, each point the
// little-endian uint32 of 4 digest bytes). A key goes to the first point at
// or after the first 4 bytes of its md5, read the same way, wrapping around
// to the first point; the empty key hashes to 0. A server whose share of the
// weight is under 1/(40·n) gets no points, and so no keys, as in twemproxy.
//
// Adding a server to n moves about 1/(n+1) of the keys, all to the new
// server; removing one moves only the keys it held. Create it with
// NewKetama; it is immutable, so safe for concurrent use, and PickServer
// allocates nothing. The zero Ketama has no servers.
type Ketama struct {
	servers []Server
	addrs   []net.Addr // resolved, in the order of servers
	points  []uint32   // the ring, sorted
	owners  []int32    // owners[i] indexes addrs: the server of points[i]
}

// pointsPerServer is twemproxy's and libmemcached's number of points per
// server at the average weight.
const pointsPerServer = 160

// NewKetama returns the ring over servers. It resolves their addresses once,
// here, as gomemcache's ServerList does. It fails for no servers, a negative
// weight, an address that does not resolve, or two servers with the same
// address or name.
func NewKetama(servers []Server) (*Ketama, error) {
	if len(servers) == 0 {
		return nil, errors.New("memclient: a ketama ring needs at least one server")
	}
	k := &Ketama{servers: slices.Clone(servers), addrs: make([]net.Addr, len(servers))}
	byAddr := make(map[net.Addr]string, len(servers))
	byName := make(map[string]string, len(servers))
	total := 0
	for i, s := range servers {
		if s.Weight < 0 {
			return nil, fmt.Errorf("memclient: server %q has a negative weight (%d)", s.Addr, s.Weight)
		}
		addr, err := resolveAddr(s.Addr)
		if err != nil {
			return nil, fmt.Errorf("memclient: server %q does not resolve: %w", s.Addr, err)
		}
		if prev, dup := byAddr[addr]; dup {
			return nil, fmt.Errorf("memclient: servers %q and %q have the same address %s", prev, s.Addr, addr)
		}
		if prev, dup := byName[s.name()]; dup {
			return nil, fmt.Errorf("memclient: servers %q and %q have the same name %q", prev, s.Addr, s.name())
		}
		byAddr[addr], byName[s.name()] = s.Addr, s.Addr
		k.addrs[i] = addr
		total += s.weight()
	}
	k.build(total)
	return k, nil
}

// point is a point of the ring while it is built.
type point struct {
	value uint32
	owner int32
}

// build places the points of every server on the ring.
func (k *Ketama) build(totalWeight int) {
	n := float32(len(k.servers))
	var ring []point
	var buf []byte
	for i, s := range k.servers {
		// The float32 steps of twemproxy's ketama_update, each rounded
		// (the conversions keep the compiler from fusing them).
		pct := float32(s.weight()) / float32(totalWeight)
		share := float32(float32(float32(pct*pointsPerServer)/4) * n)
		count := int(math.Floor(float64(float32(float64(share) + 0.0000000001))))
		for j := range count {
			buf = strconv.AppendInt(append(append(buf[:0], s.name()...), '-'), int64(j), 10)
			digest := md5.Sum(buf)
			for x := 0; x < len(digest); x += 4 {
				ring = append(ring, point{binary.LittleEndian.Uint32(digest[x:]), int32(i)})
			}
		}
	}
	// Equal values are ordered by server, as libmemcached does.
	slices.SortFunc(ring, func(a, b point) int {
		return cmp.Or(cmp.Compare(a.value, b.value), cmp.Compare(a.owner, b.owner))
	})
	k.points = make([]uint32, len(ring))
	k.owners = make([]int32, len(ring))
	for i, p := range ring {
		k.points[i], k.owners[i] = p.value, p.owner
	}
}

// PickServer returns the server of key. It fails with memcache.ErrNoServers
// only on the zero Ketama.
func (k *Ketama) PickServer(key string) (net.Addr, error) {
	if len(k.points) == 0 {
		return nil, memcache.ErrNoServers
	}
	if len(k.addrs) == 1 {
		return k.addrs[0], nil // no need to hash
	}
	i, _ := slices.BinarySearch(k.points, keyHash(key))
	if i == len(k.points) {
		i = 0
	}
	return k.addrs[k.owners[i]], nil
}

// keyHash is the position of key on the ring: twemproxy's hash_md5 (the
// first 4 bytes of the key's md5, little-endian), 0 for the empty key.
func keyHash(key string) uint32 {
	if key == "" {
		return 0
	}
	var buf [250]byte // memcached's longest key: longer ones allocate
	digest := md5.Sum(append(buf[:0], key...))
	return binary.LittleEndian.Uint32(digest[:4])
}

// Each calls f on every server, in the order NewKetama was given them,
// stopping at the first error, which it returns.
func (k *Ketama) Each(f func(net.Addr) error) error {
	for _, addr := range k.addrs {
		if err := f(addr); err != nil {
			return err
		}
	}
	return nil
}

// Servers returns a copy of the servers the ring was made of, as given to
// NewKetama.
func (k *Ketama) Servers() []Server { return slices.Clone(k.servers) }

// ParseServers parses a comma-separated list of servers in twemproxy's
// notation: each "host:port", "host:port:weight" or a Unix socket path
// ("/path" or "/path:weight"), optionally followed by a space and a name,
// e.g. "10.0.0.1:11211:2 a,10.0.0.2:11211". A weight, when given, is a
// positive integer. The addresses are not resolved (NewKetama does that).
func ParseServers(spec string) ([]Server, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, errors.New("memclient: no servers in an empty list")
	}
	var servers []Server
	for entry := range strings.SplitSeq(spec, ",") {
		s, err := parseServer(entry)
		if err != nil {
			return nil, err
		}
		servers = append(servers, s)
	}
	return servers, nil
}

// parseServer parses one entry of ParseServers.
func parseServer(entry string) (Server, error) {
	addr, name, _ := strings.Cut(strings.TrimSpace(entry), " ")
	name = strings.TrimSpace(name)
	if addr == "" {
		return Server{}, fmt.Errorf("memclient: empty server in %q", entry)
	}
	if strings.ContainsAny(name, " \t") {
		return Server{}, fmt.Errorf("memclient: server %q: a name has no spaces", entry)
	}
	s := Server{Addr: addr, Name: name}
	weight, hasWeight := "", false
	if isUnixAddr(addr) {
		if i := strings.LastIndexByte(addr, ':'); i >= 0 {
			s.Addr, weight, hasWeight = addr[:i], addr[i+1:], true
		}
	} else if _, _, err := net.SplitHostPort(addr); err != nil {
		i := strings.LastIndexByte(addr, ':')
		if i < 0 {
			return Server{}, fmt.Errorf("memclient: server %q: want host:port or host:port:weight", entry)
		}
		s.Addr, weight, hasWeight = addr[:i], addr[i+1:], true
		if _, _, err := net.SplitHostPort(s.Addr); err != nil {
			return Server{}, fmt.Errorf("memclient: server %q: want host:port or host:port:weight", entry)
		}
	}
	if hasWeight {
		w, err := strconv.Atoi(weight)
		if err != nil || w <= 0 {
			return Server{}, fmt.Errorf("memclient: server %q: the weight %q is not a positive integer", entry, weight)
		}
		s.Weight = w
	}
	return s, nil
}

// newKetamaOf returns the ring over addrs, each in the notation of one
// entry of ParseServers.
func newKetamaOf(addrs []string) (*Ketama, error) {
	servers := make([]Server, len(addrs))
	for i, a := range addrs {
		s, err := parseServer(a)
		if err != nil {
			return nil, err
		}
		servers[i] = s
	}
	return NewKetama(servers)
}

// resolveAddr resolves addr once, to a net.Addr whose methods allocate
// nothing.
func resolveAddr(addr string) (net.Addr, error) {
	if isUnixAddr(addr) {
		a, err := net.ResolveUnixAddr("unix", addr)
		if err != nil {
			return nil, err
		}
		return staticAddr{network: a.Network(), str: a.String()}, nil
	}
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	return staticAddr{network: a.Network(), str: a.String()}, nil
}

// staticAddr is a resolved address that keeps its strings, so that the
// client's pools can key on it without allocating.
type staticAddr struct{ network, str string }

// Network returns "tcp" or "unix".
func (a staticAddr) Network() string { return a.network }

// String returns the resolved address.
func (a staticAddr) String() string { return a.str }
