package protocol

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// breaker keeps reads off a cache that is failing. After BreakerFailures
// consecutive transport failures (timeouts, refused or reset connections;
// not misses or CAS conflicts), or at once when a read gives up on the cache
// and reads the database (trip), it opens: reads go straight to the database
// without paying the client timeout. After a timeout, a cooldown (doubling
// on each failed probe, up to 30s) passes before the next read probes the
// cache with a request of its own; after a fast failure the next read probes
// at once, since that costs nothing. If the cache answers, the breaker asks
// its Recovery (the outbox's Repairer) for a replay, so keys whose
// invalidation failed during the outage are gone, and stays open until that
// replay has succeeded: the replay runs in the Repairer, never inside a read.
// No read ever uses an answer the cache gave before recovery finished.
//
// Writes do not consult the breaker: they always try the cache, because a
// write that skipped its cache update would leave a stale value behind.
type breaker struct {
	threshold int
	base      time.Duration
	probe     func() error // a request whose outcome is all that matters
	recovery  Recovery     // may be nil
	changed   func(open bool, err error)

	open atomic.Bool // fast path for readers
	bad  atomic.Int32
	// failing, if set, counts the breakers of a core whose bad count is
	// not 0, so that a core with none can skip recording successes.
	failing *atomic.Int32
	slow    atomic.Bool // the failure that opened (or kept open) the breaker was a timeout

	mu       sync.Mutex
	until    time.Time
	cooldown time.Duration
	replay   <-chan error // the replay asked for after the last good probe
	replayAt int64        // when it was asked for (unix nanos)

	failedAt atomic.Int64 // unix nanos of the last transport failure seen
}

func newBreaker(threshold int, cooldown time.Duration, probe func() error, rec Recovery, changed func(bool, error)) *breaker {
	return &breaker{threshold: threshold, base: cooldown, cooldown: cooldown, probe: probe, recovery: rec, changed: changed}
}

// allowRead reports whether a read may use the cache now. While the breaker
// is open it is false, except that once per cooldown the caller probes and
// recovers, and gets true if that closed the breaker.
func (b *breaker) allowRead() bool {
	if b == nil || !b.open.Load() {
		return true
	}
	if !b.mu.TryLock() { // a probe or recovery is under way: stay off the cache
		return false
	}
	defer b.mu.Unlock()
	if !b.open.Load() {
		return true
	}
	if b.replay == nil {
		if time.Now().Before(b.until) {
			return false
		}
		if err := b.probe(); IsTransportErr(err) {
			b.reopen(err)
			return false
		}
		if b.recovery != nil {
			b.replayAt = time.Now().UnixNano()
			b.replay = b.recovery.Replay()
		}
	}
	if b.replay != nil {
		select {
		case err := <-b.replay:
			b.replay = nil
			if err != nil {
				b.reopen(err)
				return false
			}
			if b.failedAt.Load() >= b.replayAt {
				// The cache failed again since the replay was asked for:
				// writes that failed then may have left outbox rows the
				// replay did not see. Probe and replay again.
				return false
			}
		default:
			return false // still replaying
		}
	}
	b.resetBad()
	b.cooldown = b.base
	b.open.Store(false)
	b.changed(false, nil)
	return true
}

// reopen extends an open breaker after a failed probe or recovery. b.mu is
// held. A fast failure (refused, reset) costs the next probe nothing, so it
// may come at once: a restarted memcached is used again as soon as it
// answers. After a timeout the cooldown doubles, up to 30s.
func (b *breaker) reopen(err error) {
	b.slow.Store(isTimeout(err))
	if !isTimeout(err) {
		b.until = time.Now()
		return
	}
	b.cooldown = min(2*b.cooldown, 30*time.Second)
	b.until = time.Now().Add(b.cooldown)
}

// resetBad clears the count of consecutive failures.
func (b *breaker) resetBad() {
	if b.bad.Swap(0) != 0 && b.failing != nil {
		b.failing.Add(-1)
	}
}

// record notes the outcome of one cache call. Successes only reset the
// failure count of a closed breaker; an open one closes in allowRead.
func (b *breaker) record(err error) {
	if IsTransportErr(err) {
		b.failedAt.Store(time.Now().UnixNano())
	}
	if !IsTransportErr(err) {
		if b.bad.Load() != 0 && !b.open.Load() {
			b.resetBad()
		}
		return
	}
	n := int(b.bad.Add(1))
	if n == 1 && b.failing != nil {
		b.failing.Add(1)
	}
	if n >= b.threshold {
		b.trip(err)
	}
}

// trip opens the breaker at once. A read calls it when it gives up on the
// cache and reads the database: that read may be ahead of what the cache
// holds (a write whose cache update failed, or has not run yet), so no read
// of this store may use the cache again before recovery has replayed the
// outbox.
func (b *breaker) trip(err error) {
	if b == nil {
		return
	}
	b.failedAt.Store(time.Now().UnixNano())
	if b.open.Load() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open.Load() {
		b.until = time.Now()
		b.slow.Store(isTimeout(err))
		if isTimeout(err) {
			b.until = b.until.Add(b.cooldown)
		}
		b.open.Store(true)
		b.replay = nil
		b.changed(true, err)
	}
}

// cheap reports whether a cache request costs little now: the breaker is
// closed, or it opened on a fast failure (refused, reset), not a timeout.
func (b *breaker) cheap() bool { return b == nil || !b.open.Load() || !b.slow.Load() }

// isTimeout reports whether err is a timeout (the kind of failure whose
// cost the breaker exists to avoid repeating).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// IsTransportErr reports whether err means the cache could not be reached,
// as opposed to an answer (a miss, a conflict, a refused store).
func IsTransportErr(err error) bool {
	switch {
	case err == nil,
		errors.Is(err, memcache.ErrCacheMiss),
		errors.Is(err, memcache.ErrCASConflict),
		errors.Is(err, memcache.ErrNotStored),
		errors.Is(err, memcache.ErrMalformedKey),
		errors.Is(err, memcache.ErrServerError),
		errors.Is(err, memclient.ErrNoMeta):
		return false
	}
	return true
}

// guarded is a Cache that reports every call's outcome to the breaker of
// the key's server.
type guarded struct {
	Cache
	c *Core
}

// readAttempts bounds how often a read is tried when its connection fails
// fast: after memcached restarts, every idle pooled connection is dead, and
// each fails once before the client drops it.
const readAttempts = 3

func (g guarded) Get(key string) (it *memcache.Item, err error) {
	for range readAttempts {
		it, err = g.Cache.Get(key)
		g.c.record(key, err)
		if !retryable(err) {
			break
		}
	}
	return it, err
}

func (g guarded) GetMulti(keys []string) (items map[string]*memcache.Item, err error) {
	for range readAttempts {
		items, err = g.Cache.GetMulti(keys)
		g.c.recordMany(keys, err)
		if !retryable(err) {
			break
		}
	}
	return items, err
}

// retryRead runs read up to readAttempts times while it fails fast,
// reporting each outcome to b (if not nil).
func retryRead[R any](read func() (R, error), b *breaker) (r R, err error) {
	for range readAttempts {
		r, err = read()
		if b != nil {
			b.record(err)
		}
		if !retryable(err) {
			break
		}
	}
	return r, err
}

// retryable reports whether a read that failed with err is worth another
// try at once: a transport failure that was not a timeout (a closed or
// reset connection), since another timeout would double the wait.
func retryable(err error) bool { return IsTransportErr(err) && !isTimeout(err) }

func (g guarded) Add(it *memcache.Item) error { return g.rec(it.Key, g.Cache.Add(it)) }

func (g guarded) Set(it *memcache.Item) error { return g.rec(it.Key, g.Cache.Set(it)) }

func (g guarded) CompareAndSwap(it *memcache.Item) error {
	return g.rec(it.Key, g.Cache.CompareAndSwap(it))
}

func (g guarded) Delete(key string) error { return g.rec(key, g.Cache.Delete(key)) }

func (g guarded) Increment(key string, delta uint64) (uint64, error) {
	n, err := g.Cache.Increment(key, delta)
	g.c.record(key, err)
	return n, err
}

func (g guarded) rec(key string, err error) error {
	g.c.record(key, err)
	return err
}
