package repo_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// fallbackRig is a migration's two rings over real memcached processes,
// with rows in the database: the old ring lists old, the new one new
// (addresses of started nodes or of proxies in front of them).
type fallbackRig struct {
	e        *env
	old, new *memclient.Client
	ids      []int64
}

func newFallbackRig(t *testing.T, rows int, old, new []string, timeout time.Duration) *fallbackRig {
	t.Helper()
	r := &fallbackRig{e: newEnv(t)}
	var err error
	if r.old, err = memclient.New(memclient.Config{Servers: old, Timeout: timeout}); err != nil {
		t.Fatal(err)
	}
	if r.new, err = memclient.New(memclient.Config{Servers: new, Timeout: timeout}); err != nil {
		t.Fatal(err)
	}
	for id := int64(1); id <= int64(rows); id++ {
		r.e.insertProduct(t, id, fmt.Sprint("p", id), id)
		r.ids = append(r.ids, id)
	}
	return r
}

// store returns a store over a Migration in phase p, on db (the pool if nil).
func (r *fallbackRig) store(t *testing.T, p memclient.Phase, db repo.DB, o *repo.Options) (*repo.Store[Product, int64], *memclient.Migration) {
	t.Helper()
	m, err := memclient.NewMigration(r.old, r.new, p)
	if err != nil {
		t.Fatal(err)
	}
	if db == nil {
		db = r.e.Pool
	}
	if o == nil {
		o = r.e.Opts(nil)
	}
	return r.e.store(t, db, m, productTable, o), m
}

// moved returns the ids whose key lives on another server in the new ring
// (those a fallback-phase miss reads from the old ring).
func (r *fallbackRig) moved(t *testing.T, s *repo.Store[Product, int64], m *memclient.Migration) (moved, staying []int64) {
	t.Helper()
	fb, err := memclient.NewMigration(r.old, r.new, memclient.PhaseFallback)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range r.ids {
		if fb.Fallback(s.Key(id)) != nil {
			moved = append(moved, id)
		} else {
			staying = append(staying, id)
		}
	}
	if len(moved) == 0 || len(staying) == 0 {
		t.Fatalf("%d moved and %d staying keys: the run proves nothing", len(moved), len(staying))
	}
	return moved, staying
}

// TestGetManyFallback: 3 nodes to 4, the old ring warm. In the fallback
// phase a GetMany of every row is answered without a database read: the
// keys that stay are hits on their (shared) server, and the moved ones
// misses on the new ring answered from the old one and copied to the new
// through its leases, which the new-reads phase then hits.
func TestGetManyFallback(t *testing.T) {
	var addrs []string
	for range 4 {
		addrs = append(addrs, startPrivateMemcached(t).Addr())
	}
	r := newFallbackRig(t, 200, addrs[:3], addrs, time.Second)
	warm, _ := r.store(t, memclient.PhaseWriteBoth, nil, nil)
	if got, err := warm.GetMany(ctx, r.ids); err != nil || len(got) != len(r.ids) {
		t.Fatalf("warming the old ring: %d rows, %v", len(got), err)
	}
	db, queries := countDB(r.e.Pool)
	s, m := r.store(t, memclient.PhaseFallback, db, nil)
	moved, _ := r.moved(t, s, m)
	got, err := s.GetMany(ctx, r.ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range r.ids {
		if got[id].Name != fmt.Sprint("p", id) {
			t.Errorf("row %d: %+v", id, got[id])
		}
	}
	if n := queries.Load(); n != 0 {
		t.Errorf("%d database queries: the moved keys were not answered from the old ring", n)
	}
	if st := s.Stats(); st.Fills != uint64(len(moved)) || st.Hits != uint64(len(r.ids)-len(moved)) {
		t.Errorf("stats %+v: want %d fills (the moved keys copied) and %d hits", st, len(moved), len(r.ids)-len(moved))
	}
	t.Logf("fallback GetMany: %d keys, %d moved, copied with no database read", len(r.ids), len(moved))

	db2, queries2 := countDB(r.e.Pool)
	next, _ := r.store(t, memclient.PhaseNewReads, db2, nil)
	if got, err := next.GetMany(ctx, moved); err != nil || len(got) != len(moved) {
		t.Fatalf("new-reads GetMany: %d rows, %v", len(got), err)
	}
	if n := queries2.Load(); n != 0 {
		t.Errorf("new-reads phase: %d database queries; the copies did not land on the new ring", n)
	}
}

// TestGetManyFallbackRaces: a fallback GetMany while writers change moved
// keys between its read of the old ring and its fills (an update and a
// delete of keys it found there), while another reader holds the old
// ring's lease of one and one is cached nowhere. It answers either state of
// a changed row, but copies nothing older than the writes to the new ring:
// every read afterwards, in the fallback phase and the next, sees the
// writers' state. The other reader's lease is gone (its fill, maybe of an
// older read, cannot land), and so is the old ring's lease GetMany took.
func TestGetManyFallbackRaces(t *testing.T) {
	var addrs []string
	for range 4 {
		addrs = append(addrs, startPrivateMemcached(t).Addr())
	}
	r := newFallbackRig(t, 60, addrs[:3], addrs, time.Second)
	warm, _ := r.store(t, memclient.PhaseWriteBoth, nil, nil)
	writer, m := r.store(t, memclient.PhaseFallback, nil, nil)
	moved, _ := r.moved(t, writer, m)
	if len(moved) < 4 {
		t.Fatalf("%d moved keys, want 4", len(moved))
	}
	updated, deleted, leased, cold := moved[0], moved[1], moved[2], moved[3]
	var warmIDs []int64
	for _, id := range r.ids {
		if id != cold && id != leased {
			warmIDs = append(warmIDs, id)
		}
	}
	if _, err := warm.GetMany(ctx, warmIDs); err != nil {
		t.Fatal(err)
	}
	_, slow, err := r.old.LeaseGet(warm.Key(leased), 30)
	if err != nil || slow == nil {
		t.Fatalf("another reader's lease on the old ring: %v, %v", slow, err)
	}
	wrote := false
	db := &hookDB{Beginner: r.e.Pool, after: func(string) {
		if wrote {
			return
		}
		wrote = true // while GetMany reads the database for the cold and leased keys
		if _, err := writer.Update(ctx, updated, func(p *Product) error { p.Name = "written"; return nil }); err != nil {
			t.Error(err)
		}
		if err := writer.Delete(ctx, deleted); err != nil {
			t.Error(err)
		}
	}}
	s, _ := r.store(t, memclient.PhaseFallback, db, nil)
	got, err := s.GetMany(ctx, r.ids)
	if err != nil {
		t.Fatal(err)
	}
	if !wrote {
		t.Fatal("GetMany read nothing from the database")
	}
	if n := got[updated].Name; n != fmt.Sprint("p", updated) && n != "written" {
		t.Errorf("updated row: GetMany answered %q", n)
	}
	for _, id := range r.ids {
		if id != updated && id != deleted && got[id].Name != fmt.Sprint("p", id) {
			t.Errorf("row %d: %+v", id, got[id])
		}
	}
	if err := slow.Fill([]byte("older read"), 0, 30); err == nil {
		t.Error("the other reader's lease on the old ring outlived GetMany: its fill landed")
	}
	if it, err := r.old.Get(s.Key(cold)); err == nil {
		t.Errorf("the old ring kept %q (flags %d) for the cold key: GetMany's lease there was not released", it.Value, it.Flags)
	}
	for _, p := range []memclient.Phase{memclient.PhaseFallback, memclient.PhaseNewReads} {
		reader, _ := r.store(t, p, nil, nil)
		for range 2 { // the first read may fill, the second is a hit
			if got, err := reader.Get(ctx, updated); err != nil || got.Name != "written" {
				t.Errorf("%v: updated row afterwards: %+v, %v", p, got, err)
			}
			if _, err := reader.Get(ctx, deleted); !errors.Is(err, repo.ErrNotFound) {
				t.Errorf("%v: deleted row afterwards: %v, want ErrNotFound", p, err)
			}
			rows, err := reader.GetMany(ctx, []int64{updated, deleted, leased, cold})
			if err != nil || rows[updated].Name != "written" || len(rows) != 3 {
				t.Errorf("%v: GetMany afterwards: %+v, %v", p, rows, err)
			}
		}
	}
}

// TestFallbackNodeDown: a node of the old ring that the new one drops stops
// answering (partitioned: its requests time out) during the fallback
// phase. The misses of keys that moved off it pay the client's timeout
// once, which opens the breaker of that node in the old ring; from then
// on they are read from the database at once, by Get and GetMany alike,
// and every read returns the row.
func TestFallbackNodeDown(t *testing.T) {
	const timeout = 200 * time.Millisecond
	var addrs []string
	var dead *proxy
	for i := range 4 {
		px := newProxy(t, startPrivateMemcached(t).Addr())
		addrs = append(addrs, px.Addr())
		if i == 3 {
			dead = px
		}
	}
	r := newFallbackRig(t, 240, addrs, addrs[:3], timeout)
	warm, _ := r.store(t, memclient.PhaseWriteBoth, nil, nil)
	if _, err := warm.GetMany(ctx, r.ids); err != nil {
		t.Fatal(err)
	}
	o := r.e.Opts(nil)
	o.BreakerCooldown = time.Hour // no probe during the run: a probe of the dead node would time out
	s, m := r.store(t, memclient.PhaseFallback, nil, o)
	moved, _ := r.moved(t, s, m)
	if len(moved) < 12 {
		t.Fatalf("%d moved keys, want 12", len(moved))
	}
	dead.Partition()
	defer dead.Heal()
	third := len(moved) / 3
	check := func(id int64, p Product) {
		if p.Name != fmt.Sprint("p", id) {
			t.Errorf("row %d with the old node dead: %+v", id, p)
		}
	}
	began := time.Now()
	first, err := s.GetMany(ctx, moved[:third])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the first GetMany of moved keys: %v (timeout %v)", time.Since(began), timeout)
	for _, id := range moved[:third] {
		check(id, first[id])
	}
	slow := 0
	for _, id := range moved[third : 2*third] {
		began := time.Now()
		p, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		check(id, p)
		if time.Since(began) > timeout/2 {
			slow++
		}
	}
	began = time.Now()
	last, err := s.GetMany(ctx, moved[2*third:])
	if err != nil {
		t.Fatal(err)
	}
	lastTook := time.Since(began)
	for _, id := range moved[2*third:] {
		check(id, last[id])
	}
	t.Logf("after: %d of %d Gets slower than %v; the last GetMany took %v", slow, third, timeout/2, lastTook)
	if slow != 0 || lastTook > timeout/2 {
		t.Fatalf("reads of keys moved off the dead node kept paying the timeout: %d slow Gets, the last GetMany %v", slow, lastTook)
	}
}
