package protocol

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// replays is a Recovery whose replays the test completes by hand.
type replays struct{ asked []chan error }

func (r *replays) Replay() <-chan error {
	ch := make(chan error, 1)
	r.asked = append(r.asked, ch)
	return ch
}

// The breaker closes only after a replay asked for after the cache answered,
// and only if the cache did not fail again meanwhile: a write that failed
// after the replay began may have left an outbox row it did not see.
func TestBreakerWaitsForAFreshReplay(t *testing.T) {
	mc, err := memclient.New(memclient.Config{Servers: []string{repotest.Memcached(t)}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &replays{}
	c := New(mc, Config{BreakerCooldown: time.Millisecond}, rec)
	cut := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset")}
	c.Trip("k", cut)
	if c.AllowRead("k") || len(rec.asked) != 1 {
		t.Fatalf("after the probe: allowed, or %d replays asked for; want a replay and no reads", len(rec.asked))
	}
	if c.AllowRead("k") {
		t.Fatal("reads allowed while the replay runs")
	}
	c.breakerOf("k").record(cut) // the cache fails again during the replay
	rec.asked[0] <- nil
	if c.AllowRead("k") {
		t.Fatal("reads allowed after a replay that a later failure may have outrun")
	}
	if c.AllowRead("k") || len(rec.asked) != 2 {
		t.Fatalf("%d replays asked for, want a second one", len(rec.asked))
	}
	rec.asked[1] <- nil
	if !c.AllowRead("k") || !c.Closed("k") {
		t.Fatal("the breaker stayed open after a clean replay")
	}
}
