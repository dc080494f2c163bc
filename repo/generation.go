package repo

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/cachekeys"
)

// generation tracks a table's key generation. Every key carries it; bumping
// it (InvalidateAll) makes every earlier key unreachable at once, in every
// process, within GenerationRefresh. The counter lives in memcached under its
// own key, starting at 0. If that key is lost (a restart, an eviction) it
// comes back as 0: a restart loses the rows too, so nothing changes, and
// processes never split between two generations because of it. The one
// exception is documented on InvalidateAll.
type generation struct {
	base    cachekeys.Builder // generation 0
	key     string
	refresh time.Duration
	cur     atomic.Pointer[genState]
	mu      sync.Mutex // one refresher at a time
}

type genState struct {
	keys    cachekeys.Builder
	checked time.Time
}

func newGeneration(base cachekeys.Builder, refresh time.Duration) *generation {
	g := &generation{base: base, key: base.Key("generation"), refresh: refresh}
	g.cur.Store(&genState{keys: base}) // checked is zero: the first use reads it
	return g
}

// builder returns the key builder of the current generation, re-reading the
// generation from the cache when it is older than refresh. Only one caller
// refreshes; the others go on with the builder they have.
func (g *generation) builder(c *core) cachekeys.Builder {
	st := g.cur.Load()
	if time.Since(st.checked) < g.refresh {
		return st.keys
	}
	if st.checked.IsZero() {
		g.mu.Lock() // never read: nobody may use a guessed generation
	} else if !g.mu.TryLock() {
		return st.keys
	}
	defer g.mu.Unlock()
	if st := g.cur.Load(); time.Since(st.checked) < g.refresh {
		return st.keys // another caller just read it
	}
	return g.read(c).keys
}

// read fetches the generation from the cache (creating it if missing) and
// stores it. On a cache failure it keeps the current one and tries again
// after refresh.
func (g *generation) read(c *core) *genState {
	now := time.Now()
	st := &genState{keys: g.cur.Load().keys, checked: now}
	for try := 0; try < 3; try++ {
		it, err := c.cache.Get(g.key)
		if isMiss(err) {
			err = c.cache.Add(&memcache.Item{Key: g.key, Value: []byte("0")})
			if err == nil || isLost(err) {
				continue
			}
		}
		if err != nil {
			c.cacheErr("generation", g.key, err)
			break
		}
		n, perr := strconv.ParseUint(string(it.Value), 10, 64)
		if perr != nil {
			c.cacheErr("generation", g.key, ErrCorrupt)
			c.invalidate(g.key)
			continue
		}
		st.keys = g.base.WithGeneration(n)
		break
	}
	g.cur.Store(st)
	return st
}

// bump increments the generation and adopts it at once in this process.
func (g *generation) bump(c *core) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, err := c.cache.Increment(g.key, 1); err != nil {
		if !isMiss(err) {
			return err
		}
		// Missing (never read, or lost): start again above 0, the default.
		if err := c.cache.Set(&memcache.Item{Key: g.key, Value: []byte("1")}); err != nil {
			return err
		}
	}
	g.read(c)
	return nil
}

// InvalidateAll makes every cached row of the table unreachable, for example
// after a bulk change made outside the store. This process sees the new
// generation at once; other processes see it within Options.GenerationRefresh,
// and until then may still serve rows cached before the call. Old keys expire
// by their TTL. The generation lives in memcached: if its key alone is
// evicted while rows cached before the call are still there, the generation
// falls back to 0 and those rows could be served again, so prefer
// InvalidateAll for rare bulk changes and a short TTL for tables changed
// outside the stores.
func (s *Store[T, K]) InvalidateAll(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return &OpError{Op: "invalidate all", Table: s.t.name, Err: err}
	}
	if err := s.gen.bump(&s.core); err != nil {
		return &OpError{Op: "invalidate all", Table: s.t.name, Err: err}
	}
	return nil
}
