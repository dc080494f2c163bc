package repo

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"golang.org/x/sync/singleflight"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/internal/codec"
)

// Query caches the result of an arbitrary load function (a sqlc query, an
// aggregate, a page of a listing) under a key built from its arguments, for a
// short TTL. Use it for results that may be up to TTL old; rows that must
// never be stale belong in a Store.
//
// Concurrent misses of one key share one load in this process and, through a
// lease, across processes. Invalidate deletes a result; a load that was
// running when Invalidate was called does not put its older result back.
// A Query is safe for concurrent use.
type Query[V any] struct {
	core
	name  string
	keys  cachekeys.Builder
	codec *codec.Codec[box[V]]
	load  func(ctx context.Context, args ...string) (V, error)
	group singleflight.Group
}

type box[V any] struct{ V V }

// NewQuery returns a cached query named name (letters, digits, '.', '_',
// '-'), whose results live ttl in cache. load is called with the arguments
// given to Get. V must be encodable by the package codec (structs, slices,
// maps of strings, scalars, time.Time, and pointers to them). opts may be nil;
// its TTL is replaced by ttl.
func NewQuery[V any](cache Cache, name string, ttl time.Duration, load func(ctx context.Context, args ...string) (V, error), opts *Options) (*Query[V], error) {
	if cache == nil || load == nil {
		return nil, fmt.Errorf("repo: query %q: NewQuery needs a Cache and a load function", name)
	}
	o := opts.withDefaults()
	if ttl > 0 {
		o.TTL = ttl
	}
	cd, err := codec.For[box[V]]()
	if err != nil {
		return nil, fmt.Errorf("repo: query %q: %w", name, err)
	}
	kb, err := cachekeys.New(o.Namespace, keyName("q."+name), "c"+strconv.FormatUint(cd.Fingerprint(), 36))
	if err != nil {
		return nil, fmt.Errorf("repo: query %q: %w", name, err)
	}
	return &Query[V]{core: newCore(cache, o), name: name, keys: kb, codec: cd, load: load}, nil
}

// Get returns the cached result for args, or loads, caches and returns it.
// Errors from load are returned (wrapped) and not cached.
func (q *Query[V]) Get(ctx context.Context, args ...string) (V, error) {
	var zero V
	if err := ctx.Err(); err != nil {
		return zero, q.err(err)
	}
	key := q.keys.Key(args...)
	if !q.br.allowRead() {
		q.stats.dbReads.Add(1)
		v, err := q.load(ctx, args...)
		if err != nil {
			return zero, q.err(err)
		}
		return v, nil
	}
	it, err := q.cache.Get(key)
	if err == nil {
		if v, ok := q.decode(it); ok {
			q.stats.hits.Add(1)
			return v, nil
		}
	} else if !isMiss(err) {
		q.cacheErr("get", key, err)
		q.stats.dbReads.Add(1)
		v, err := q.load(ctx, args...)
		if err != nil {
			return zero, q.err(err)
		}
		return v, nil
	}
	q.stats.misses.Add(1)
	ch := q.group.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.opt.LeaseTTL)
		defer cancel()
		return q.fill(lctx, key, args)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return zero, q.err(r.Err)
		}
		v, _ := r.Val.(V) // comma-ok: a nil result of an interface type V
		return v, nil
	case <-ctx.Done():
		return zero, q.err(ctx.Err())
	}
}

// Invalidate deletes the cached result for args. A missing result is not an
// error; a cache failure is.
func (q *Query[V]) Invalidate(args ...string) error {
	if err := q.cache.Delete(q.keys.Key(args...)); err != nil && !isMiss(err) {
		return q.err(err)
	}
	return nil
}

func (q *Query[V]) err(err error) error {
	return &OpError{Op: "query", Table: q.name, Err: err}
}

// decode opens a cached result; a lease or corrupt bytes are not a result
// (corrupt bytes are deleted and reported).
func (q *Query[V]) decode(it *memcache.Item) (V, bool) {
	if v, ok := q.open(it); ok {
		return v, true
	}
	var zero V
	if k, _, _, ok := openEnvelope(it.Flags, it.Value); ok && k == kindLease {
		return zero, false
	}
	q.cacheErr("decode", it.Key, ErrCorrupt)
	q.invalidate(it.Key)
	return zero, false
}

// open decodes a cached result, reporting nothing.
func (q *Query[V]) open(it *memcache.Item) (V, bool) {
	var b box[V]
	k, _, payload, ok := openEnvelope(it.Flags, it.Value)
	if !ok || k != kindValue || q.codec.Decode(payload, &b) != nil {
		return b.V, false
	}
	return b.V, true
}

// fill runs the loader under the lease protocol (core.leased) and caches its
// result, unless it is larger than MaxItemSize.
func (q *Query[V]) fill(ctx context.Context, key string, args []string) (V, error) {
	r, err := q.leased(ctx, key,
		func(it *memcache.Item, _ time.Time) (any, bool) { return q.open(it) },
		func(ctx context.Context) (any, []byte, uint32, int32, error) {
			q.stats.dbReads.Add(1)
			v, err := q.load(ctx, args...)
			if err != nil {
				return nil, nil, 0, 0, err
			}
			b := box[V]{V: v}
			value := finishEnvelope(q.codec.Append(beginEnvelope(make([]byte, 0, 256), 0), &b))
			if len(value) > q.opt.MaxItemSize {
				q.cacheErr("encode", key, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(value), q.opt.MaxItemSize))
				value = nil
			}
			return v, value, flagsOf(kindValue), q.expiry(q.opt.TTL, true), nil
		})
	if err != nil {
		var zero V
		return zero, err
	}
	v, _ := r.(V) // comma-ok: a nil result of an interface type V
	return v, nil
}
