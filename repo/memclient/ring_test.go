package memclient_test

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// The Ketama ring: placement checked against a real nutcracker (twemproxy)
// in front of real memcached servers, and its movement when servers come
// and go.

// ringKeys is how many keys each placement test places.
const ringKeys = 10_000

// ringKey is the i-th key of a test, under prefix.
func ringKey(prefix string, i int) string { return prefix + "key-" + strconv.Itoa(i) }

// pinned is where nutcracker put a few keys of the "named" run of
// TestKetamaAgreesWithNutcracker (servers named a, b, c with weights 1, 2, 3),
// so that a regression shows without nutcracker: key -> server name.
var pinned = map[string]string{
	"named:key-0":  "c",
	"named:key-1":  "b",
	"named:key-3":  "c",
	"named:key-4":  "b",
	"named:key-12": "a",
	"named:key-15": "a",
	"named:key-18": "a",
}

// ringOf returns the ring over servers, failing t on an error.
func ringOf(t testing.TB, servers ...memclient.Server) *memclient.Ketama {
	t.Helper()
	k, err := memclient.NewKetama(servers)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// owner returns the address of the server of key.
func owner(t testing.TB, sel memcache.ServerSelector, key string) string {
	t.Helper()
	addr, err := sel.PickServer(key)
	if err != nil {
		t.Fatal(err)
	}
	return addr.String()
}

// loopback returns n servers on loopback ports from 21001 on, with weight
// 1, not started: placement needs only their resolved addresses.
func loopback(n int) []memclient.Server {
	servers := make([]memclient.Server, n)
	for i := range servers {
		servers[i].Addr = "127.0.0.1:" + strconv.Itoa(21001+i)
	}
	return servers
}

func TestKetamaAgreesWithNutcracker(t *testing.T) {
	nodes := []*repotest.MemcachedProcess{repotest.StartMemcached(t), repotest.StartMemcached(t), repotest.StartMemcached(t)}
	direct := make(map[string]*memcache.Client) // node address -> client
	for _, n := range nodes {
		direct[n.Addr()] = memcache.New(n.Addr())
		direct[n.Addr()].Timeout = 5 * time.Second
	}
	runs := []struct {
		name    string
		weights []int
		names   []string
	}{
		{"equal", []int{1, 1, 1}, nil},
		{"weighted", []int{1, 2, 4}, nil}, // 17.14, 34.29 and 68.57 digests: the floor counts
		{"named", []int{1, 2, 3}, []string{"a", "b", "c"}},
	}
	agree, total := 0, 0
	for _, run := range runs {
		t.Run(run.name, func(t *testing.T) {
			specs := make([]string, len(nodes))
			addrOf := make(map[string]string) // name -> node address
			for i, n := range nodes {
				specs[i] = n.Addr() + ":" + strconv.Itoa(run.weights[i])
				if run.names != nil {
					specs[i] += " " + run.names[i]
					addrOf[run.names[i]] = n.Addr()
				}
			}
			servers, err := memclient.ParseServers(strings.Join(specs, ","))
			if err != nil {
				t.Fatal(err)
			}
			ring := ringOf(t, servers...)
			proxy := memcache.New(repotest.StartNutcracker(t, specs...).Addr())
			proxy.Timeout = 5 * time.Second

			prefix := run.name + ":"
			for i := range ringKeys {
				key := ringKey(prefix, i)
				if err := proxy.Set(&memcache.Item{Key: key, Value: []byte(key)}); err != nil {
					t.Fatalf("set %s through nutcracker: %v", key, err)
				}
			}
			byNode := make(map[string][]string)
			for i := range ringKeys {
				key := ringKey(prefix, i)
				addr := owner(t, ring, key)
				byNode[addr] = append(byNode[addr], key)
			}
			found, missing := 0, []string(nil)
			for addr, keys := range byNode {
				for chunk := range slices.Chunk(keys, 100) {
					items, err := direct[addr].GetMulti(chunk)
					if err != nil {
						t.Fatalf("get from %s: %v", addr, err)
					}
					for _, key := range chunk {
						if it := items[key]; it != nil && string(it.Value) == key {
							found++
						} else {
							missing = append(missing, key+" (not on "+addr+")")
						}
					}
				}
			}
			agree += found
			total += ringKeys
			if found != ringKeys {
				t.Errorf("%d of %d keys are where the ring puts them; missing: %v", found, ringKeys, missing[:min(5, len(missing))])
			}
			if run.names != nil {
				for key, name := range pinned {
					if _, err := direct[addrOf[name]].Get(key); err != nil {
						t.Errorf("pinned %s: not on %s, where nutcracker was to put it: %v", key, name, err)
					}
				}
			}
		})
	}
	testenv.Summaryf("ketama: nutcracker_agree=%d/%d\n", agree, total)
	if agree != total {
		t.Errorf("nutcracker and the ring disagree on %d of %d keys", total-agree, total)
	}
}

// moved returns the fraction of keys whose server differs between a and b,
// and checks each moved key with ok(key, from, to).
func moved(t *testing.T, a, b memcache.ServerSelector, ok func(key, from, to string)) float64 {
	t.Helper()
	n := 0
	for i := range ringKeys {
		key := ringKey("", i)
		from, to := owner(t, a, key), owner(t, b, key)
		if from != to {
			n++
			ok(key, from, to)
		}
	}
	return float64(n) / ringKeys
}

func TestKetamaMovesOnlyItsShare(t *testing.T) {
	four := loopback(4)
	ring3, ring4 := ringOf(t, four[:3]...), ringOf(t, four...)

	added := four[3].Addr
	up := moved(t, ring3, ring4, func(key, from, to string) {
		if to != added {
			t.Errorf("%s moved from %s to %s, not to the new server %s", key, from, to, added)
		}
	})
	testenv.Summaryf("ring: servers=3->4 moved=%.3f\n", up)
	if up > 0.30 {
		t.Errorf("adding a 4th server moved %.3f of the keys, want at most 0.30", up)
	}

	removed := four[1].Addr
	without := ringOf(t, four[0], four[2], four[3])
	down := moved(t, ring4, without, func(key, from, to string) {
		if from != removed {
			t.Errorf("%s moved from %s to %s, but %s was removed", key, from, to, removed)
		}
	})
	held := 0
	for i := range ringKeys {
		if owner(t, ring4, ringKey("", i)) == removed {
			held++
		}
	}
	testenv.Summaryf("ring: servers=4->3 moved=%.3f\n", down)
	if want := float64(held) / ringKeys; down != want {
		t.Errorf("removing %s moved %.3f of the keys, want exactly its own %.3f", removed, down, want)
	}

	var list3, list4 memcache.ServerList
	if err := list3.SetServers(four[0].Addr, four[1].Addr, four[2].Addr); err != nil {
		t.Fatal(err)
	}
	if err := list4.SetServers(four[0].Addr, four[1].Addr, four[2].Addr, four[3].Addr); err != nil {
		t.Fatal(err)
	}
	baseline := moved(t, &list3, &list4, func(string, string, string) {})
	t.Logf("gomemcache ServerList (crc32 mod n): servers=3->4 moved=%.3f", baseline)
}

func TestKetamaWeights(t *testing.T) {
	servers := loopback(3)
	servers[1].Weight = 2
	ring := ringOf(t, servers...)
	count := make(map[string]int)
	for i := range 3 * ringKeys {
		count[owner(t, ring, ringKey("", i))]++
	}
	one := float64(count[servers[0].Addr]+count[servers[2].Addr]) / 2
	ratio := float64(count[servers[1].Addr]) / one
	t.Logf("keys per server: %v; weight 2 over weight 1: %.2f", count, ratio)
	if ratio < 1.6 || ratio > 2.4 {
		t.Errorf("the weight-2 server holds %.2f times the keys of a weight-1 server, want about 2", ratio)
	}
}

// TestKetamaPinned checks the pinned vector without nutcracker: the names
// alone place the keys, whatever the addresses.
func TestKetamaPinned(t *testing.T) {
	servers := loopback(3)
	names := []string{"a", "b", "c"}
	for i := range servers {
		servers[i].Name, servers[i].Weight = names[i], i+1
	}
	ring := ringOf(t, servers...)
	nameOf := map[string]string{servers[0].Addr: "a", servers[1].Addr: "b", servers[2].Addr: "c"}
	for key, want := range pinned {
		if got := nameOf[owner(t, ring, key)]; got != want {
			t.Errorf("%s is on %s, want %s", key, got, want)
		}
	}
}

// TestKetamaDefaultNames: without a Name, a server is named as twemproxy
// names it: its address, without the port when that is 11211.
func TestKetamaDefaultNames(t *testing.T) {
	unnamed := ringOf(t,
		memclient.Server{Addr: "127.0.0.1:11211"},
		memclient.Server{Addr: "127.0.0.2:11211"},
		memclient.Server{Addr: "127.0.0.1:11212"})
	named := loopback(3)
	for i, name := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.1:11212"} {
		named[i].Name = name
	}
	ring := ringOf(t, named...)
	index := func(sel *memclient.Ketama, key string) int {
		var addrs []string
		_ = sel.Each(func(a net.Addr) error { addrs = append(addrs, a.String()); return nil })
		return slices.Index(addrs, owner(t, sel, key))
	}
	for i := range 1000 {
		key := ringKey("", i)
		if a, b := index(unnamed, key), index(ring, key); a != b {
			t.Fatalf("%s: server %d unnamed, %d named by the default names", key, a, b)
		}
	}
}

func TestNewKetamaErrors(t *testing.T) {
	for _, tc := range []struct {
		servers []memclient.Server
		want    string
	}{
		{nil, "at least one server"},
		{[]memclient.Server{{Addr: "127.0.0.1:11211", Weight: -1}}, "negative weight"},
		{[]memclient.Server{{Addr: "127.0.0.1"}}, "does not resolve"},
		{[]memclient.Server{{Addr: "127.0.0.1:no-such-port"}}, "does not resolve"},
		{[]memclient.Server{{Addr: "127.0.0.1:11211"}, {Addr: "127.0.0.1:11211", Name: "b"}}, "same address"},
		{[]memclient.Server{{Addr: "127.0.0.1:11211", Name: "a"}, {Addr: "127.0.0.1:11212", Name: "a"}}, "same name"},
		{[]memclient.Server{{Addr: "127.0.0.1:11212"}, {Addr: "127.0.0.2:11211", Name: "127.0.0.1:11212"}}, "same name"},
	} {
		_, err := memclient.NewKetama(tc.servers)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewKetama(%v) = %v, want an error saying %q", tc.servers, err, tc.want)
		}
	}
}

func TestKetamaServersAndEach(t *testing.T) {
	servers := []memclient.Server{{Addr: "127.0.0.1:11211", Weight: 2, Name: "a"}, {Addr: "/tmp/memcached.sock"}}
	ring := ringOf(t, servers...)
	got := ring.Servers()
	if !slices.Equal(got, servers) {
		t.Fatalf("Servers() = %v, want %v", got, servers)
	}
	got[0].Addr = "changed"
	if ring.Servers()[0].Addr != "127.0.0.1:11211" {
		t.Fatal("Servers() returned the ring's own slice, not a copy")
	}
	var each []string
	_ = ring.Each(func(a net.Addr) error { each = append(each, a.Network()+" "+a.String()); return nil })
	if want := []string{"tcp 127.0.0.1:11211", "unix /tmp/memcached.sock"}; !slices.Equal(each, want) {
		t.Fatalf("Each visited %v, want %v", each, want)
	}
	if _, err := new(memclient.Ketama).PickServer("k"); err != memcache.ErrNoServers {
		t.Fatalf("the zero Ketama's PickServer: %v, want memcache.ErrNoServers", err)
	}
}

func TestParseServers(t *testing.T) {
	valid := []struct {
		spec string
		want []memclient.Server
	}{
		{"127.0.0.1:11211", []memclient.Server{{Addr: "127.0.0.1:11211"}}},
		{"10.0.0.1:11211:2 a,10.0.0.2:11211", []memclient.Server{{Addr: "10.0.0.1:11211", Weight: 2, Name: "a"}, {Addr: "10.0.0.2:11211"}}},
		{" cache-1:11211:3 , cache-2:11212 b ", []memclient.Server{{Addr: "cache-1:11211", Weight: 3}, {Addr: "cache-2:11212", Name: "b"}}},
		{"[::1]:11211:2 v6,[::1]:11212", []memclient.Server{{Addr: "[::1]:11211", Weight: 2, Name: "v6"}, {Addr: "[::1]:11212"}}},
		{"/run/mc.sock:4 s,/run/mc2.sock", []memclient.Server{{Addr: "/run/mc.sock", Weight: 4, Name: "s"}, {Addr: "/run/mc2.sock"}}},
	}
	for _, tc := range valid {
		got, err := memclient.ParseServers(tc.spec)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseServers(%q) = %v, %v; want %v", tc.spec, got, err, tc.want)
		}
	}
	invalid := []struct{ spec, want string }{
		{"", "no servers"},
		{"127.0.0.1:11211,", "empty server"},
		{"cache-1", "want host:port"},
		{"cache-1:11211:0", "not a positive integer"},
		{"cache-1:11211:-2", "not a positive integer"},
		{"cache-1:11211:x", "not a positive integer"},
		{"cache-1:11211:", "not a positive integer"},
		{"cache-1:11211:1:2", "want host:port"},
		{"cache-1:11211 a b", "no spaces"},
		{"/run/mc.sock:two", "not a positive integer"},
	}
	for _, tc := range invalid {
		_, err := memclient.ParseServers(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseServers(%q) = %v, want an error saying %q", tc.spec, err, tc.want)
		}
	}
}

// TestKetamaConfigServers: Config.Servers takes weights.
func TestKetamaConfigServers(t *testing.T) {
	if _, err := memclient.New(memclient.Config{Servers: []string{"127.0.0.1:11211:2", "127.0.0.1:11212"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := memclient.New(memclient.Config{Servers: []string{"127.0.0.1:11211:0"}}); err == nil {
		t.Fatal("New accepted a zero weight")
	}
}

func TestKetamaPickServerAllocatesNothing(t *testing.T) {
	ring := ringOf(t, loopback(4)...)
	for _, key := range []string{"k", strings.Repeat("k", 250)} {
		if n := testing.AllocsPerRun(100, func() { _, _ = ring.PickServer(key) }); n != 0 {
			t.Errorf("PickServer of a %d-byte key: %v allocations, want 0", len(key), n)
		}
	}
}

func BenchmarkKetamaPickServer(b *testing.B) {
	ring := ringOf(b, loopback(8)...)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("repo:table:v1:%08d", i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := ring.PickServer(keys[i%len(keys)]); err != nil {
			b.Fatal(err)
		}
	}
}
