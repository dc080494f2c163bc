package repo_test

import (
	"fmt"
	"testing"
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
