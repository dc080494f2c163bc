package observe_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
)

type key string

func TestJoin(t *testing.T) {
	var got []string
	a := observe.Hooks{
		Event: func(_ context.Context, e observe.Event) { got = append(got, "a "+e.Kind.String()) },
		OpStart: func(ctx context.Context, op observe.Op, _ string) context.Context {
			return context.WithValue(ctx, key("a"), 1)
		},
	}
	b := observe.Hooks{
		Event: func(_ context.Context, e observe.Event) { got = append(got, "b "+e.Kind.String()) },
		OpStart: func(ctx context.Context, op observe.Op, _ string) context.Context {
			got = append(got, fmt.Sprint("b start sees a: ", ctx.Value(key("a"))))
			return ctx
		},
		OpEnd: func(_ context.Context, op observe.Op, table string, d time.Duration, err error) {
			got = append(got, fmt.Sprintf("b end %s %s %v %v", op, table, d, err))
		},
	}
	j := observe.Join(a, observe.Hooks{}, b)
	ctx := j.OpStart(context.Background(), observe.OpGet, "t")
	j.Event(ctx, observe.Event{Kind: observe.LeaseWait})
	j.OpEnd(ctx, observe.OpGet, "t", time.Second, errors.New("x"))
	want := []string{"b start sees a: 1", "a lease_wait", "b lease_wait", "b end get t 1s x"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if e := observe.Join(observe.Hooks{}); e.Event != nil || e.OpStart != nil || e.OpEnd != nil {
		t.Fatal("Join of empty hooks set a field")
	}
	for _, k := range observe.Kinds() {
		if k.String() == "unknown" {
			t.Errorf("kind %d has no name", k)
		}
	}
	if observe.Kind(0).String() != "unknown" {
		t.Error("kind 0 has a name")
	}
}
