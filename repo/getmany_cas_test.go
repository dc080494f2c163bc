package repo_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// A GetMany of uncached keys fills each with one CAS: the pipelined re-read
// before the fills returns CAS ids (it used not to, and every fill lost its
// first CAS and read the key again).
func TestGetManyFillsWithoutWastedCAS(t *testing.T) {
	e := newEnv(t)
	ids := make([]int64, 100)
	for i := range ids {
		ids[i] = int64(i + 1)
		e.insertProduct(t, ids[i], fmt.Sprint("p", i), 1)
	}
	s := e.products(t, nil)
	got, err := s.GetMany(ctx, ids)
	if err != nil || len(got) != len(ids) {
		t.Fatalf("GetMany: %d rows, %v", len(got), err)
	}
	if st := s.Stats(); st.Fills != 100 || st.CASConflicts != 0 || st.DBReads != 1 {
		t.Fatalf("stats %+v: want 100 fills, no CAS conflicts, one database read", st)
	}
}

// swapHook is a memclient.Client that runs before, once, ahead of the
// first pipelined CAS fill: what a writer does between a GetMany's re-read
// of its keys and its fills.
type swapHook struct {
	*memclient.Client
	before func()
}

func (h *swapHook) CompareAndSwapMulti(items []*memcache.Item) ([]error, error) {
	if f := h.before; f != nil {
		h.before = nil
		f()
	}
	return h.Client.CompareAndSwapMulti(items)
}

// A GetMany whose pipelined fills lose to writers (an update and a delete
// landing between its re-read and its fills) puts nothing of its own older
// read into the cache for those keys: every read afterwards sees the
// writers' state, while the fills of the other keys land.
func TestGetManyFillsLoseToWrites(t *testing.T) {
	e := newEnv(t)
	ids := make([]int64, 10)
	for i := range ids {
		ids[i] = int64(i + 1)
		e.insertProduct(t, ids[i], fmt.Sprint("p", ids[i]), 1)
	}
	writer := e.products(t, nil)
	h := &swapHook{Client: e.MC, before: func() {
		if _, err := writer.Update(ctx, 3, func(p *Product) error { p.Name = "written"; return nil }); err != nil {
			t.Error(err)
		}
		if err := writer.Delete(ctx, 4); err != nil {
			t.Error(err)
		}
	}}
	s, err := repo.New(e.Pool, h, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetMany(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if h.before != nil {
		t.Fatal("GetMany made no pipelined fill")
	}
	// Rows 3 and 4 changed while GetMany ran: it may answer either state.
	if r := got[3]; r.Name != "p3" && r.Name != "written" {
		t.Errorf("row 3: GetMany answered %+v", r)
	}
	for _, id := range ids {
		if id != 3 && id != 4 && got[id].Name != fmt.Sprint("p", id) {
			t.Errorf("row %d: %+v", id, got[id])
		}
	}
	if st := s.Stats(); st.Fills != 8 || st.CASConflicts != 2 {
		t.Errorf("stats %+v: want 8 fills and 2 CAS conflicts", st)
	}
	reader := e.products(t, nil)
	for range 2 { // the first read may fill, the second is a hit
		if r, err := reader.Get(ctx, 3); err != nil || r.Name != "written" {
			t.Errorf("row 3 afterwards: %+v, %v", r, err)
		}
		if _, err := reader.Get(ctx, 4); !errors.Is(err, repo.ErrNotFound) {
			t.Errorf("row 4 afterwards: %v, want ErrNotFound", err)
		}
	}
	for _, id := range ids {
		if id == 3 || id == 4 {
			continue
		}
		if r, err := reader.Get(ctx, id); err != nil || r.Name != fmt.Sprint("p", id) {
			t.Errorf("row %d afterwards: %+v, %v", id, r, err)
		}
	}
	if st := reader.Stats(); st.Hits < 10 || st.DBReads > 2 {
		t.Errorf("the reads afterwards: %+v; want the filled rows from the cache", st)
	}
}
