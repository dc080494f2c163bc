package repo

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/singleflight"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/internal/codec"
)

// Store is a repository for one table: rows of type T keyed by K, read
// through memcached and written through to it. It is safe for concurrent use.
type Store[T any, K comparable] struct {
	core
	db    DB
	t     *compiled[T, K]
	codec Codec[T]
	gen   *generation
	w     writeSQL
	group singleflight.Group

	anyOnce  sync.Mutex // guards keyTypes
	keyTypes atomic.Pointer[[]string]
	anySQL   atomic.Pointer[string] // GetMany's statement for composite keys

	insMu  sync.Mutex                // guards insSQL
	insSQL atomic.Pointer[[2]string] // insert and upsert, with the version's sequence
}

// New returns a Store for table over db and cache. opts may be nil. It checks
// the table description (columns against T's fields, the key against K) and
// returns an error naming the problem; it does not touch the database.
func New[T any, K comparable](db DB, cache Cache, table Table[T, K], opts *Options) (*Store[T, K], error) {
	if db == nil || cache == nil {
		return nil, errors.New("repo: New needs a DB and a Cache")
	}
	c, err := compile(table)
	if err != nil {
		return nil, fmt.Errorf("repo: table %q: %w", table.Name, err)
	}
	o := opts.withDefaults()
	cd := table.Codec
	if cd == nil {
		bc, err := codec.For[T]()
		if err != nil {
			return nil, fmt.Errorf("repo: table %q: %w (set Table.Codec)", table.Name, err)
		}
		cd = bc
	}
	kb, err := cachekeys.New(o.Namespace, keyName(table.Name), "c"+strconv.FormatUint(cd.Fingerprint(), 36))
	if err != nil {
		return nil, fmt.Errorf("repo: table %q: %w", table.Name, err)
	}
	s := &Store[T, K]{core: newCore(cache, o), db: db, t: c, codec: cd,
		gen: newGeneration(kb, o.GenerationRefresh), w: newWriteSQL(c, o.Outbox)}
	if mc, ok := cache.(*CacheClient); ok {
		s.meta = mc
	}
	if o.Outbox != "" {
		r := NewRepairer(db, cache, RepairerOptions{Table: o.Outbox, Hooks: o.Hooks})
		s.br.recover = func() error { return r.drain(context.Background(), s.opt.LeaseTTL) }
	}
	return s, nil
}

// Key returns the cache key of k. It is exported for tests and tooling (for
// example, to inspect or delete one key by hand).
func (s *Store[T, K]) Key(k K) string { return s.keyWith(s.gen.builder(&s.core), k) }

// keyWith returns the cache key of k under the key builder kb.
func (s *Store[T, K]) keyWith(kb cachekeys.Builder, k K) string {
	if s.t.keyPart != nil {
		return s.t.keyPart(kb, k)
	}
	args := s.t.keyArgs(k)
	parts := make([]string, len(args))
	for i, a := range args {
		p, err := cachekeys.Part(a)
		if err != nil { // unusual key type: fall back to its printed form
			p = fmt.Sprint(a)
		}
		parts[i] = p
	}
	return kb.Key(parts...)
}

func (s *Store[T, K]) opErr(op string, k K, err error) error {
	return &OpError{Op: op, Table: s.t.name, Key: fmt.Sprint(k), Err: err}
}

// decoded is what an item holds, once opened.
type decoded struct {
	kind    kind
	version int64
	token   []byte // lease token
}

// open decodes item into *v. A corrupt item is deleted, reported and returned
// with kind 0, which callers treat as a miss.
func (s *Store[T, K]) open(it *memcache.Item, v *T) decoded {
	d := s.decode(it, v)
	if d.kind == 0 {
		s.cacheErr("decode", it.Key, ErrCorrupt)
		s.invalidate(it.Key)
	}
	return d
}

// decode decodes item into *v, with kind 0 for corrupt bytes.
func (s *Store[T, K]) decode(it *memcache.Item, v *T) decoded {
	k, ver, payload, ok := openEnvelope(it.Flags, it.Value)
	if ok && k == kindValue {
		if err := s.codec.Decode(payload, v); err != nil {
			ok = false
		}
	}
	if !ok {
		return decoded{}
	}
	return decoded{kind: k, version: ver, token: payload}
}

// envelope encodes a value (v != nil) or an absent marker (v == nil) with the
// given row version. It returns nil, reported, if the result is too large.
func (s *Store[T, K]) envelope(key string, v *T, version int64) (value []byte, flags uint32) {
	b := beginEnvelope(make([]byte, 0, 128), version)
	if v == nil {
		return finishEnvelope(b), flagsOf(kindAbsent)
	}
	b = finishEnvelope(s.codec.Append(b, v))
	if len(b) > s.opt.MaxItemSize {
		s.cacheErr("encode", key, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(b), s.opt.MaxItemSize))
		return nil, 0
	}
	return b, flagsOf(kindValue)
}

func (s *Store[T, K]) versionOf(v *T) int64 {
	if s.t.versionOf == nil {
		return 0
	}
	return s.t.versionOf(v)
}

// Get returns the row with key k, or an error wrapping ErrNotFound.
//
// A hit costs one memcached round trip and a decode. With a *CacheClient
// (see NewCacheClient), the read that misses also takes the key's lease, so
// a miss costs two round trips, read and fill. On a miss, concurrent
// Gets of the same key in this process share one load, and across processes
// the first takes a lease on the key; the others wait up to LeaseWait for its
// fill, then read the database themselves. The fill only replaces its own
// lease, so a read that raced a write can never overwrite the newer value.
// If the cache fails, the row is read from the database.
func (s *Store[T, K]) Get(ctx context.Context, k K) (T, error) {
	var v T
	if err := ctx.Err(); err != nil {
		return v, s.opErr("get", k, err)
	}
	key := s.Key(k)
	if !s.br.allowRead() {
		return s.readAround(ctx, k, key)
	}
	it, l, err := s.get(key)
	if l != nil { // a miss, and the lease is ours
		s.stats.misses.Add(1)
		defer s.handOff(key, l)()
		return s.load(ctx, k, key)
	}
	switch {
	case err == nil:
		d := s.open(it, &v)
		switch d.kind {
		case kindValue:
			s.stats.hits.Add(1)
			return v, nil
		case kindAbsent:
			s.stats.hits.Add(1)
			return v, s.opErr("get", k, ErrNotFound)
		}
	case !isMiss(err):
		s.cacheErr("get", key, err)
		s.br.trip(err)
		return s.readAround(ctx, k, key)
	}
	s.stats.misses.Add(1)
	return s.load(ctx, k, key)
}

type loaded[T any] struct {
	v     T
	found bool
	at    time.Time // when the value was read (database query or cache get)
}

// load collapses concurrent misses of key in this process into one fill. A
// caller whose ctx ends stops waiting; the shared load goes on for the others,
// bounded by LeaseTTL. A caller only takes a shared result that was read
// after the caller began: a load that read before then could miss a write
// acknowledged in between, so the caller takes the next load instead (at
// most one more).
func (s *Store[T, K]) load(ctx context.Context, k K, key string) (T, error) {
	called := time.Now()
	var zero T
	for {
		ch := s.group.DoChan(key, func() (any, error) {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opt.LeaseTTL)
			defer cancel()
			return s.fill(lctx, k, key)
		})
		select {
		case r := <-ch:
			if r.Err != nil {
				return zero, s.opErr("get", k, r.Err)
			}
			l := r.Val.(*loaded[T])
			if l.at.Before(called) {
				continue
			}
			if !l.found {
				return zero, s.opErr("get", k, ErrNotFound)
			}
			return l.v, nil
		case <-ctx.Done():
			return zero, s.opErr("get", k, ctx.Err())
		}
	}
}

// fill is the cross-process half of a miss: take the lease, or wait for
// whoever holds it, or give up waiting and read the database (core.leased).
func (s *Store[T, K]) fill(ctx context.Context, k K, key string) (*loaded[T], error) {
	r, err := s.leased(ctx, key,
		func(it *memcache.Item, at time.Time) (any, bool) {
			l := &loaded[T]{at: at}
			switch s.decode(it, &l.v).kind {
			case kindValue:
				l.found = true
				return l, true
			case kindAbsent:
				return l, true
			}
			return nil, false
		},
		func(ctx context.Context) (any, []byte, uint32, int32, error) {
			l, err := s.selectOne(ctx, k)
			if err != nil {
				return nil, nil, 0, 0, err
			}
			if !l.found {
				value, flags := s.envelope(key, nil, 0)
				return l, value, flags, s.expiry(s.opt.NegativeTTL, true), nil
			}
			value, flags := s.envelope(key, &l.v, s.versionOf(&l.v))
			return l, value, flags, s.expiry(s.opt.TTL, true), nil
		})
	if err != nil {
		return nil, err
	}
	return r.(*loaded[T]), nil
}

// selectOne reads one row from the database, without the cache.
func (s *Store[T, K]) selectOne(ctx context.Context, k K) (*loaded[T], error) {
	s.stats.dbReads.Add(1)
	at := time.Now()
	rows, _ := s.db.Query(ctx, s.t.selectOne, s.t.keyArgs(k)...)
	v, err := pgx.CollectOneRow(rows, s.t.scan)
	if errors.Is(err, pgx.ErrNoRows) {
		return &loaded[T]{at: at}, nil
	}
	if err != nil {
		return nil, err
	}
	return &loaded[T]{v: v, found: true, at: at}, nil
}

// readAround serves a Get from the database while the cache is not used (it
// failed, or the breaker is open). The read may see a write whose cache
// update is still under way, while the cache, if it is reachable again,
// holds an older fill; so unless the cache fails by timing out (a request
// would cost the timeout), the key is deleted after the read, best effort,
// and later readers fill it afresh.
func (s *Store[T, K]) readAround(ctx context.Context, k K, key string) (T, error) {
	v, err := s.readDB(ctx, k)
	if s.br.cheap() {
		_ = s.cache.Delete(key)
	}
	return v, err
}

// readDB serves a Get from the database alone (the cache failed).
func (s *Store[T, K]) readDB(ctx context.Context, k K) (T, error) {
	l, err := s.selectOne(ctx, k)
	if err != nil {
		var zero T
		return zero, s.opErr("get", k, err)
	}
	if !l.found {
		return l.v, s.opErr("get", k, ErrNotFound)
	}
	return l.v, nil
}

// keyName returns name if it is usable in a cache key as is, else a readable
// form with every other byte replaced by '_' and a hash of the real name
// appended, so distinct names never share keys.
func keyName(name string) string {
	if _, err := cachekeys.New("x", name, "x"); err == nil {
		return name
	}
	b := []byte(name)
	if len(b) > 40 {
		b = b[:40]
	}
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			b[i] = '_'
		}
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	return string(b) + "_" + strconv.FormatUint(h.Sum64(), 36)
}
