package memclient_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// migrationRig is 3 memcached servers: the old ring the first two, the new
// ring all three, so about a third of keys move (to the third server).
type migrationRig struct {
	old, new *memclient.Client
	raw      []*memcache.Client // one client per server, to look at each directly
	addrs    []string
}

func newMigrationRig(t *testing.T) *migrationRig {
	t.Helper()
	r := &migrationRig{}
	for range 3 {
		a := repotest.StartMemcached(t).Addr()
		r.addrs = append(r.addrs, a)
		r.raw = append(r.raw, memcache.New(a))
	}
	var err error
	if r.old, err = memclient.New(memclient.Config{Servers: r.addrs[:2]}); err != nil {
		t.Fatal(err)
	}
	if r.new, err = memclient.New(memclient.Config{Servers: r.addrs}); err != nil {
		t.Fatal(err)
	}
	return r
}

// key returns the i-th key that moves (moving) or stays.
func (r *migrationRig) key(t *testing.T, moving bool, i int) string {
	t.Helper()
	for n := 0; ; n++ {
		k := fmt.Sprintf("mig:%d", n)
		a, _ := r.old.Server(k)
		b, _ := r.new.Server(k)
		if (a.String() != b.String()) == moving {
			if i == 0 {
				return k
			}
			i--
		}
	}
}

// on returns what the server at addr holds for key ("" for nothing).
func (r *migrationRig) on(t *testing.T, addr, key string) string {
	t.Helper()
	for i, a := range r.addrs {
		if a == addr {
			it, err := r.raw[i].Get(key)
			if errors.Is(err, memcache.ErrCacheMiss) {
				return ""
			}
			if err != nil {
				t.Fatal(err)
			}
			return string(it.Value)
		}
	}
	t.Fatalf("no server %s", addr)
	return ""
}

func (r *migrationRig) owners(t *testing.T, key string) (oldAddr, newAddr string) {
	a, _ := r.old.Server(key)
	b, _ := r.new.Server(key)
	return a.String(), b.String()
}

// Each phase reads its primary ring, and each change deletes the key on the
// other ring's owner in the phases that write both, and not in the others.
func TestMigrationPhases(t *testing.T) {
	r := newMigrationRig(t)
	k := r.key(t, true, 0)
	oldAt, newAt := r.owners(t, k)
	for _, tc := range []struct {
		phase         memclient.Phase
		readsNew      bool // Get reads the new ring
		deletesOther  bool // a Set deletes the key on the other ring
		fallbackToOld bool
	}{
		{memclient.PhaseOld, false, false, false},
		{memclient.PhaseWriteBoth, false, true, false},
		{memclient.PhaseFallback, true, true, true},
		{memclient.PhaseNewReads, true, true, false},
		{memclient.PhaseNew, true, false, false},
	} {
		t.Run(tc.phase.String(), func(t *testing.T) {
			m, err := memclient.NewMigration(r.old, r.new, tc.phase)
			if err != nil {
				t.Fatal(err)
			}
			_ = r.old.Set(&memcache.Item{Key: k, Value: []byte("on-old")})
			_ = r.new.Set(&memcache.Item{Key: k, Value: []byte("on-new")})
			it, err := m.Get(k)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{false: "on-old", true: "on-new"}[tc.readsNew]; string(it.Value) != want {
				t.Fatalf("Get read %q, want %q", it.Value, want)
			}
			if err := m.Set(&memcache.Item{Key: k, Value: []byte("written")}); err != nil {
				t.Fatal(err)
			}
			primary, other := oldAt, newAt
			if tc.readsNew {
				primary, other = newAt, oldAt
			}
			if got := r.on(t, primary, k); got != "written" {
				t.Fatalf("the primary ring holds %q after Set", got)
			}
			wantOther := map[bool]string{false: map[bool]string{false: "on-new", true: "on-old"}[tc.readsNew], true: ""}[tc.deletesOther]
			if got := r.on(t, other, k); got != wantOther {
				t.Fatalf("the other ring holds %q after Set, want %q", got, wantOther)
			}
			if fb := m.Fallback(k); (fb != nil) != tc.fallbackToOld {
				t.Fatalf("Fallback: %v, want a fallback %v", fb, tc.fallbackToOld)
			}
			if err := m.Delete(k); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
				t.Fatal(err)
			}
			if got := r.on(t, primary, k); got != "" {
				t.Fatalf("Delete left %q on the primary ring", got)
			}
		})
	}
	// A key whose server is the same in both rings is reached once, and
	// has no fallback.
	m, _ := memclient.NewMigration(r.old, r.new, memclient.PhaseFallback)
	s := r.key(t, false, 0)
	if err := m.Set(&memcache.Item{Key: s, Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if a, _ := r.owners(t, s); r.on(t, a, s) != "x" {
		t.Fatal("a key that does not move was deleted by its own write")
	}
	if m.Fallback(s) != nil {
		t.Fatal("a fallback for a key that does not move")
	}
}

// The phase is read once per change: a change that straddles a phase
// switch runs wholly in the phase it began in.
func TestMigrationInvalidatingReadsThePhaseOnce(t *testing.T) {
	r := newMigrationRig(t)
	k := r.key(t, true, 1)
	oldAt, newAt := r.owners(t, k)
	m, _ := memclient.NewMigration(r.old, r.new, memclient.PhaseWriteBoth)
	_ = r.new.Set(&memcache.Item{Key: k, Value: []byte("stale")})
	err := m.Invalidating([]string{k}, func(p *memclient.Client) error {
		_ = m.SetPhase(memclient.PhaseFallback) // a rollout step meanwhile
		return p.Set(&memcache.Item{Key: k, Value: []byte("v")})
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.on(t, oldAt, k) != "v" || r.on(t, newAt, k) != "" {
		t.Fatalf("the change split between phases: old ring %q, new ring %q", r.on(t, oldAt, k), r.on(t, newAt, k))
	}
}

// Sweep deletes from the new ring the entries of moving keys (left there
// by an earlier server list) and nothing else.
func TestMigrationSweep(t *testing.T) {
	r := newMigrationRig(t)
	var moving, staying []string
	for i := range 20 {
		moving = append(moving, r.key(t, true, i))
		staying = append(staying, r.key(t, false, i))
	}
	for _, k := range append(append([]string{}, moving...), staying...) {
		if err := r.new.Set(&memcache.Item{Key: k, Value: []byte("left")}); err != nil {
			t.Fatal(err)
		}
	}
	other := "other:1" // another prefix: not ours to delete
	_ = r.new.Set(&memcache.Item{Key: other, Value: []byte("x")})
	m, _ := memclient.NewMigration(r.old, r.new, memclient.PhaseWriteBoth)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := m.Sweep(ctx, "mig:")
	if err != nil {
		t.Fatal(err)
	}
	if n != len(moving) {
		t.Fatalf("swept %d entries, want the %d moving keys", n, len(moving))
	}
	for _, k := range moving {
		if _, err := r.new.Get(k); !errors.Is(err, memcache.ErrCacheMiss) {
			t.Fatalf("moving key %s left on the new ring (%v)", k, err)
		}
	}
	for _, k := range append(staying, other) {
		if _, err := r.new.Get(k); err != nil {
			t.Fatalf("key %s that does not move (or is not ours) was swept: %v", k, err)
		}
	}
}

func TestMigrationErrors(t *testing.T) {
	r := newMigrationRig(t)
	if _, err := memclient.NewMigration(nil, r.new, memclient.PhaseOld); err == nil {
		t.Fatal("a migration without its old client")
	}
	if _, err := memclient.NewMigration(r.old, r.new, 9); err == nil {
		t.Fatal("a migration in phase 9")
	}
	if _, err := memclient.ParsePhase("sideways"); err == nil {
		t.Fatal("ParsePhase accepted sideways")
	}
	for p := memclient.PhaseOld; p <= memclient.PhaseNew; p++ {
		if q, err := memclient.ParsePhase(p.String()); err != nil || q != p {
			t.Fatalf("ParsePhase(%q) = %v, %v", p.String(), q, err)
		}
	}
}

// AddMulti and CompareAndSwapMulti over a Migration do what Add and
// CompareAndSwap do key by key: in write-both, each moving key is deleted on
// its new owner and stored on its old one; keys that stay are stored once.
// DeleteMulti deletes keys, a miss being no failure.
func TestMigrationStoreMulti(t *testing.T) {
	r := newMigrationRig(t)
	m, err := memclient.NewMigration(r.old, r.new, memclient.PhaseWriteBoth)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range 20 {
		keys = append(keys, r.key(t, true, i), r.key(t, false, i))
	}
	items := make([]*memcache.Item, len(keys))
	for i, k := range keys {
		_ = r.new.Set(&memcache.Item{Key: k, Value: []byte("stale-new")})
		items[i] = &memcache.Item{Key: k, Value: []byte("added")}
	}
	outs, err := m.AddMulti(items)
	if err != nil || len(outs) != len(keys) {
		t.Fatalf("AddMulti: %d outcomes, %v", len(outs), err)
	}
	for i, k := range keys {
		oldAt, newAt := r.owners(t, k)
		if oldAt == newAt {
			// Stays: the new ring's item is the old ring's, already there.
			if !errors.Is(outs[i], memcache.ErrNotStored) || r.on(t, oldAt, k) != "stale-new" {
				t.Fatalf("%s (stays): %v, holds %q", k, outs[i], r.on(t, oldAt, k))
			}
			continue
		}
		if outs[i] != nil || r.on(t, oldAt, k) != "added" || r.on(t, newAt, k) != "" {
			t.Fatalf("%s (moves): %v, old owner %q, new owner %q", k, outs[i], r.on(t, oldAt, k), r.on(t, newAt, k))
		}
	}
	cur, err := m.GetMulti(keys)
	if err != nil {
		t.Fatal(err)
	}
	swaps := make([]*memcache.Item, 0, len(cur))
	for _, it := range cur {
		it.Value = []byte("swapped")
		swaps = append(swaps, it)
	}
	outs, err = m.CompareAndSwapMulti(swaps)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range swaps {
		if outs[i] != nil {
			t.Fatalf("CompareAndSwapMulti %s: %v", it.Key, outs[i])
		}
		if oldAt, _ := r.owners(t, it.Key); r.on(t, oldAt, it.Key) != "swapped" {
			t.Fatalf("%s after the swap: %q", it.Key, r.on(t, oldAt, it.Key))
		}
	}
	if err := r.old.DeleteMulti(append(keys, "never-set-1", "never-set-2")); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if oldAt, _ := r.owners(t, k); r.on(t, oldAt, k) != "" {
			t.Fatalf("%s after DeleteMulti: %q", k, r.on(t, oldAt, k))
		}
	}
}
