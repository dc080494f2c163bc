package repo

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/internal/codec"
	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Query caches the result of an arbitrary load function (a sqlc query, an
// aggregate, a page of a listing) under a key built from its typed
// arguments A, for a short TTL. Use it for results that may be up to TTL
// old; rows that must never be stale belong in a Store.
//
// A is the arguments' type: a string, an integer, a bool, a [16]byte, a
// time.Time, a named type of one of those, or a struct whose exported
// fields are (use struct{} for a query without arguments). Each argument
// is one part of the cache key (see cachekeys.Part).
//
// Concurrent misses of one key share one load in this process and, through a
// lease, across processes. Invalidate deletes a result; a load that was
// running when Invalidate was called does not put its older result back.
// A Query is safe for concurrent use.
type Query[A any, V any] struct {
	c     *protocol.Core
	name  string
	keys  cachekeys.Builder
	codec *codec.Codec[box[V]]
	load  func(ctx context.Context, args A) (V, error)
	parts func(A) ([]string, error)
}

type box[V any] struct{ V V }

// QueryConfig configures NewQuery. Name, TTL and Load are required; the
// other fields are as on Options and take the same defaults.
type QueryConfig[A any, V any] struct {
	// Name names the query in keys, errors and hooks: letters, digits, '.',
	// '_' and '-'.
	Name string
	// TTL is how long a result lives in the cache (less up to Jitter).
	TTL time.Duration
	// Load computes the result for args on a miss. Its errors are returned
	// (wrapped) and not cached.
	Load func(ctx context.Context, args A) (V, error)

	Namespace       string        // as Options.Namespace
	Jitter          float64       // as Options.Jitter
	LeaseTTL        time.Duration // as Options.LeaseTTL
	LeaseWait       time.Duration // as Options.LeaseWait
	EarlyRefresh    time.Duration // as Options.EarlyRefresh (none for a TTL under 20s by default)
	MaxItemSize     int           // as Options.MaxItemSize
	BreakerFailures int           // as Options.BreakerFailures
	BreakerCooldown time.Duration // as Options.BreakerCooldown
	Hooks           observe.Hooks // as Options.Hooks
}

// NewQuery returns a cached query over cache. V must be encodable by the
// default codec (every type pgx scans into, and structs, slices and maps
// of them). It returns an error naming the problem for a bad name, a
// missing TTL or Load, an unsupported argument type or result type.
func NewQuery[A any, V any](cache Cache, cfg QueryConfig[A, V]) (*Query[A, V], error) {
	if cache == nil || cfg.Load == nil || cfg.TTL <= 0 {
		return nil, fmt.Errorf("repo: query %q: NewQuery needs a Cache, a Load function and a TTL", cfg.Name)
	}
	parts, err := argParts[A]()
	if err != nil {
		return nil, fmt.Errorf("repo: query %q: %w", cfg.Name, err)
	}
	pc := protocol.Config{Name: cfg.Name, Namespace: cfg.Namespace, TTL: cfg.TTL, Jitter: cfg.Jitter,
		LeaseTTL: cfg.LeaseTTL, LeaseWait: cfg.LeaseWait, MaxItemSize: cfg.MaxItemSize,
		BreakerFailures: cfg.BreakerFailures, BreakerCooldown: cfg.BreakerCooldown, EarlyRefresh: cfg.EarlyRefresh,
		Hooks: cfg.Hooks}.WithDefaults()
	cd, err := codec.For[box[V]]()
	if err != nil {
		return nil, fmt.Errorf("repo: query %q: %w", cfg.Name, err)
	}
	kb, err := cachekeys.New(pc.Namespace, protocol.KeyName("q."+cfg.Name), "c"+strconv.FormatUint(cd.Fingerprint(), 36))
	if err != nil {
		return nil, fmt.Errorf("repo: query %q: %w", cfg.Name, err)
	}
	return &Query[A, V]{c: protocol.New(cache, pc, nil), name: cfg.Name, keys: kb, codec: cd, load: cfg.Load, parts: parts}, nil
}

// argParts returns the function that turns arguments of type A into key
// parts, or an error if A is not a supported type.
func argParts[A any]() (func(A) ([]string, error), error) {
	t := reflect.TypeFor[A]()
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[time.Time]() {
		if !partKind(t) {
			return nil, fmt.Errorf("argument type %v is not a key part (a string, integer, bool, [16]byte, time.Time, or a struct of them)", t)
		}
		return func(a A) ([]string, error) {
			p, err := cachekeys.Part(a)
			return []string{p}, err
		}, nil
	}
	var fields []int
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			return nil, fmt.Errorf("argument struct %v: field %s is unexported", t, f.Name)
		}
		if !partKind(f.Type) {
			return nil, fmt.Errorf("argument struct %v: field %s has type %v, which is not a key part", t, f.Name, f.Type)
		}
		fields = append(fields, i)
	}
	return func(a A) ([]string, error) {
		rv := reflect.ValueOf(&a).Elem()
		out := make([]string, len(fields))
		for i, f := range fields {
			p, err := cachekeys.Part(rv.Field(f).Interface())
			if err != nil {
				return nil, err
			}
			out[i] = p
		}
		return out, nil
	}, nil
}

// partKind reports whether values of t are accepted by cachekeys.Part.
func partKind(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	case reflect.Array:
		return t.Len() == 16 && t.Elem().Kind() == reflect.Uint8
	case reflect.Slice:
		return t.Elem().Kind() == reflect.Uint8
	}
	return t == reflect.TypeFor[time.Time]()
}

// key returns the cache key of args.
func (q *Query[A, V]) key(args A) (string, error) {
	parts, err := q.parts(args)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return q.keys.Key(parts...), nil
}

// Get returns the cached result for args, or loads, caches and returns it.
// Errors from Load are returned (wrapped) and not cached.
func (q *Query[A, V]) Get(ctx context.Context, args A) (_ V, err error) {
	ctx, end := q.c.Begin(ctx, observe.OpQueryGet)
	defer func() { end(err) }()
	var zero V
	if err := ctx.Err(); err != nil {
		return zero, q.err(observe.OpQueryGet, err)
	}
	key, err := q.key(args)
	if err != nil {
		return zero, q.err(observe.OpQueryGet, err)
	}
	v, hit, ok, l := q.c.ReadLeased(ctx, key, func(it *memcache.Item) (any, bool) { return q.open(it) })
	switch {
	case hit:
		if l != nil { // close to expiry, and its early refresh is ours
			q.refresh(ctx, key, args, l)
		}
		r, _ := v.(V) // comma-ok: a nil result of an interface type V
		return r, nil
	case !ok:
		return q.direct(ctx, args)
	case l != nil:
		defer q.c.HandOff(key, l)()
	}
	r, err := q.c.Share(ctx, key, func(ctx context.Context) (any, error) { return q.fill(ctx, key, args) }, nil)
	if err != nil {
		return zero, q.err(observe.OpQueryGet, err)
	}
	res, _ := r.(V) // comma-ok: a nil result of an interface type V
	return res, nil
}

// refresh loads the result for args again in the background and replaces
// the cached one through the refresh lease l (a CAS on the hit: an
// Invalidate meanwhile wins), as Store's early refresh does.
func (q *Query[A, V]) refresh(ctx context.Context, key string, args A, l *memclient.Lease) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.c.Opt.LeaseTTL)
	go func() {
		defer cancel()
		q.c.DBRead()
		v, err := q.load(ctx, args)
		if err != nil {
			l.Release()
			return
		}
		value := q.envelope(ctx, key, v)
		if value == nil {
			l.Release()
			return
		}
		q.c.FillFrom(ctx, l, &memcache.Item{Value: value, Flags: protocol.FlagsOf(protocol.KindValue)}, q.c.Expiry(q.c.Opt.TTL, true))
	}()
}

// envelope encodes v, or returns nil (reported) if it is too large.
func (q *Query[A, V]) envelope(ctx context.Context, key string, v V) []byte {
	b := box[V]{V: v}
	value := protocol.FinishEnvelope(q.codec.Append(protocol.BeginEnvelope(make([]byte, 0, 256), 0), &b))
	if len(value) > q.c.Opt.MaxItemSize {
		q.c.CacheErr(ctx, observe.StepEncode, key, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(value), q.c.Opt.MaxItemSize))
		return nil
	}
	return value
}

// direct serves a Get from Load alone (the cache failed).
func (q *Query[A, V]) direct(ctx context.Context, args A) (V, error) {
	q.c.DBRead()
	v, err := q.load(ctx, args)
	if err != nil {
		return v, q.err(observe.OpQueryGet, err)
	}
	return v, nil
}

// Invalidate deletes the cached result for args. A missing result is not an
// error; a cache failure is.
func (q *Query[A, V]) Invalidate(ctx context.Context, args A) (err error) {
	ctx, end := q.c.Begin(ctx, observe.OpQueryInvalidate)
	defer func() { end(err) }()
	key, err := q.key(args)
	if err != nil {
		return q.err(observe.OpQueryInvalidate, err)
	}
	if err := q.c.Cache.Delete(key); err != nil && !protocol.IsMiss(err) {
		return q.err(observe.OpQueryInvalidate, err)
	}
	return nil
}

// Stats returns a snapshot of the query's counters.
func (q *Query[A, V]) Stats() observe.Stats { return q.c.Snapshot() }

func (q *Query[A, V]) err(op observe.Op, err error) error {
	return &OpError{Op: op, Table: q.name, Err: err}
}

// open decodes a cached result, reporting nothing.
func (q *Query[A, V]) open(it *memcache.Item) (V, bool) {
	var b box[V]
	k, _, payload, ok := protocol.OpenEnvelope(it.Flags, it.Value)
	if !ok || k != protocol.KindValue || q.codec.Decode(payload, &b) != nil {
		return b.V, false
	}
	return b.V, true
}

// fill runs the loader under the lease protocol (protocol.Core.Leased) and
// caches its result, unless it is larger than MaxItemSize.
func (q *Query[A, V]) fill(ctx context.Context, key string, args A) (any, error) {
	return q.c.Leased(ctx, key,
		func(it *memcache.Item, _ time.Time) (any, bool) { return q.open(it) },
		func(ctx context.Context) (any, []byte, uint32, int32, error) {
			q.c.DBRead()
			v, err := q.load(ctx, args)
			if err != nil {
				return nil, nil, 0, 0, err
			}
			return v, q.envelope(ctx, key, v), protocol.FlagsOf(protocol.KindValue), q.c.Expiry(q.c.Opt.TTL, true), nil
		})
}
