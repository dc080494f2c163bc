package repo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/internal/codec"
	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Store is a repository for one table: rows of type T keyed by K, read
// through memcached and written through to it. It is safe for concurrent use.
type Store[T any, K comparable] struct {
	c     *protocol.Core
	db    DB
	t     *compiled[T, K]
	codec Codec[T]
	fp    [8]byte // the codec's fingerprint, first in every cached row
	gen   *protocol.Generation
	w     writeSQL

	writeTimeout time.Duration // Options.WriteTimeout
	stmtTimeout  string        // statement_timeout of the store's own writes, in ms; "" for none
	near         *NearCache    // Options.Near, or nil
	nearFlat     bool          // T holds no references: the near-cache keeps rows, not their bytes

	anyOnce  sync.Mutex // guards keyTypes
	keyTypes atomic.Pointer[[]string]
	anySQL   atomic.Pointer[string] // GetMany's statement for composite keys

	insMu  sync.Mutex                // guards insSQL
	insSQL atomic.Pointer[[2]string] // insert and upsert, with the version's sequence
}

// New returns a Store for table over db and cache. opts may be nil. It checks
// the table description (names, columns against T's fields, the key against
// K, the codec against T's field types) and returns an error naming the
// problem; it does not touch the database or the cache.
func New[T any, K comparable](db DB, cache Cache, table Table[T, K], opts *Options) (*Store[T, K], error) {
	if db == nil || cache == nil {
		return nil, errors.New("repo: New needs a DB and a Cache")
	}
	c, err := compile(table)
	if err != nil {
		return nil, fmt.Errorf("repo: table %q: %w", table.Name, err)
	}
	cfg := opts.config(table.Name)
	cd := table.Codec
	if cd == nil {
		bc, err := codec.For[T]()
		if err != nil {
			return nil, fmt.Errorf("repo: table %q: %w (or set Table.Codec)", table.Name, err)
		}
		cd = bc
	}
	// Keys do not depend on the row type: every release of a table reads and
	// writes the same keys, and the codec's fingerprint is in each value
	// instead (see decode), so versions compare across releases.
	kb, err := cachekeys.New(cfg.Namespace, protocol.KeyName(table.Name), "r1")
	if err != nil {
		return nil, fmt.Errorf("repo: table %q: %w", table.Name, err)
	}
	// The generation lives beside the rows, under a version part ("g")
	// that no row key has ("r1"), so no key value can be mistaken for it.
	gk, err := cachekeys.New(cfg.Namespace, protocol.KeyName(table.Name), "g")
	if err != nil {
		return nil, fmt.Errorf("repo: table %q: %w", table.Name, err)
	}
	var rec protocol.Recovery
	outbox := ""
	if r := opts.repairer(); r != nil {
		rec, outbox = r, r.Table()
	}
	s := &Store[T, K]{c: protocol.New(cache, cfg, rec), db: db, t: c, codec: cd,
		gen: protocol.NewGeneration(kb, gk.Key("generation"), opts.generationRefresh()), w: newWriteSQL(c, outbox)}
	binary.LittleEndian.PutUint64(s.fp[:], cd.Fingerprint())
	s.c.SetRepairAll(func(context.Context) error { return s.gen.Bump(s.c) })
	s.writeTimeout = opts.writeTimeout()
	if s.writeTimeout > 0 {
		s.stmtTimeout = strconv.FormatInt(s.writeTimeout.Milliseconds(), 10)
	}
	if opts != nil {
		s.near = opts.Near
		s.nearFlat = flat(reflect.TypeFor[T]())
	}
	return s, nil
}

// Key returns the cache key of k under the table's current generation: the
// supported way to inspect or delete one key by hand (tests, tooling).
func (s *Store[T, K]) Key(k K) string { return s.keyWith(s.gen.Builder(s.c), k) }

// Stats returns a snapshot of the store's counters.
func (s *Store[T, K]) Stats() observe.Stats { return s.c.Snapshot() }

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

func (s *Store[T, K]) opErr(op observe.Op, k K, err error) error {
	return &OpError{Op: op, Table: s.t.name, Key: fmt.Sprint(k), Err: err}
}

// decoded is what an item holds, once opened.
type decoded struct {
	kind    protocol.Kind
	version int64
	token   []byte // lease token
}

// open decodes item into *v. A corrupt item is deleted, reported and returned
// with kind 0, which callers treat as a miss.
func (s *Store[T, K]) open(ctx context.Context, it *memcache.Item, v *T) decoded {
	d := s.decode(it, v)
	if d.kind == 0 {
		s.c.CacheErr(ctx, observe.StepDecode, it.Key, ErrCorrupt)
		s.c.Invalidate(ctx, it.Key)
	}
	return d
}

// kindForeign is a row cached by a store of another row type (another
// release's T, whose codec has another fingerprint): its version compares
// with ours, its bytes do not decode as T.
const kindForeign protocol.Kind = 100

// decode decodes item into *v, with kind 0 for corrupt bytes and
// kindForeign for another row type's. A row's payload is the codec's
// fingerprint (8 bytes) and the codec's bytes.
func (s *Store[T, K]) decode(it *memcache.Item, v *T) decoded {
	k, ver, payload, ok := protocol.OpenEnvelope(it.Flags, it.Value)
	if ok && k == protocol.KindValue {
		switch {
		case len(payload) < len(s.fp):
			ok = false
		case string(payload[:len(s.fp)]) != string(s.fp[:]):
			return decoded{kind: kindForeign, version: ver}
		default:
			ok = s.codec.Decode(payload[len(s.fp):], v) == nil
		}
	}
	if !ok {
		return decoded{}
	}
	return decoded{kind: k, version: ver, token: payload}
}

// envelope encodes a value (v != nil) or an absent marker (v == nil) with the
// given row version. It returns nil, reported, if the result is too large.
func (s *Store[T, K]) envelope(ctx context.Context, key string, v *T, version int64) (value []byte, flags uint32) {
	b := protocol.BeginEnvelope(make([]byte, 0, 128), version)
	if v == nil {
		return protocol.FinishEnvelope(b), protocol.FlagsOf(protocol.KindAbsent)
	}
	b = protocol.FinishEnvelope(s.codec.Append(append(b, s.fp[:]...), v))
	if len(b) > s.c.Opt.MaxItemSize {
		s.c.CacheErr(ctx, observe.StepEncode, key, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(b), s.c.Opt.MaxItemSize))
		return nil, 0
	}
	return b, protocol.FlagsOf(protocol.KindValue)
}

func (s *Store[T, K]) versionOf(v *T) int64 {
	if s.t.versionOf == nil {
		return 0
	}
	return s.t.versionOf(v)
}

// Get returns the row with key k, or an error wrapping ErrNotFound.
//
// A hit costs one memcached round trip and a decode. With a *memclient.Client
// (see memclient.New), the read that misses also takes the key's lease, so
// a miss costs two round trips, read and fill. On a miss, concurrent
// Gets of the same key in this process share one load, and across processes
// the first takes a lease on the key; the others wait up to LeaseWait for its
// fill, then read the database themselves. The fill only replaces its own
// lease, so a read that raced a write can never overwrite the newer value.
// If the cache fails, the row is read from the database.
func (s *Store[T, K]) Get(ctx context.Context, k K) (T, error) {
	ctx, end := s.c.Begin(ctx, observe.OpGet)
	v, err := s.get(ctx, k)
	end(err)
	return v, err
}

// get is Get without the hooks.
func (s *Store[T, K]) get(ctx context.Context, k K) (v T, err error) {
	if err := ctx.Err(); err != nil {
		return v, s.opErr(observe.OpGet, k, err)
	}
	key := s.Key(k)
	if s.near != nil {
		return s.getNear(ctx, k, key)
	}
	return s.getCache(ctx, k, key)
}

// getNear is get through the near-cache (Options.Near): a hit there is
// decoded afresh (callers never share a row), a miss reads memcached and
// keeps what it answered unless an invalidation overlapped the read.
func (s *Store[T, K]) getNear(ctx context.Context, k K, key string) (v T, err error) {
	now := time.Now().UnixNano() // when the read began: the entry's age counts from it
	if v, found, hit := s.nearHit(key, now); hit {
		if !found {
			return v, s.opErr(observe.OpGet, k, ErrNotFound)
		}
		return v, nil
	}
	tok := s.near.begin(key)
	v, err = s.getCache(ctx, k, key)
	switch {
	case err == nil:
		s.nearKeep(key, tok, now, &v)
	case errors.Is(err, ErrNotFound):
		s.nearKeep(key, tok, now, nil)
	}
	return v, err
}

// nearHit looks key up in the near-cache: hit reports an entry to answer
// with, found that it is a row (v, a copy of the row or decoded afresh).
func (s *Store[T, K]) nearHit(key string, now int64) (v T, found, hit bool) {
	e, ok := s.near.get(key, now)
	switch {
	case !ok:
		return v, false, false
	case !e.found:
		return v, false, true
	case e.v != nil:
		v, ok = e.v.(T) // another T under the same key (not ours) is a miss
		return v, ok, ok
	}
	return s.nearDecode(e.b)
}

// nearDecode is nearHit's decode of an encoded entry, in a function of its
// own: the row it decodes into escapes to the heap, and nearHit's own
// result, for a row kept as it is, then does not.
func (s *Store[T, K]) nearDecode(b []byte) (v T, found, hit bool) {
	if s.codec.Decode(b, &v) != nil {
		return v, false, false
	}
	return v, true, true
}

// nearKeep keeps in the near-cache what a read of key that began at (with
// tok) found: the row v, or nil for "not found". A row without references
// is kept as it is (a copy of it is a deep copy); any other is kept
// encoded, so that no caller can change what the next one reads.
func (s *Store[T, K]) nearKeep(key string, tok nearToken, at int64, v *T) {
	e := nearEntry{at: at}
	switch {
	case v != nil && s.nearFlat:
		e.v, e.found = *v, true
	case v != nil:
		e.b, e.found = s.codec.Append(nil, v), true
	}
	s.near.put(key, tok, e)
}

// flat reports whether values of t hold no references to memory a copy
// would share (slices, maps, pointers, interfaces, channels, functions): a
// copy of such a value is a deep copy. time.Time counts as flat, since its
// only pointer is to an immutable *time.Location.
func flat(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		return true
	case reflect.Array:
		return flat(t.Elem())
	case reflect.Struct:
		if t == reflect.TypeFor[time.Time]() {
			return true
		}
		for i := range t.NumField() {
			if !flat(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}

// getCache is get through memcached.
func (s *Store[T, K]) getCache(ctx context.Context, k K, key string) (v T, err error) {
	if !s.c.AllowRead(key) || !s.c.Clean(ctx, key) {
		return s.readAround(ctx, k, key)
	}
	it, l, err := s.c.Get(key)
	if l != nil && l.Refresh() { // a hit close to expiry, whose refresh we won
		if kind, _, _, ok := protocol.OpenEnvelope(it.Flags, it.Value); ok && kind == protocol.KindValue {
			s.refresh(ctx, k, key, l)
		} else {
			l.Release() // a "not found" or tombstone lives NegativeTTL, and is not refreshed
		}
		l = nil
	}
	if l != nil { // a miss, and the lease is ours
		s.c.Miss(ctx, key)
		if fb := s.c.Fallback(key); fb != nil && s.c.FallbackAllowed(fb, key) {
			if v, err, ok := s.fromFallback(ctx, fb, k, key, l); ok {
				return v, err
			}
		}
		defer s.c.HandOff(key, l)()
		return s.load(ctx, k, key)
	}
	switch {
	case err == nil:
		d := s.open(ctx, it, &v)
		switch d.kind {
		case protocol.KindValue:
			s.c.Hit(ctx, key)
			return v, nil
		case protocol.KindAbsent:
			s.c.Hit(ctx, key)
			return v, s.opErr(observe.OpGet, k, ErrNotFound)
		case kindForeign:
			s.c.Miss(ctx, key)
			return s.readForeign(ctx, k, key, it)
		}
	case !protocol.IsMiss(err):
		s.c.CacheErr(ctx, observe.StepGet, key, err)
		s.c.Trip(key, err)
		return s.readAround(ctx, k, key)
	}
	s.c.Miss(ctx, key)
	return s.load(ctx, k, key)
}

// fromFallback answers a miss of key, whose lease l this read took on the
// new ring, from the old ring of a migration in its fallback phase, where
// readers of the previous phase still fill entries. It reads the old ring
// under the lease protocol too, so that the two rings' fillers never race:
//   - an entry of this row type there is returned and copied to the new
//     ring through l (never by a blind set: a writer that deleted the lease
//     meanwhile wins). It is current: every writer in the phases next to
//     this one changes the old ring before the new, so a read of the old
//     ring after l was taken sees any change that did not take l from us.
//   - a miss there takes the old ring's lease too, and holds it while the
//     load reads the database and fills l: no reader of the old ring can
//     fill it meanwhile with an older read, which other readers would then
//     see after ours.
//   - another reader's lease there: wait for its fill, as for a lease on
//     one ring, up to LeaseWait; then load, and delete that slow lease.
//
// ok is false when the old ring cannot help (unreachable, another row
// type's entry): l is then still ours, for the caller's load. A read that
// fails trips the breaker of key's server in the old ring, and while it is
// open the caller does not call fromFallback (see Core.FallbackAllowed).
func (s *Store[T, K]) fromFallback(ctx context.Context, fb *memclient.Client, k K, key string, l *memclient.Lease) (v T, err error, ok bool) {
	deadline := time.Now().Add(s.c.Opt.LeaseWait)
	backoff := time.Millisecond
	for {
		it, old, gerr := s.c.FallbackLeaseGet(fb, key)
		switch {
		case gerr != nil:
			return v, nil, false
		case old != nil: // missing there too; its lease is ours
			defer old.Release()
			defer s.c.HandOff(key, l)()
			v, err = s.load(ctx, k, key)
			return v, err, true
		}
		kind := protocol.KindLease // an empty placeholder: another reader's lease
		if len(it.Value) != 0 || it.Flags != 0 {
			kind = s.open(ctx, it, &v).kind
		}
		switch kind {
		case protocol.KindValue, protocol.KindAbsent:
			ttl := s.c.Opt.TTL
			if kind == protocol.KindAbsent {
				ttl = s.c.Opt.NegativeTTL
				err = s.opErr(observe.OpGet, k, ErrNotFound)
			}
			s.c.FillFrom(ctx, l, it, s.c.Expiry(ttl, true))
			return v, err, true
		case protocol.KindLease: // another reader fills the old ring
			if time.Now().After(deadline) {
				defer s.c.HandOff(key, l)()
				v, err = s.load(ctx, k, key)
				_ = fb.Delete(key) // a delete is always safe
				return v, err, true
			}
			if err := protocol.Sleep(ctx, backoff); err != nil {
				l.Release()
				return v, s.opErr(observe.OpGet, k, err), true
			}
			backoff = min(2*backoff, 32*time.Millisecond)
		default:
			return v, nil, false
		}
	}
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
	r, err := s.c.Share(ctx, key,
		func(ctx context.Context) (any, error) { return s.fill(ctx, k, key) },
		func(r any, called time.Time) bool { return !r.(*loaded[T]).at.Before(called) })
	var zero T
	if err != nil {
		return zero, s.opErr(observe.OpGet, k, err)
	}
	l := r.(*loaded[T])
	if !l.found {
		return zero, s.opErr(observe.OpGet, k, ErrNotFound)
	}
	return l.v, nil
}

// fill is the cross-process half of a miss: take the lease, or wait for
// whoever holds it, or give up waiting and read the database (protocol.Core.Leased).
func (s *Store[T, K]) fill(ctx context.Context, k K, key string) (*loaded[T], error) {
	r, err := s.c.Leased(ctx, key,
		func(it *memcache.Item, at time.Time) (any, bool) {
			l := &loaded[T]{at: at}
			switch s.decode(it, &l.v).kind {
			case protocol.KindValue:
				l.found = true
				return l, true
			case protocol.KindAbsent:
				return l, true
			case kindForeign:
				return protocol.Foreign, true
			}
			return nil, false
		},
		func(ctx context.Context) (any, []byte, uint32, int32, error) {
			l, err := s.selectOne(ctx, k)
			if err != nil {
				return nil, nil, 0, 0, err
			}
			if !l.found {
				value, flags := s.envelope(ctx, key, nil, 0)
				return l, value, flags, s.c.Expiry(s.c.Opt.NegativeTTL, true), nil
			}
			value, flags := s.envelope(ctx, key, &l.v, s.versionOf(&l.v))
			return l, value, flags, s.c.Expiry(s.c.Opt.TTL, true), nil
		})
	if err != nil {
		return nil, err
	}
	return r.(*loaded[T]), nil
}

// refresh re-reads the row of key in the background, for a hit on a row
// whose early refresh (Options.EarlyRefresh) this read won, and replaces the entry
// through the refresh lease l: a CAS on the hit, so a writer that changed or
// deleted the entry meanwhile wins, and a read that began before a write
// can only put back a version the write's own write-through then replaces.
func (s *Store[T, K]) refresh(ctx context.Context, k K, key string, l *memclient.Lease) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.c.Opt.LeaseTTL)
	go func() {
		defer cancel()
		r, err := s.selectOne(ctx, k)
		if err != nil {
			l.Release() // leaves the entry as it is
			return
		}
		if !r.found { // deleted meanwhile: its delete's write-through replaces the entry
			l.Release()
			return
		}
		value, flags := s.envelope(ctx, key, &r.v, s.versionOf(&r.v))
		if value == nil {
			l.Release()
			return
		}
		s.c.FillFrom(ctx, l, &memcache.Item{Value: value, Flags: flags}, s.c.Expiry(s.c.Opt.TTL, true))
	}()
}

// selectOne reads one row from the database, without the cache.
func (s *Store[T, K]) selectOne(ctx context.Context, k K) (*loaded[T], error) {
	s.c.DBRead()
	at := time.Now()
	v, err := s.readRow(ctx, s.db, k)
	if errors.Is(err, pgx.ErrNoRows) {
		return &loaded[T]{at: at}, nil
	}
	if err != nil {
		return nil, err
	}
	return &loaded[T]{v: v, found: true, at: at}, nil
}

// readForeign serves a Get whose key holds a row cached by another row type
// (another release), whose version it can read but whose bytes it cannot
// decode. It reads the database: if its row is as new as the cached one or
// newer, it replaces the entry with its own encoding by CAS, so entries
// convert to the reading release; if the cached row is newer, its read is
// older than the cache and it reads again. It never answers ahead of the
// cache: when its CAS loses, it looks at the key again (a row of its own
// type as new as its read is the answer; an older one, or another foreign
// one, is replaced in turn). After three rounds it deletes the key.
func (s *Store[T, K]) readForeign(ctx context.Context, k K, key string, it *memcache.Item) (T, error) {
	var zero T
	var l *loaded[T]
	for try := 0; try < 3; try++ {
		_, cached, _, _ := protocol.OpenEnvelope(it.Flags, it.Value)
		var err error
		if l, err = s.selectOne(ctx, k); err != nil {
			return zero, s.opErr(observe.OpGet, k, err)
		}
		if !l.found || s.t.versionIdx < 0 {
			break // gone, or no versions to order the entry against our read
		}
		ver := s.versionOf(&l.v)
		if ver >= cached {
			value, flags := s.envelope(ctx, key, &l.v, ver)
			if value == nil {
				break
			}
			it.Value, it.Flags, it.Expiration = value, flags, s.c.Expiry(s.c.Opt.TTL, true)
			err := s.c.Cache.CompareAndSwap(it)
			if err == nil {
				s.c.Stats.Fills.Add(1)
				return l.v, nil
			}
			if !protocol.IsLost(err) {
				break
			}
		}
		// The entry is newer than our read, or changed under our CAS: look again.
		next, err := s.c.Cache.Get(key)
		if protocol.IsMiss(err) {
			return s.answer(l, k) // nothing cached to contradict our read
		}
		if err != nil {
			break
		}
		var v T
		d := s.decode(next, &v)
		switch d.kind {
		case protocol.KindValue:
			if d.version >= ver {
				return v, nil // the cache is as new as our read: its row is the answer
			}
		case protocol.KindAbsent:
			if d.version >= ver {
				return zero, s.opErr(observe.OpGet, k, ErrNotFound)
			}
		case kindForeign:
		default: // a lease or corrupt bytes: a delete settles it
			s.c.Invalidate(ctx, key)
			return s.answer(l, k)
		}
		it = next
	}
	s.c.Invalidate(ctx, key)
	return s.answer(l, k)
}

// answer returns a database read's result as Get does.
func (s *Store[T, K]) answer(l *loaded[T], k K) (T, error) {
	if !l.found {
		var zero T
		return zero, s.opErr(observe.OpGet, k, ErrNotFound)
	}
	return l.v, nil
}

// readRow reads the row of k from db: with Table.Load if set, else with
// the store's SELECT. A missing row is an error wrapping pgx.ErrNoRows.
func (s *Store[T, K]) readRow(ctx context.Context, db DB, k K) (T, error) {
	if s.t.load != nil {
		return s.t.load(ctx, db, k)
	}
	rows, _ := db.Query(ctx, s.t.selectOne, s.t.keyArgs(k)...)
	return pgx.CollectOneRow(rows, s.t.scan)
}

// readAround serves a Get from the database while the cache is not used (it
// failed, or the breaker is open). The read may see a write whose cache
// update is still under way, while the cache, if it is reachable again,
// holds an older fill; so unless the cache fails by timing out (a request
// would cost the timeout), the key is deleted after the read, best effort,
// and later readers fill it afresh.
func (s *Store[T, K]) readAround(ctx context.Context, k K, key string) (T, error) {
	v, err := s.readDB(ctx, k)
	if s.c.Cheap(key) {
		_ = s.c.Cache.Delete(key)
	}
	return v, err
}

// readDB serves a Get from the database alone (the cache failed).
func (s *Store[T, K]) readDB(ctx context.Context, k K) (T, error) {
	l, err := s.selectOne(ctx, k)
	if err != nil {
		var zero T
		return zero, s.opErr(observe.OpGet, k, err)
	}
	if !l.found {
		return l.v, s.opErr(observe.OpGet, k, ErrNotFound)
	}
	return l.v, nil
}

// InvalidateAll makes every cached row of the table unreachable, for example
// after a bulk change made outside the store. This process sees the new
// generation at once; other processes see it within Options.GenerationRefresh,
// and until then may still serve rows cached before the call. Old keys expire
// by their TTL. The generation lives in memcached: if its key alone is
// evicted while rows cached before the call are still there, the generation
// falls back to 0 and those rows could be served again, so prefer
// InvalidateAll for rare bulk changes and a short TTL for tables changed
// outside the stores. The generation is the table's: Stores, Counters and
// Leaderboards over the same table (and namespace) share it, so this call,
// or the WAL invalidator's after a TRUNCATE, drops what each of them cached.
func (s *Store[T, K]) InvalidateAll(ctx context.Context) (err error) {
	ctx, end := s.c.Begin(ctx, observe.OpInvalidateAll)
	defer func() { end(err) }()
	if err := ctx.Err(); err != nil {
		return &OpError{Op: observe.OpInvalidateAll, Table: s.t.name, Err: err}
	}
	if err := s.gen.Bump(s.c); err != nil {
		return &OpError{Op: observe.OpInvalidateAll, Table: s.t.name, Err: err}
	}
	return nil
}
