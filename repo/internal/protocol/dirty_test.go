package protocol

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// deletesDown is a Cache whose deletes fail while down is set.
type deletesDown struct {
	Cache
	down atomic.Bool
}

func (d *deletesDown) Delete(key string) error {
	if d.down.Load() {
		return &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}
	}
	return d.Cache.Delete(key)
}

// Keys whose invalidation failed are not clean until a delete of them
// succeeds; past the cap no key is clean until RepairAll has succeeded.
func TestDirtyKeys(t *testing.T) {
	mc, err := memclient.New(memclient.Config{Servers: []string{repotest.Memcached(t)}})
	if err != nil {
		t.Fatal(err)
	}
	cache := &deletesDown{Cache: mc}
	c := New(cache, Config{BreakerCooldown: time.Millisecond}, nil)
	c.dirtyCap = 2
	var repairs atomic.Int32
	repairOK := atomic.Bool{}
	c.SetRepairAll(func(context.Context) error {
		repairs.Add(1)
		if !repairOK.Load() {
			return errors.New("still partitioned")
		}
		return nil
	})
	ctx := context.Background()
	ns := repotest.Namespace(t)
	cache.down.Store(true)
	if c.Invalidate(ctx, ns+":a") {
		t.Fatal("Invalidate reported success with deletes failing")
	}
	if c.Clean(ctx, ns+":a") || !c.Clean(ctx, ns+":other") {
		t.Fatal("a dirty key is clean, or a clean key dirty, during the partition")
	}
	cache.down.Store(false)
	if !c.Clean(ctx, ns+":a") {
		t.Fatal("the key is not clean after its delete succeeded")
	}
	cache.down.Store(true)
	for _, k := range []string{"b", "c", "d"} { // the third overflows the cap of 2
		c.Invalidate(ctx, ns+":"+k)
	}
	cache.down.Store(false)
	if c.Clean(ctx, ns+":other") {
		t.Fatal("a key is clean while the dirty keys overflow and RepairAll fails")
	}
	repairOK.Store(true)
	time.Sleep(2 * time.Millisecond) // one BreakerCooldown between attempts
	if !c.Clean(ctx, ns+":other") || !c.Clean(ctx, ns+":d") {
		t.Fatal("keys are not clean after RepairAll succeeded")
	}
	if n := repairs.Load(); n < 2 {
		t.Fatalf("RepairAll ran %d times, want a failed and a successful try", n)
	}
}
