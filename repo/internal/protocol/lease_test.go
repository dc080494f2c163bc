package protocol

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

// classicOnly is a Cache without the optional LeaseGet.
type classicOnly struct{ Cache }

// Without the meta protocol (a server that answered ERROR), the lease
// protocol runs on the classic commands; with it, the lease is mg's
// placeholder. Either way the fill lands.
func TestLeasedWithAndWithoutMeta(t *testing.T) {
	mp := repotest.StartMemcached(t)
	for _, meta := range []bool{true, false} {
		mc, err := memclient.New(memclient.Config{Servers: []string{mp.Addr()}, MaxIdleConns: 4, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var cache Cache = mc
		if !meta {
			cache = classicOnly{mc} // hides LeaseGet, as a server without the meta protocol does
		}
		c := New(cache, Config{}, nil)
		key := "leased-" + map[bool]string{true: "meta", false: "classic"}[meta]
		var during *memcache.Item
		r, err := c.Leased(context.Background(), key,
			func(it *memcache.Item, _ time.Time) (any, bool) { return string(it.Value), true },
			func(context.Context) (any, []byte, uint32, int32, error) {
				during, _ = mc.Get(key)
				return "loaded", []byte("value"), FlagsOf(KindValue), 60, nil
			})
		if err != nil || r != "loaded" {
			t.Fatalf("meta=%v: leased: %v, %v", meta, r, err)
		}
		if during == nil {
			t.Fatalf("meta=%v: no lease while loading", meta)
		}
		k, _, _, ok := OpenEnvelope(during.Flags, during.Value)
		if !ok || k != KindLease || (len(during.Value) == 0) != meta {
			t.Fatalf("meta=%v: while loading the key held %q flags %#x", meta, during.Value, during.Flags)
		}
		if it, err := mc.Get(key); err != nil || string(it.Value) != "value" {
			t.Fatalf("meta=%v: after the fill: %+v %v", meta, it, err)
		}
		if st := c.Snapshot(); st.Fills != 1 {
			t.Fatalf("meta=%v: stats %+v, want 1 fill", meta, st)
		}
	}
}
