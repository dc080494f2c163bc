package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// startNodes starts n private memcached servers and returns their
// addresses and processes.
func startNodes(t *testing.T, n int) ([]string, []*repotest.MemcachedProcess) {
	t.Helper()
	addrs := make([]string, n)
	procs := make([]*repotest.MemcachedProcess, n)
	for i := range addrs {
		procs[i] = repotest.StartMemcached(t)
		addrs[i] = procs[i].Addr()
	}
	return addrs, procs
}

// ketamaClient returns a client over a ketama ring of addrs, as the
// service builds it from MEMCACHED_ADDR.
func ketamaClient(t *testing.T, addrs []string) *memclient.Client {
	t.Helper()
	c, err := memclient.New(memclient.Config{Servers: addrs, MaxIdleConns: 16, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// addNodeEnv is the environment of the service instances during a
// migration from the ring of old to the ring of new in write-both.
func addNodeEnv(old, new []string) map[string]string {
	return map[string]string{
		envMemcachedAddr: strings.Join(old, ","), envMemcachedNewAddr: strings.Join(new, ","),
		envMemcachedPhase: "write-both",
	}
}

// retail cache add-node, in a migration from three nodes to four in
// write-both, copies to the fourth node the service's keys (CACHE_NAMESPACE)
// it will own: afterwards every key hits through the four-node ring. -node
// may name the node; -prefix= copies every key.
func TestCacheAddNode(t *testing.T) {
	addrs, _ := startNodes(t, 4)
	old := ketamaClient(t, addrs[:3])
	for i := range 2000 {
		for _, k := range []string{fmt.Sprintf("retail:k:%d", i), fmt.Sprintf("other:%d", i)} {
			if err := old.Set(&memcache.Item{Key: k, Value: []byte("v" + k), Expiration: 3600}); err != nil {
				t.Fatal(err)
			}
		}
	}
	env := addNodeEnv(addrs[:3], addrs)
	getenv := func(k string) string { return env[k] }
	var out, errOut strings.Builder
	err := run(context.Background(), []string{"cache", "add-node", "-node", addrs[3]}, getenv, &out, &errOut)
	if err != nil {
		t.Fatalf("add-node: %v\n%s", err, errOut.String())
	}
	t.Logf("stdout:\n%sstderr:\n%s", out.String(), errOut.String())
	if want := fmt.Sprintf(`prefix "retail:" that move from MEMCACHED_ADDR to MEMCACHED_NEW_ADDR (which adds %s, removes none)`, addrs[3]); !strings.Contains(out.String(), want) {
		t.Fatalf("add-node does not say %q:\n%s", want, out.String())
	}
	m := regexp.MustCompile(`add-node: listed=2000 moving=(\d+) copied=(\d+) present=0 raced=0 vanished=0 `).FindStringSubmatch(out.String())
	if m == nil || m[1] != m[2] {
		t.Fatalf("add-node's counts: %s", out.String())
	}
	moving, _ := strconv.Atoi(m[1])
	if moving < 300 || moving > 700 {
		t.Fatalf("%d of 2000 keys move to a fourth node, want about 500", moving)
	}
	want := envMemcachedAddr + "=" + strings.Join(addrs, ",")
	if !strings.Contains(out.String(), "next steps") || !strings.Contains(out.String(), want) {
		t.Fatalf("add-node's next steps do not say %s:\n%s", want, out.String())
	}
	if !strings.Contains(errOut.String(), "add-node   [##############################] 100% ") {
		t.Fatalf("no finished progress bar on stderr:\n%s", errOut.String())
	}
	next := ketamaClient(t, addrs)
	for i := range 2000 {
		k := fmt.Sprintf("retail:k:%d", i)
		if it, err := next.Get(k); err != nil || string(it.Value) != "v"+k {
			t.Fatalf("%s through the new ring: %+v %v", k, it, err)
		}
	}

	// Every key, without -node: the service's are there already.
	out.Reset()
	if err := run(context.Background(), []string{"cache", "add-node", "-prefix="}, getenv, &out, io.Discard); err != nil {
		t.Fatalf("add-node -prefix=: %v", err)
	}
	m = regexp.MustCompile(`add-node: listed=4000 moving=(\d+) copied=(\d+) present=(\d+) raced=0 vanished=0 `).FindStringSubmatch(out.String())
	if m == nil || m[3] != strconv.Itoa(moving) {
		t.Fatalf("add-node -prefix= counts: %s, want present=%d", out.String(), moving)
	}
	for i := range 2000 {
		k := fmt.Sprintf("other:%d", i)
		if it, err := next.Get(k); err != nil || string(it.Value) != "v"+k {
			t.Fatalf("%s through the new ring: %+v %v", k, it, err)
		}
	}
}

// retail cache add-node refuses, with a message naming what is wrong and
// exit status 1, and copies nothing, unless the instances are configured
// in a migration in write-both (the phase in which every writer reaches
// both rings) whose new ring answers and agrees with -node.
func TestCacheAddNodeRefuses(t *testing.T) {
	addrs, _ := startNodes(t, 4)
	old, node4 := ketamaClient(t, addrs[:3]), ketamaClient(t, addrs[3:])
	next := ketamaClient(t, addrs)
	var moving []string
	for i := range 500 {
		k := fmt.Sprintf("retail:k:%d", i)
		if err := old.Set(&memcache.Item{Key: k, Value: []byte("v"), Expiration: 3600}); err != nil {
			t.Fatal(err)
		}
		if at, _ := next.Server(k); at.String() == addrs[3] {
			moving = append(moving, k)
		}
	}
	dead := repotest.StartMemcached(t)
	if err := dead.Stop(); err != nil {
		t.Fatal(err)
	}
	good := addNodeEnv(addrs[:3], addrs)
	withDead := strings.Join(append(addrs[:3:3], dead.Addr()), ",")
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{envMemcachedNewAddr: "", envMemcachedPhase: ""}, nil,
			"add-node: MEMCACHED_NEW_ADDR is not set: the pre-warm is a step of a migration"},
		{map[string]string{envMemcachedPhase: "old"}, nil,
			"add-node: MEMCACHED_PHASE=old: the pre-warm copies only while every writer reaches both rings: run it once every instance runs MEMCACHED_PHASE=write-both"},
		{map[string]string{envMemcachedPhase: "fallback"}, nil, "add-node: MEMCACHED_PHASE=fallback: the pre-warm copies only"},
		{map[string]string{envMemcachedPhase: "new-reads"}, nil, "add-node: MEMCACHED_PHASE=new-reads: the pre-warm copies only"},
		{map[string]string{envMemcachedPhase: "new"}, nil, "add-node: MEMCACHED_PHASE=new: the pre-warm copies only"},
		{map[string]string{envMemcachedPhase: ""}, nil, "MEMCACHED_NEW_ADDR is set but MEMCACHED_PHASE is not"},
		{map[string]string{envMemcachedNewAddr: "", envMemcachedPhase: "write-both"}, nil, "MEMCACHED_PHASE=write-both needs MEMCACHED_NEW_ADDR"},
		{map[string]string{envMemcachedNewAddr: "x"}, nil, `MEMCACHED_NEW_ADDR="x"`},
		{map[string]string{envMemcachedNewAddr: withDead}, nil, "add-node: the new ring MEMCACHED_NEW_ADDR does not answer"},
		{nil, []string{"-node", dead.Addr()}, "add-node: -node " + dead.Addr() + " is not in MEMCACHED_NEW_ADDR"},
		{map[string]string{envMemcachedNewAddr: strings.Join(append(addrs[:4:4], dead.Addr()), ",")}, []string{"-node", addrs[3]},
			"add-node: MEMCACHED_NEW_ADDR adds " + addrs[3] + ", " + dead.Addr() + " to MEMCACHED_ADDR, not only -node " + addrs[3]},
		{nil, []string{"-node", addrs[3] + ":2"}, "add-node: -node " + addrs[3] + " has weight 2, MEMCACHED_NEW_ADDR gives it 1"},
		{nil, []string{"-node", addrs[1]}, addrs[1] + " is already in MEMCACHED_ADDR"},
		{nil, []string{"-node", "a:1,b:2"}, "want one host:port[:weight]"},
		{nil, []string{"-workers", "0"}, "-workers must be positive"},
		{nil, []string{"extra"}, "unexpected arguments"},
	} {
		env := maps.Clone(good)
		maps.Copy(env, c.env)
		args := append([]string{"cache", "add-node"}, c.args...)
		var out strings.Builder
		err := run(context.Background(), args, func(k string) string { return env[k] }, &out, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("retail %s with %v: %v, want an error with %q", strings.Join(args, " "), c.env, err, c.want)
		}
		if strings.Contains(out.String(), "listed=") {
			t.Errorf("retail %s with %v copied: %s", strings.Join(args, " "), c.env, out.String())
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cache", "remove-node"}, `unknown command "remove-node"`},
		{[]string{"cache"}, "no command given"},
	} {
		err := run(context.Background(), c.args, func(k string) string { return good[k] }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("retail %s: %v, want an error with %q", strings.Join(c.args, " "), err, c.want)
		}
	}

	// The command itself, in a process: exit status 1 and the message.
	cmd := exec.Command(os.Args[0], "-test.run=^TestAddNodeProcess$")
	cmd.Env = append(os.Environ(), "RETAIL_TEST_MAIN=cache add-node",
		envMemcachedAddr+"="+good[envMemcachedAddr], envMemcachedNewAddr+"="+good[envMemcachedNewAddr], envMemcachedPhase+"=old")
	stderr, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(stderr), "retail: add-node: MEMCACHED_PHASE=old: ") {
		t.Errorf("retail cache add-node in phase old: %v, want exit status 1 and the refusal; output:\n%s", err, stderr)
	}

	for _, k := range moving {
		if _, err := node4.Get(k); !errors.Is(err, memcache.ErrCacheMiss) {
			t.Fatalf("%s reached the fourth node although add-node refused: %v", k, err)
		}
	}
}

// TestAddNodeProcess runs retail's main with the arguments in
// RETAIL_TEST_MAIN, in the process TestCacheAddNodeRefuses starts; it does
// nothing in any other.
func TestAddNodeProcess(t *testing.T) {
	args := os.Getenv("RETAIL_TEST_MAIN")
	if args == "" {
		t.Skip("run by TestCacheAddNodeRefuses")
	}
	os.Args = append([]string{"retail"}, strings.Fields(args)...)
	main()
}
