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
// own key, starting at 0. If that key is lost (a restart, an eviction), the
// first process to read it puts back the generation it knows, and one that
// finds a lower value than it knows raises it back: the generation never
// goes back while any process remembers it (so processes do not split
// between two generations). The one exception, every process having
// forgotten, is documented on InvalidateAll.
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
	known := st.keys.Generation()
	for try := 0; try < 3; try++ {
		it, err := c.Cache.Get(g.key)
		if IsMiss(err) {
			// Lost (evicted, a restart) or never written: put back the
			// generation this process knows, so processes that remember a
			// bump do not fall back to 0 while others still use it.
			err = c.Cache.Add(&memcache.Item{Key: g.key, Value: strconv.AppendUint(nil, known, 10)})
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
		if n < known {
			// Put back by a process that did not know the bump: the
			// generation never goes back while some process remembers it.
			it.Value = strconv.AppendUint(nil, known, 10)
			if err := c.Cache.CompareAndSwap(it); err != nil && !IsLost(err) {
				c.CacheErr(context.Background(), observe.StepGeneration, g.key, err)
			}
			failed = nil
			break
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
		// Missing (never read, or lost): start again above what this
		// process knows.
		next := g.cur.Load().keys.Generation() + 1
		if err := c.Cache.Set(&memcache.Item{Key: g.key, Value: strconv.AppendUint(nil, next, 10)}); err != nil {
			return err
		}
	}
	g.read(c)
	return nil
}
