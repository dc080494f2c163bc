package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// GetMany returns the rows with the given keys that exist, keyed by K;
// missing keys are simply absent from the map (duplicates are read once).
//
// It costs one multi-get (over a *memclient.Client, one pipeline of quiet mg
// requests per server; otherwise gomemcache's GetMulti), plus for the
// misses: their lease adds, one SQL query for all of them (= ANY($1), or
// unnest of the key columns for composite keys), one multi-get, and their
// CAS fills. Over a *memclient.Client or a *memclient.Migration the adds and
// the fills each leave as one pipeline per server (AddMulti,
// CompareAndSwapMulti); over other
// caches they are one round trip per key. Keys leased by others are read
// from the database without waiting. If the cache fails, everything is
// read from the database. Over a memclient.Migration in its fallback phase,
// misses of keys that moved are answered from the old ring as Get's are
// (one more multi-get there, and lease adds for its misses), and copied to
// the new ring through the new ring's leases.
func (s *Store[T, K]) GetMany(ctx context.Context, keys []K) (map[K]T, error) {
	ctx, end := s.c.Begin(ctx, observe.OpGetMany)
	var out map[K]T
	var err error
	if s.near != nil {
		out, err = s.getManyNear(ctx, keys)
	} else {
		out, err = s.getMany(ctx, keys)
	}
	end(err)
	return out, err
}

// AppendMany is GetMany appending the rows to dst, in the order of keys: a
// key with no row is skipped, and a key given twice appends its row twice.
// It reads as GetMany does; through the near-cache (Options.Near), the keys
// it holds are answered without building a map.
func (s *Store[T, K]) AppendMany(ctx context.Context, dst []T, keys []K) (_ []T, err error) {
	ctx, end := s.c.Begin(ctx, observe.OpGetMany)
	defer func() { end(err) }()
	if s.near == nil {
		m, err := s.getMany(ctx, keys)
		if err != nil {
			return dst, err
		}
		for _, k := range keys {
			if v, ok := m[k]; ok {
				dst = append(dst, v)
			}
		}
		return dst, nil
	}
	n := len(dst)
	dst = slices.Grow(dst, len(keys))[:n+len(keys)]
	found := make([]bool, len(keys))
	if err := s.readManyNear(ctx, keys, func(i int, v T) { dst[n+i], found[i] = v, true }); err != nil {
		clear(dst[n:])
		return dst[:n], err
	}
	w := n
	for i, ok := range found {
		if ok {
			dst[w] = dst[n+i]
			w++
		}
	}
	clear(dst[w:])
	return dst[:w], nil
}

// getManyNear is getMany through the near-cache (readManyNear).
func (s *Store[T, K]) getManyNear(ctx context.Context, keys []K) (map[K]T, error) {
	out := make(map[K]T, len(keys))
	if err := s.readManyNear(ctx, keys, func(i int, v T) { out[keys[i]] = v }); err != nil {
		return nil, err
	}
	return out, nil
}

// readManyNear reads keys through the near-cache (see getNear), calling put
// with the index and row of each key that has one. Keys the near-cache
// holds are answered from it, the others read as getMany does and kept.
func (s *Store[T, K]) readManyNear(ctx context.Context, keys []K, put func(i int, v T)) error {
	type pending struct {
		i   int
		key string
		tok nearToken
	}
	var rest []K
	var restKeys []string
	var fill []pending
	kb := s.gen.Builder(s.c)
	now := time.Now().UnixNano() // when the reads began, for every key
	for i, k := range keys {
		key := s.keyWith(kb, k)
		if v, found, hit := s.nearHit(key, now); hit {
			if found {
				put(i, v)
			}
			continue
		}
		if fill == nil {
			n := len(keys) - i
			rest, restKeys, fill = make([]K, 0, n), make([]string, 0, n), make([]pending, 0, n)
		}
		rest, restKeys, fill = append(rest, k), append(restKeys, key), append(fill, pending{i, key, s.near.begin(key)})
	}
	if len(rest) == 0 {
		return nil
	}
	out := make(map[K]T, len(rest))
	if err := s.getManyInto(ctx, rest, restKeys, out); err != nil {
		return err
	}
	for _, f := range fill {
		if v, ok := out[keys[f.i]]; ok {
			put(f.i, v)
			s.nearKeep(f.key, f.tok, now, &v)
		} else {
			s.nearKeep(f.key, f.tok, now, nil)
		}
	}
	return nil
}

// getMany is GetMany without the hooks.
func (s *Store[T, K]) getMany(ctx context.Context, keys []K) (map[K]T, error) {
	out := make(map[K]T, len(keys))
	if err := s.getManyInto(ctx, keys, nil, out); err != nil {
		return nil, err
	}
	return out, nil
}

// getManyInto is getMany adding the rows to out, which holds none of keys;
// ckeys are their cache keys if the caller built them, else nil.
func (s *Store[T, K]) getManyInto(ctx context.Context, keys []K, ckeys []string, out map[K]T) error {
	if len(keys) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return s.manyErr(err)
	}
	// Duplicates are harmless on the hit path (GetMulti answers a key once);
	// they are dropped from the misses below, before leases and SQL.
	uniq := keys
	if ckeys == nil {
		kb := s.gen.Builder(s.c)
		ckeys = make([]string, len(keys))
		for i, k := range keys {
			ckeys[i] = s.keyWith(kb, k)
		}
	}

	// Over a fleet, keys whose server's breaker is open are read from the
	// database, without leases or fills (see readAround); the other
	// servers' keys are read, leased and filled as usual.
	use, cacheOK := ckeys, true
	var blocked []bool // by index into ckeys; nil if no key's server is open
	for i, key := range ckeys {
		if !s.c.AllowRead(key) {
			if blocked == nil {
				use, blocked = append([]string(nil), ckeys[:i]...), make([]bool, len(ckeys))
			}
			blocked[i] = true
			continue
		}
		if blocked != nil {
			use = append(use, key)
		}
	}
	var items map[string]*memcache.Item
	if len(use) > 0 {
		var err error
		if items, err = s.c.GetMulti(use); err != nil {
			// The servers that failed are tripped (see Get); what the
			// others answered stands.
			s.c.CacheErr(ctx, observe.StepGet, use[0], err)
			s.c.TripMany(use, err)
			cacheOK = false
		}
	}
	var missing []int // indexes into uniq
	for i, key := range ckeys {
		it := items[key]
		if it != nil && !s.c.Clean(ctx, key) {
			// This process failed to invalidate the key: its entry may be
			// older than our own write, and its delete fails still. Read
			// the database, and fill nothing.
			cacheOK, it = false, nil
		}
		if it == nil {
			missing = append(missing, i)
			continue
		}
		var v T
		switch s.open(ctx, it, &v).kind {
		case protocol.KindValue:
			out[uniq[i]] = v
			s.c.Hit(ctx, key)
		case protocol.KindAbsent:
			s.c.Hit(ctx, key)
		default:
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if len(missing) > 1 {
		seen := make(map[K]struct{}, len(missing))
		n := 0
		for _, i := range missing {
			if _, dup := seen[uniq[i]]; !dup {
				seen[uniq[i]] = struct{}{}
				missing[n] = i
				n++
			}
		}
		missing = missing[:n]
	}
	for _, i := range missing {
		s.c.Miss(ctx, ckeys[i])
	}
	// The misses this call leases and fills: all but the blocked servers'.
	fill, around := missing, []int(nil)
	if blocked != nil {
		fill = make([]int, 0, len(missing))
		for _, i := range missing {
			if blocked[i] {
				around = append(around, i)
			} else {
				fill = append(fill, i)
			}
		}
	}

	// Lease each missing key before reading, so a write that commits after our
	// read replaces the lease and our fill is dropped.
	tokens := make(map[int]uint64, len(fill))
	primaryOnly := false // some keys have a fallback: fill on the primary ring alone
	if cacheOK && len(fill) > 0 {
		if err := ctx.Err(); err != nil {
			return s.manyErr(err)
		}
		lkeys := make([]string, len(fill))
		for j, i := range fill {
			lkeys[j] = ckeys[i]
		}
		// One pipeline of adds per server; a key held by another filler
		// or a fresh write gets no token.
		toks, fallbacks, err := s.addLeases(lkeys)
		primaryOnly = fallbacks
		for j, i := range fill {
			if toks[j] != 0 {
				tokens[i] = toks[j]
			}
		}
		if err != nil {
			s.c.CacheErr(ctx, observe.StepLease, lkeys[0], err)
			cacheOK = false
		}
	}

	// In a migration's fallback phase, the misses whose lease we took may
	// be answered from the old ring (see fallbackMany); its leases and the
	// other readers' it met there go once the fills below are done.
	var fbr *fallbackRead
	if cacheOK {
		fbr = s.fallbackMany(ctx, fill, ckeys, uniq, tokens, out)
		defer fbr.done(s.c)
	}

	mk := make([]K, 0, len(missing))
	for _, i := range missing {
		if fbr.copy(i) == nil {
			mk = append(mk, uniq[i])
		}
	}
	began := time.Now()
	if len(mk) > 0 {
		rows, err := s.selectMany(ctx, mk)
		if err != nil {
			s.releaseLeases(ckeys, tokens)
			return s.manyErr(err)
		}
		for i := range rows {
			out[s.t.keyOf(&rows[i])] = rows[i]
		}
	}
	if !cacheOK {
		around, fill = missing, nil
	}
	for _, i := range around {
		if s.c.Cheap(ckeys[i]) { // see readAround
			_ = s.c.Cache.Delete(ckeys[i])
		}
	}
	if len(fill) == 0 {
		return nil
	}

	// Settle every key read from the database (see protocol.Core.Settle): fill our
	// leases, and where someone else's value is there now, answer with it.
	mkeys := make([]string, len(fill))
	for j, i := range fill {
		mkeys[j] = ckeys[i]
	}
	cur, err := s.c.GetMulti(mkeys)
	if err != nil {
		s.c.CacheErr(ctx, observe.StepFill, mkeys[0], err)
		return nil
	}
	settle := make([]protocol.Settlement, 0, len(fill))
	settled := make([]int, 0, len(fill)) // settle[j] is missing key settled[j]
	for _, i := range fill {
		key, tok := ckeys[i], tokens[i]
		var value []byte
		var flags uint32
		var exp int32
		if it := fbr.copy(i); it != nil { // the old ring's entry, as it is
			value, flags, exp = it.Value, it.Flags, s.c.Expiry(s.c.Opt.TTL, true)
			if kind, _, _, _ := protocol.OpenEnvelope(it.Flags, it.Value); kind == protocol.KindAbsent {
				exp = s.c.Expiry(s.c.Opt.NegativeTTL, true)
			}
		} else if v, ok := out[uniq[i]]; ok {
			value, flags = s.envelope(ctx, key, &v, s.versionOf(&v))
			exp = s.c.Expiry(s.c.Opt.TTL, true)
		} else {
			value, flags = s.envelope(ctx, key, nil, 0)
			exp = s.c.Expiry(s.c.Opt.NegativeTTL, true)
		}
		if value == nil && tok != 0 {
			s.c.ReleaseLease(key, tok)
			continue
		}
		settle = append(settle, protocol.Settlement{Key: key, Token: tok, It: cur[key], Value: value, Flags: flags, Exp: exp})
		settled = append(settled, i)
	}
	settleMany := s.c.SettleMany
	if primaryOnly {
		settleMany = s.c.PrimarySettleMany
	}
	for j, it := range settleMany(ctx, settle, began) {
		i := settled[j]
		if it == nil {
			continue
		}
		key := ckeys[i]
		var v T
		switch s.open(ctx, it, &v).kind {
		case protocol.KindValue:
			out[uniq[i]] = v
		case protocol.KindAbsent:
			delete(out, uniq[i])
		case kindForeign: // another release's row: order it against a read of our own
			v, err := s.readForeign(ctx, uniq[i], key, it)
			switch {
			case err == nil:
				out[uniq[i]] = v
			case errors.Is(err, ErrNotFound):
				delete(out, uniq[i])
			default:
				return err
			}
		}
	}
	return nil
}

// addLeases takes the leases of keys (Core.AddLeases), those of keys that
// a migration's fallback ring may answer on the primary ring alone
// (Core.PrimaryLeases), as Get takes them: a Migration's Add would first
// delete the old ring's entry that fallbackMany is to read. primaryOnly
// reports that some key has a fallback, so the fills go on the primary
// ring alone too (Core.PrimarySettleMany).
func (s *Store[T, K]) addLeases(keys []string) (tokens []uint64, primaryOnly bool, err error) {
	var fbj []int // indexes of keys with a fallback
	for j, k := range keys {
		if s.c.Fallback(k) != nil {
			fbj = append(fbj, j)
		}
	}
	switch len(fbj) {
	case 0:
		tokens, err = s.c.AddLeases(keys)
		return tokens, false, err
	case len(keys):
		tokens, err = s.c.PrimaryLeases(keys)
		return tokens, true, err
	}
	fbKeys, rest := make([]string, 0, len(fbj)), make([]string, 0, len(keys)-len(fbj))
	restj := make([]int, 0, len(keys)-len(fbj))
	for j, k := range keys {
		if len(fbKeys) < len(fbj) && fbj[len(fbKeys)] == j {
			fbKeys = append(fbKeys, k)
		} else {
			rest, restj = append(rest, k), append(restj, j)
		}
	}
	tokens = make([]uint64, len(keys))
	ft, ferr := s.c.PrimaryLeases(fbKeys)
	for n, j := range fbj {
		tokens[j] = ft[n]
	}
	rt, rerr := s.c.AddLeases(rest)
	for n, j := range restj {
		tokens[j] = rt[n]
	}
	if ferr != nil {
		return tokens, true, ferr
	}
	return tokens, true, rerr
}

// fallbackRead is what GetMany's misses found on the old ring of a
// migration in its fallback phase (see fallbackMany). The nil
// *fallbackRead found nothing.
type fallbackRead struct {
	fb     *memclient.Client
	copied map[int]*memcache.Item // by index of the missing key: the old ring's entry, to copy to the new
	keys   []string               // the old ring's leases taken
	tokens []uint64
	held   []*memcache.Item // other readers' leases met there, as read
	drop   []string         // keys that held something by the time we tried their lease
}

// copy returns the old ring's entry for missing key i, to answer with and
// copy to the new ring, or nil.
func (f *fallbackRead) copy(i int) *memcache.Item {
	if f == nil {
		return nil
	}
	return f.copied[i]
}

// done releases the old ring's leases taken and deletes the other
// readers' leases met there, once the database read and the fills are
// done.
func (f *fallbackRead) done(c *protocol.Core) {
	if f != nil {
		c.FallbackRelease(f.fb, f.keys, f.tokens, f.held, f.drop)
	}
}

// fallbackMany is fromFallback for GetMany's misses whose lease it took on
// the new ring (tokens), with one pipeline per server of the old ring
// instead of a round trip per key, and without waiting for other readers'
// leases (as GetMany never waits):
//   - an entry of this row type there is the answer (a row goes into out)
//     and is copied to the new ring through our lease with the other
//     fills (copy), never by a blind set;
//   - a miss there takes the old ring's lease too, held until the fills
//     are done (done), so that no reader of the old ring fills it
//     meanwhile with an older read;
//   - another reader's lease there (or a key that held something by the
//     time we tried its lease) is read from the database, and deleted
//     there once the fills are done;
//   - a key whose old server is unreachable (its breaker there open, or
//     the read failing and tripping it), or holding another row type's
//     entry or corrupt bytes, is read from the database under our lease
//     alone, as Get's load does.
//
// It returns nil if no missing key has a fallback.
func (s *Store[T, K]) fallbackMany(ctx context.Context, missing []int, ckeys []string, uniq []K, tokens map[int]uint64, out map[K]T) *fallbackRead {
	var f *fallbackRead
	var idx []int // missing keys to read from the old ring
	var keys []string
	for _, i := range missing {
		if tokens[i] == 0 {
			continue
		}
		key := ckeys[i]
		fb := s.c.Fallback(key)
		if fb == nil || (f != nil && fb != f.fb) || !s.c.FallbackAllowed(fb, key) {
			continue
		}
		if f == nil {
			f = &fallbackRead{fb: fb, copied: map[int]*memcache.Item{}}
		}
		idx, keys = append(idx, i), append(keys, key)
	}
	if f == nil {
		return nil
	}
	items, err := s.c.FallbackGetMulti(f.fb, keys)
	var lease []int // missing there: take the old ring's lease
	for _, i := range idx {
		key := ckeys[i]
		it := items[key]
		if it == nil {
			if err == nil || s.c.FallbackAllowed(f.fb, key) { // a miss, not a failed server
				lease = append(lease, i)
			}
			continue
		}
		if len(it.Value) == 0 && it.Flags == 0 { // an empty placeholder: another reader's lease
			f.held = append(f.held, it)
			continue
		}
		var v T
		switch s.open(ctx, it, &v).kind {
		case protocol.KindValue:
			out[uniq[i]] = v
			f.copied[i] = it
		case protocol.KindAbsent:
			f.copied[i] = it
		case protocol.KindLease:
			f.held = append(f.held, it)
		}
	}
	if len(lease) > 0 {
		lkeys := make([]string, len(lease))
		for j, i := range lease {
			lkeys[j] = ckeys[i]
		}
		toks, held := s.c.FallbackLeases(f.fb, lkeys)
		for j, k := range lkeys {
			switch {
			case toks[j] != 0:
				f.keys, f.tokens = append(f.keys, k), append(f.tokens, toks[j])
			case held[j]:
				f.drop = append(f.drop, k)
			}
		}
	}
	return f
}

func (s *Store[T, K]) manyErr(err error) error {
	return &OpError{Op: observe.OpGetMany, Table: s.t.name, Err: err}
}

func (s *Store[T, K]) releaseLeases(ckeys []string, tokens map[int]uint64) {
	for i, tok := range tokens {
		s.c.ReleaseLease(ckeys[i], tok)
	}
}

// selectMany reads the rows of keys from the database in one query.
func (s *Store[T, K]) selectMany(ctx context.Context, keys []K) ([]T, error) {
	s.c.DBRead()
	if s.t.loadMany != nil {
		return s.t.loadMany(ctx, s.db, keys)
	}
	var (
		sql  string
		args []any
	)
	if len(s.t.keyCols) == 1 {
		sql, args = s.t.selectAny, []any{keys}
	} else {
		var err error
		if sql, err = s.compositeSQL(ctx); err != nil {
			return nil, err
		}
		args = s.columnArrays(keys)
	}
	rows, _ := s.db.Query(ctx, sql, args...)
	return pgx.CollectRows(rows, s.t.scan)
}

// columnArrays turns composite keys into one typed slice per key column, the
// arrays that unnest($1::t1[], $2::t2[], ...) takes.
func (s *Store[T, K]) columnArrays(keys []K) []any {
	n := len(s.t.keyCols)
	cols := make([]reflect.Value, n)
	for j, k := range keys {
		args := s.t.keyArgs(k)
		for c := 0; c < n; c++ {
			a := reflect.ValueOf(args[c])
			if j == 0 {
				cols[c] = reflect.MakeSlice(reflect.SliceOf(a.Type()), len(keys), len(keys))
			}
			cols[c].Index(j).Set(a)
		}
	}
	out := make([]any, n)
	for c := range cols {
		out[c] = cols[c].Interface()
	}
	return out
}

// compositeSQL returns the GetMany statement for a composite key.
func (s *Store[T, K]) compositeSQL(ctx context.Context) (string, error) {
	if p := s.anySQL.Load(); p != nil {
		return *p, nil
	}
	types, err := s.keyColumnTypes(ctx)
	if err != nil {
		return "", err
	}
	sql := s.t.selectAnyOf(strings.Join(quoteIdents(s.t.cols), ", "), types)
	s.anySQL.Store(&sql)
	return sql, nil
}

// keyColumnTypes returns the SQL types of a composite key's columns, looked
// up in the catalog on first use unless Table.KeyTypes gave them.
func (s *Store[T, K]) keyColumnTypes(ctx context.Context) ([]string, error) {
	if len(s.t.keyTypes) == len(s.t.keyCols) {
		return s.t.keyTypes, nil
	}
	if p := s.keyTypes.Load(); p != nil {
		return *p, nil
	}
	s.anyOnce.Lock()
	defer s.anyOnce.Unlock()
	if p := s.keyTypes.Load(); p != nil {
		return *p, nil
	}
	types := make([]string, len(s.t.keyCols))
	for i, col := range s.t.keyCols {
		err := s.db.QueryRow(ctx,
			`SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
			 WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped`,
			s.t.ident, col).Scan(&types[i])
		if err != nil {
			return nil, fmt.Errorf("looking up the type of key column %q: %w", col, err)
		}
		if !validTypeName(types[i]) {
			return nil, fmt.Errorf("key column %q has type %q, which GetMany cannot cast to: set Table.KeyTypes", col, types[i])
		}
	}
	s.keyTypes.Store(&types)
	return types, nil
}
