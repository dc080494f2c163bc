package protocol

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Generation tracks a table's key generation. Every key carries it; bumping
// it (InvalidateAll) makes every earlier key unreachable at once, in every
// process, within GenerationRefresh. The counter lives in memcached under its
// own key, starting at 0. If that key is lost (a restart, an eviction) it
// comes back as 0: a restart loses the rows too, so nothing changes, and
// processes never split between two generations because of it. The one
// exception is documented on InvalidateAll.
type Generation struct {
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

// NewGeneration returns the generation of the table whose generation-0 keys
// base builds, kept under key (which no row key may equal) and re-read from
// the cache every refresh.
func NewGeneration(base cachekeys.Builder, key string, refresh time.Duration) *Generation {
	g := &Generation{base: base, key: key, refresh: refresh}
	g.cur.Store(&genState{keys: base}) // checked is zero: the first use reads it
	return g
}

// Builder returns the key builder of the current generation, re-reading the
// generation from the cache when it is older than refresh. Only one caller
// refreshes; the others go on with the builder they have.
func (g *Generation) Builder(c *Core) cachekeys.Builder {
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
func (g *Generation) read(c *Core) *genState {
	st, _ := g.readErr(c)
	return st
}

// readErr is read, also returning why the generation could not be read.
func (g *Generation) readErr(c *Core) (*genState, error) {
	now := time.Now()
	st := &genState{keys: g.cur.Load().keys, checked: now}
	failed := errors.New("repo: key generation unreadable")
	for try := 0; try < 3; try++ {
		it, err := c.Cache.Get(g.key)
		if IsMiss(err) {
			err = c.Cache.Add(&memcache.Item{Key: g.key, Value: []byte("0")})
			if err == nil || IsLost(err) {
				continue
			}
		}
		if err != nil {
			c.CacheErr(context.Background(), observe.StepGeneration, g.key, err)
			failed = err
			break
		}
		n, perr := strconv.ParseUint(string(it.Value), 10, 64)
		if perr != nil {
			c.CacheErr(context.Background(), observe.StepGeneration, g.key, ErrCorrupt)
			c.Invalidate(context.Background(), g.key)
			continue
		}
		st.keys = g.base.WithGeneration(n)
		failed = nil
		break
	}
	g.cur.Store(st)
	return st, failed
}

// Refresh re-reads the generation from the cache now and returns its key
// builder; it fails if the cache cannot be read (a guessed generation could
// miss keys).
func (g *Generation) Refresh(c *Core) (cachekeys.Builder, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st, err := g.readErr(c)
	return st.keys, err
}

// Bump increments the generation and adopts it at once in this process.
func (g *Generation) Bump(c *Core) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, err := c.Cache.Increment(g.key, 1); err != nil {
		if !IsMiss(err) {
			return err
		}
		// Missing (never read, or lost): start again above 0, the default.
		if err := c.Cache.Set(&memcache.Item{Key: g.key, Value: []byte("1")}); err != nil {
			return err
		}
	}
	g.read(c)
	return nil
}
