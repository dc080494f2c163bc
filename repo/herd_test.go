package repo_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// The cross-process herd: several Stores, each with its own pgx pool and its
// own memcached client (as separate processes would have), share one table
// and one namespace. Many readers released at once Get one cold key, and the
// lease must let exactly one SELECT through. (TestHerdOneProcess covers one
// Store, TestSharedLoadSurvivesACancelledCaller a cancelled caller sharing a
// load in one process.)

const (
	herdInstances = 4
	herdPerStore  = 64
	herdReaders   = herdInstances * herdPerStore
	herdID        = int64(7)
)

// herdSelect matches Store.Get's primary-key SELECT of the products table.
var herdSelect = regexp.MustCompile(`^SELECT .+ FROM "?products"? WHERE "?id"? = \$1$`)

// herdDB wraps a DB and counts the primary-key SELECTs sent through it to
// the server (and, apart, every other statement: a herd of Gets should make
// none). before, if set, runs ahead of each SELECT and returns the context
// to run it with, so a test can hold a reader between taking the lease and
// reading, or make its read fail: a SELECT run with a dead context never
// reaches the server and counts as an attempt only.
type herdDB struct {
	repo.Beginner
	attempts atomic.Int64
	selects  atomic.Int64
	other    atomic.Int64
	before   func(ctx context.Context) context.Context
}

func (c *herdDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if !herdSelect.MatchString(sql) {
		c.other.Add(1)
		return c.Beginner.Query(ctx, sql, args...)
	}
	c.attempts.Add(1)
	if c.before != nil {
		ctx = c.before(ctx)
	}
	if ctx.Err() == nil {
		c.selects.Add(1)
	}
	return c.Beginner.Query(ctx, sql, args...)
}

func (c *herdDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.other.Add(1)
	return c.Beginner.QueryRow(ctx, sql, args...)
}

func (c *herdDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.other.Add(1)
	return c.Beginner.Exec(ctx, sql, args...)
}

func (c *herdDB) Begin(ctx context.Context) (pgx.Tx, error) {
	c.other.Add(1)
	return c.Beginner.Begin(ctx)
}

// herdStore is one "process": a Store over its own pool and memcached client.
type herdStore struct {
	*repo.Store[Product, int64]
	db *herdDB
}

func newHerdStore(t *testing.T, e *env, o repo.Options, before func(context.Context) context.Context) *herdStore {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), e.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	mc, err := cacheClient(herdPerStore, time.Second, e.MCAddr)
	if err != nil {
		t.Fatal(err)
	}
	db := &herdDB{Beginner: pool, before: before}
	o.Namespace = e.NS
	s, err := repo.New(db, mc, productTable, &o)
	if err != nil {
		t.Fatal(err)
	}
	return &herdStore{Store: s, db: db}
}

// herd is herdInstances stores over one table and namespace. holder, set
// once, is the index of the store whose SELECT ran first (-1 if none yet).
type herd struct {
	stores []*herdStore
	holder atomic.Int32
}

// newHerd makes the stores; hold, if set, is called in the first SELECT of
// any of them (the lease holder's read) before it runs.
func newHerd(t *testing.T, e *env, o repo.Options, hold func(ctx context.Context) context.Context) *herd {
	t.Helper()
	h := &herd{}
	h.holder.Store(-1)
	for i := range herdInstances {
		h.stores = append(h.stores, newHerdStore(t, e, o, func(ctx context.Context) context.Context {
			if hold != nil && h.holder.CompareAndSwap(-1, int32(i)) {
				return hold(ctx)
			}
			return ctx
		}))
	}
	return h
}

func (h *herd) stats() (sum observe.Stats, per []observe.Stats) {
	for _, s := range h.stores {
		st := s.Stats()
		per = append(per, st)
		sum.Hits += st.Hits
		sum.Misses += st.Misses
		sum.Fills += st.Fills
		sum.DBReads += st.DBReads
		sum.LeaseWaits += st.LeaseWaits
	}
	return sum, per
}

// queries returns the primary-key SELECTs the stores sent, and the number of
// other statements.
func (h *herd) queries() (selects, other int64) {
	for _, s := range h.stores {
		selects += s.db.selects.Load()
		other += s.db.other.Load()
	}
	return selects, other
}

// waiting reports whether all n readers have missed and every store but
// except (-1: none) is polling another's lease.
func (h *herd) waiting(n uint64, except int) bool {
	sum, per := h.stats()
	if sum.Misses < n {
		return false
	}
	for i, st := range per {
		if i != except && st.LeaseWaits == 0 {
			return false
		}
	}
	return true
}

// read starts herdPerStore readers of id on every store, blocked on a
// barrier, releases them at once, and returns a channel that yields every
// reader's error (nil if it got want) and is closed when all are done.
func (h *herd) read(id int64, want Product) <-chan error {
	barrier := make(chan struct{})
	errs := make(chan error, herdReaders)
	var wg sync.WaitGroup
	for i, s := range h.stores {
		for range herdPerStore {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-barrier
				rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				p, err := s.Get(rctx, id)
				if err == nil && !sameProduct(p, want) {
					err = fmt.Errorf("store %d: got %+v, want %+v", i, p, want)
				} else if err != nil {
					err = fmt.Errorf("store %d: %w", i, err)
				}
				errs <- err
			}()
		}
	}
	close(barrier)
	go func() { wg.Wait(); close(errs) }()
	return errs
}

// collectHerd drains errs and fails t on the first error.
func collectHerd(t *testing.T, errs <-chan error) {
	t.Helper()
	n := 0
	var first error
	for err := range errs {
		n++
		if err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		t.Fatalf("a reader failed: %v", first)
	}
	if n != herdReaders {
		t.Fatalf("%d readers answered, want %d", n, herdReaders)
	}
}

// herdWaitFor polls cond every millisecond until it holds, failing t after d.
func herdWaitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// herdRow inserts the herd's row and returns it as the database has it.
func herdRow(t *testing.T, e *env) Product {
	t.Helper()
	e.insertProduct(t, herdID, "herded", 4200)
	rows, _ := e.Pool.Query(ctx, "SELECT id, article_number, name, category_id, price_cents, updated_at, version FROM products WHERE id = $1", herdID)
	p, err := pgx.CollectOneRow(rows, pgx.RowToStructByName[Product])
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A cold key read by 256 goroutines over 4 stores costs one SELECT. The lease
// holder's read is held until every reader has missed and every other store
// is polling the lease, so all of them provably wait for that one read (with
// LeaseWait far longer than the hold, none gives up and reads the database).
func TestHerd(t *testing.T) {
	e := newEnv(t)
	want := herdRow(t, e)
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	h := newHerd(t, e, repo.Options{LeaseWait: 30 * time.Second, LeaseTTL: time.Minute},
		func(ctx context.Context) context.Context { <-release; return ctx })

	errs := h.read(herdID, want)
	herdWaitFor(t, 30*time.Second, "every reader waits for the lease holder", func() bool {
		holder := int(h.holder.Load())
		return holder >= 0 && h.waiting(herdReaders, holder)
	})
	releaseOnce.Do(func() { close(release) })
	collectHerd(t, errs)

	selects, other := h.queries()
	sum, _ := h.stats()
	testenv.Summaryf("herd: readers=%d instances=%d db_queries=%d\n", herdReaders, herdInstances, selects)
	t.Logf("lease holder: store %d; stats over all stores: %+v", h.holder.Load(), sum)
	if selects != 1 || other != 0 {
		t.Fatalf("%d primary-key SELECTs and %d other statements, want exactly 1 and 0", selects, other)
	}
	if sum.Fills != 1 {
		t.Errorf("%d fills, want 1", sum.Fills)
	}
	// Every later Get is a hit.
	for i, s := range h.stores {
		before := s.Stats().Hits
		if p, err := s.Get(ctx, herdID); err != nil || !sameProduct(p, want) || s.Stats().Hits != before+1 {
			t.Errorf("store %d after the herd: %+v, %v (want a hit)", i, p, err)
		}
	}
}

// The first reader's caller gives up (its context is cancelled) while its
// store holds the lease and reads: the read and the fill go on, and the 256
// readers on the 4 stores still get the row from that one SELECT.
func TestHerdHolderCallerCancelled(t *testing.T) {
	e := newEnv(t)
	want := herdRow(t, e)
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	h := newHerd(t, e, repo.Options{LeaseWait: 30 * time.Second, LeaseTTL: time.Minute},
		func(ctx context.Context) context.Context { close(entered); <-release; return ctx })

	cctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() { _, err := h.stores[0].Get(cctx, herdID); first <- err }()
	<-entered // store 0 holds the lease and is in its SELECT
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled holder's caller: %v, want context.Canceled", err)
	}

	errs := h.read(herdID, want)
	herdWaitFor(t, 30*time.Second, "every reader waits for the lease holder", func() bool {
		return h.waiting(herdReaders+1, 0)
	})
	releaseOnce.Do(func() { close(release) })
	collectHerd(t, errs)

	selects, other := h.queries()
	sum, _ := h.stats()
	testenv.Summaryf("herd: readers=%d instances=%d holder=cancelled db_queries=%d\n", herdReaders, herdInstances, selects)
	if selects != 1 || other != 0 || sum.Fills != 1 {
		t.Fatalf("%d SELECTs, %d other statements, %d fills; want 1, 0, 1 (stats %+v)", selects, other, sum.Fills, sum)
	}
}

// A lease holder that dies (here: a fifth store whose SELECT never returns,
// its caller cancelled) leaves its lease in the cache until LeaseTTL. The
// 256 readers of the 4 other stores must still get the row, with a known
// number of SELECTs:
//
//   - fallback: LeaseWait < LeaseTTL, so every store waits LeaseWait and then
//     reads the database itself, without filling: one SELECT per store.
//   - expiry: the lease expires while the readers still wait; one of them
//     takes a new lease and fills: one SELECT in all.
//   - failed: the holder's read fails, so it releases its lease early; one
//     waiter takes a new lease and fills: one SELECT in all.
func TestHerdDeadHolder(t *testing.T) {
	for _, tc := range []struct {
		name                string
		leaseTTL, leaseWait time.Duration
		// readersAfter delays the readers after the holder took its lease.
		readersAfter time.Duration
		// fail makes the holder's read fail once every reader waits,
		// instead of never returning.
		fail        bool
		wantSelects int64
		wantFills   int
	}{
		// Each store falls back after LeaseWait and deletes the dead lease,
		// so a store still waiting may find the key free (it leases and
		// fills) or filled (it reads nothing): at most one read per store
		// (wantSelects -1), fewer than herdInstances fills.
		{name: "fallback", leaseTTL: time.Minute, leaseWait: time.Second, wantSelects: -1, wantFills: -1},
		// The lease lives at most 2s (memcached counts whole seconds); the
		// readers start 1.5s after it was taken, so it expires within 0.5s
		// of their start, before their 1s LeaseWait (at most LeaseTTL/2) ends.
		{name: "expiry", leaseTTL: 2 * time.Second, leaseWait: time.Second, readersAfter: 1500 * time.Millisecond, wantSelects: 1, wantFills: 1},
		{name: "failed", leaseTTL: time.Minute, leaseWait: 30 * time.Second, fail: true, wantSelects: 1, wantFills: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			want := herdRow(t, e)
			o := repo.Options{LeaseTTL: tc.leaseTTL, LeaseWait: tc.leaseWait}

			// The holder: its own pool and client, like the others.
			entered, release := make(chan struct{}), make(chan struct{})
			var releaseOnce sync.Once
			t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
			holder := newHerdStore(t, e, o, func(ctx context.Context) context.Context {
				close(entered)
				<-release
				// Whether it failed or died, its read never reaches the server.
				dead, cancel := context.WithCancel(ctx)
				cancel()
				return dead
			})
			h := newHerd(t, e, o, nil)

			cctx, cancel := context.WithCancel(ctx)
			first := make(chan error, 1)
			go func() { _, err := holder.Get(cctx, herdID); first <- err }()
			<-entered
			leased := time.Now()
			cancel()
			if err := <-first; !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled holder's caller: %v, want context.Canceled", err)
			}
			time.Sleep(tc.readersAfter)

			began := time.Now()
			errs := h.read(herdID, want)
			if tc.fail {
				herdWaitFor(t, 30*time.Second, "every reader waits for the lease holder", func() bool {
					return h.waiting(herdReaders, -1)
				})
				releaseOnce.Do(func() { close(release) })
			}
			collectHerd(t, errs)
			took := time.Since(began)

			selects, other := h.queries()
			sum, _ := h.stats()
			testenv.Summaryf("herd: readers=%d instances=%d holder=dead/%s lease_ttl=%v lease_wait=%v db_queries=%d\n",
				herdReaders, herdInstances, tc.name, tc.leaseTTL, tc.leaseWait, selects)
			t.Logf("readers done in %v (%v after the lease was taken); stats over the 4 stores: %+v",
				took.Round(time.Millisecond), time.Since(leased).Round(time.Millisecond), sum)
			fillsOK := sum.Fills == uint64(tc.wantFills) || tc.wantFills < 0 && sum.Fills < herdInstances
			selectsOK := selects == tc.wantSelects || tc.wantSelects < 0 && selects >= 1 && selects <= herdInstances
			if !selectsOK || other != 0 || !fillsOK {
				t.Fatalf("%d SELECTs, %d other statements, %d fills; want %d, 0, %d (stats %+v)",
					selects, other, sum.Fills, tc.wantSelects, tc.wantFills, sum)
			}
			if tc.name == "fallback" && took < tc.leaseWait {
				t.Errorf("readers fell back after %v, before LeaseWait (%v)", took, tc.leaseWait)
			}
			if a, s := holder.db.attempts.Load(), holder.db.selects.Load(); a != 1 || s != 0 {
				t.Errorf("the holder tried %d SELECTs and sent %d, want 1 and 0", a, s)
			}
		})
	}
}
