package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

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

// ketamaClient returns a client over a ketama ring of addrs.
func ketamaClient(t *testing.T, addrs []string) *memclient.Client {
	t.Helper()
	servers, err := memclient.ParseServers(strings.Join(addrs, ","))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ringClient(servers, 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// retail cache add-node copies to the new node the keys (with the prefix)
// it will own: afterwards every key hits through the ring with it. Bad
// input fails with a clear message.
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
	env := map[string]string{envMemcachedAddr: strings.Join(addrs[:3], ",")}
	getenv := func(k string) string { return env[k] }
	var out, errOut strings.Builder
	err := run(context.Background(), []string{"cache", "add-node", "-node", addrs[3], "-prefix", "retail:"}, getenv, &out, &errOut)
	if err != nil {
		t.Fatalf("add-node: %v\n%s", err, errOut.String())
	}
	t.Logf("stdout:\n%sstderr:\n%s", out.String(), errOut.String())
	m := regexp.MustCompile(`add-node: listed=2000 moving=(\d+) copied=(\d+) present=0 raced=0 vanished=0 `).FindStringSubmatch(out.String())
	if m == nil || m[1] != m[2] {
		t.Fatalf("add-node's counts: %s", out.String())
	}
	if moving, _ := strconv.Atoi(m[1]); moving < 300 || moving > 700 {
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

	dead := repotest.StartMemcached(t)
	if err := dead.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cache", "add-node"}, "-node host:port[:weight] is required"},
		{[]string{"cache", "add-node", "-node", addrs[1]}, addrs[1] + " is already in MEMCACHED_ADDR"},
		{[]string{"cache", "add-node", "-node", "a:1,b:2"}, "want one host:port[:weight]"},
		{[]string{"cache", "add-node", "-node", dead.Addr()}, "the new node does not answer"},
		{[]string{"cache", "add-node", "-workers", "0", "-node", addrs[3]}, "-workers must be positive"},
		{[]string{"cache", "remove-node"}, `unknown command "remove-node"`},
		{[]string{"cache"}, "no command given"},
	} {
		err := run(context.Background(), c.args, getenv, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("retail %s: %v, want an error with %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
