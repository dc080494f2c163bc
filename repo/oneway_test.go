package repo_test

import (
	"net"
	"sync/atomic"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// writesDown is a memcached client whose writes fail while down is set, as
// in a one-way partition: reads (get, mg) still reach the server.
type writesDown struct {
	*memclient.Client
	down atomic.Bool
}

var errPartition = &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}

func (w *writesDown) fail() error {
	if w.down.Load() {
		return errPartition
	}
	return nil
}

func (w *writesDown) Set(it *memcache.Item) error {
	if err := w.fail(); err != nil {
		return err
	}
	return w.Client.Set(it)
}

func (w *writesDown) Add(it *memcache.Item) error {
	if err := w.fail(); err != nil {
		return err
	}
	return w.Client.Add(it)
}

func (w *writesDown) CompareAndSwap(it *memcache.Item) error {
	if err := w.fail(); err != nil {
		return err
	}
	return w.Client.CompareAndSwap(it)
}

func (w *writesDown) Delete(key string) error {
	if err := w.fail(); err != nil {
		return err
	}
	return w.Client.Delete(key)
}

func (w *writesDown) Increment(key string, delta uint64) (uint64, error) {
	if err := w.fail(); err != nil {
		return 0, err
	}
	return w.Client.Increment(key, delta)
}

func (w *writesDown) DeleteIfUnchanged(items []*memcache.Item) ([]string, error) {
	if err := w.fail(); err != nil {
		return nil, err
	}
	return w.Client.DeleteIfUnchanged(items)
}

// A process whose writes cannot reach memcached (fewer failures than the
// breaker's threshold) never serves from the cache a key whose
// write-through it failed to apply: its own reads of the key go to the
// database until its own delete of it succeeds, after the partition heals.
// Without that record it served the replaced row (read-your-writes broke in
// the process that made the write).
func TestOneWayPartitionReadYourWrites(t *testing.T) {
	e := newEnv(t)
	w := &writesDown{Client: e.MC}
	s, err := repo.New(e.Pool, w, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	e.insertProduct(t, 1, "v1", 100)
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "v1" {
		t.Fatalf("warm: %+v %v", p, err)
	}
	w.down.Store(true)
	if _, err := s.Update(ctx, 1, func(p *Product) error { p.Name = "v2"; return nil }); err != nil {
		t.Fatalf("update during the partition: %v", err)
	}
	if it, err := e.MC.Get(s.Key(1)); err != nil || it == nil {
		t.Fatalf("the partition should have kept the old entry: %v", err)
	}
	for i := range 5 {
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "v2" {
			t.Fatalf("read %d after the write, during the partition: %+v %v (the replaced row)", i, p, err)
		}
		if m, err := s.GetMany(ctx, []int64{1}); err != nil || m[1].Name != "v2" {
			t.Fatalf("GetMany %d after the write, during the partition: %+v %v", i, m, err)
		}
	}
	w.down.Store(false)
	before := s.Stats()
	for i := range 3 {
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "v2" {
			t.Fatalf("read %d after the heal: %+v %v", i, p, err)
		}
	}
	if st := s.Stats(); st.Fills-before.Fills != 1 || st.Hits-before.Hits != 2 {
		t.Fatalf("after the heal: %+v then %+v; want one fill, then hits", before, st)
	}
}
