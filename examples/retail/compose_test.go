package main

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// There is no Docker engine on the machines this is developed on, so this
// test checks docker-compose.yml and the Dockerfile against the service's
// configuration instead of running them. It needs no servers.

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Command     []string          `yaml:"command"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Profiles    []string          `yaml:"profiles"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

func readCompose(t *testing.T) (composeFile, string) {
	t.Helper()
	root := filepath.Join("..", "..")
	b, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil { // also resolves the x-retail-env and x-memcached anchors
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c, root
}

// memcachedNodes returns the compose services of the memcached servers the
// service's MEMCACHED_ADDR lists, in its order, checking that the list
// parses as the service parses it (memclient.ParseServers, through
// loadConfig) and that every host in it is a compose service started by
// "docker compose up" (no profile), on memcached's port.
func memcachedNodes(t *testing.T, c composeFile) []string {
	t.Helper()
	env := c.Services["retail"].Environment
	cfg, err := loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("retail: %v", err)
	}
	servers, err := memclient.ParseServers(env[envMemcachedAddr])
	if err != nil {
		t.Fatalf("retail: %s=%q: %v", envMemcachedAddr, env[envMemcachedAddr], err)
	}
	if len(servers) != len(cfg.MemcachedAddrs) {
		t.Fatalf("retail: %s=%q: %d servers, the service reads %d", envMemcachedAddr, env[envMemcachedAddr], len(servers), len(cfg.MemcachedAddrs))
	}
	var nodes []string
	for _, s := range servers {
		host, port, err := net.SplitHostPort(s.Addr)
		if err != nil {
			t.Fatalf("retail: %s: server %q: %v", envMemcachedAddr, s.Addr, err)
		}
		svc, ok := c.Services[host]
		switch {
		case !ok:
			t.Errorf("retail: %s names %q, which is not a compose service", envMemcachedAddr, host)
			continue
		case len(svc.Profiles) > 0:
			t.Errorf("retail: %s names %q, which has profiles %v: docker compose up does not start it", envMemcachedAddr, host, svc.Profiles)
		case port != "11211":
			t.Errorf("retail: %s: %s on port %s, where memcached listens on 11211", envMemcachedAddr, host, port)
		}
		nodes = append(nodes, host)
	}
	if len(nodes) == 0 {
		t.Fatalf("retail: %s lists no compose service", envMemcachedAddr)
	}
	return nodes
}

func TestComposeServices(t *testing.T) {
	c, _ := readCompose(t)
	nodes := memcachedNodes(t, c)
	for _, name := range append([]string{"postgres", "setup", "retail", "invalidator"}, nodes...) {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("service %q missing", name)
		}
	}
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %q has neither image nor build", name)
		}
	}
	if img := c.Services["postgres"].Image; !strings.HasPrefix(img, "postgres:15") {
		t.Errorf("postgres image %q: want postgres:15 (the version the tests run against)", img)
	}
	// The WAL invalidator needs logical replication, as the test servers have.
	if cmd := strings.Join(c.Services["postgres"].Command, " "); !strings.Contains(cmd, "wal_level=logical") || !strings.Contains(cmd, "max_replication_slots=") {
		t.Errorf("postgres command %q: want -c wal_level=logical and max_replication_slots", cmd)
	}
	first := c.Services[nodes[0]]
	for _, name := range nodes {
		s := c.Services[name]
		if !strings.HasPrefix(s.Image, "memcached:1.6") {
			t.Errorf("%s image %q: want memcached:1.6", name, s.Image)
		}
		if s.Image != first.Image || !slices.Equal(s.Command, first.Command) {
			t.Errorf("%s runs %s %v, %s runs %s %v: want the same image and flags on every node", name, s.Image, s.Command, nodes[0], first.Image, first.Command)
		}
	}
	for _, name := range append([]string{"postgres", "retail"}, nodes...) {
		if hc := c.Services[name].Healthcheck; hc == nil || len(hc.Test) < 2 {
			t.Errorf("service %q has no healthcheck", name)
		}
	}
	if hc := c.Services["retail"].Healthcheck; hc != nil && !slices.Contains(hc.Test, "healthcheck") {
		t.Errorf("retail healthcheck %v: want the binary's healthcheck command", hc.Test)
	}
}

func TestComposeDependencies(t *testing.T) {
	c, _ := readCompose(t)
	want := map[string]map[string]string{
		"setup":       {"postgres": "service_healthy"},
		"retail":      {"postgres": "service_healthy", "setup": "service_completed_successfully"},
		"invalidator": {"postgres": "service_healthy", "setup": "service_completed_successfully"},
	}
	for _, node := range memcachedNodes(t, c) { // every memcached node is up first
		for _, deps := range want {
			deps[node] = "service_healthy"
		}
	}
	for svc, deps := range want {
		for dep, cond := range deps {
			got, ok := c.Services[svc].DependsOn[dep]
			if !ok {
				t.Errorf("%s does not depend on %s", svc, dep)
			} else if got.Condition != cond {
				t.Errorf("%s depends on %s with condition %q, want %q", svc, dep, got.Condition, cond)
			}
		}
	}
}

// TestComposeEnvironment checks that the service and the setup job set every
// variable config reads, with values config accepts, pointing at the compose
// services and ports.
func TestComposeEnvironment(t *testing.T) {
	c, _ := readCompose(t)
	memcachedNodes(t, c)
	if cmd := c.Services["invalidator"].Command; len(cmd) != 1 || cmd[0] != "invalidator" {
		t.Errorf("invalidator command %v: want the binary's invalidator command", cmd)
	}
	for _, name := range []string{"retail", "setup", "invalidator"} {
		env := c.Services[name].Environment
		for k := range configEnv() {
			if _, ok := env[k]; !ok {
				t.Errorf("%s: environment variable %s not set", name, k)
			}
		}
		for k := range env {
			if _, ok := configEnv()[k]; !ok {
				t.Errorf("%s: sets %s, which the service does not read", name, k)
			}
		}
		cfg, err := loadConfig(func(k string) string { return env[k] })
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.Contains(cfg.DatabaseURL, "@postgres:5432/") {
			t.Errorf("%s: DATABASE_URL %q does not point at the postgres service", name, cfg.DatabaseURL)
		}
		pg := c.Services["postgres"].Environment
		for _, part := range []string{pg["POSTGRES_USER"] + ":" + pg["POSTGRES_PASSWORD"] + "@", "/" + pg["POSTGRES_DB"] + "?"} {
			if !strings.Contains(cfg.DatabaseURL, part) {
				t.Errorf("%s: DATABASE_URL %q does not match the postgres service's user, password and database", name, cfg.DatabaseURL)
			}
		}
		if want := c.Services["retail"].Environment[envMemcachedAddr]; env[envMemcachedAddr] != want {
			t.Errorf("%s: MEMCACHED_ADDR %q, the service's is %q: want the same ring", name, env[envMemcachedAddr], want)
		}
		for _, a := range cfg.MemcachedNewAddrs { // set only during a migration
			if host, _, _ := net.SplitHostPort(a); !strings.HasPrefix(c.Services[host].Image, "memcached:") {
				t.Errorf("%s: MEMCACHED_NEW_ADDR names %q, which is not a memcached compose service", name, host)
			}
		}
		if !cfg.Cache {
			t.Errorf("%s: CACHE is off", name)
		}
	}
	env := c.Services["retail"].Environment
	_, port, _ := strings.Cut(env[envHTTPAddr], ":")
	if !slices.Contains(c.Services["retail"].Ports, port+":"+port) {
		t.Errorf("retail ports %v do not publish HTTP_ADDR's port %s", c.Services["retail"].Ports, port)
	}
}

// TestComposeMigrations checks that the schema is applied before the service
// serves: by the setup job, and by the service itself (MIGRATE_ON_START).
func TestComposeMigrations(t *testing.T) {
	c, _ := readCompose(t)
	setup := strings.Join(append(c.Services["setup"].Entrypoint, c.Services["setup"].Command...), " ")
	if !regexp.MustCompile(`retail migrate\b`).MatchString(setup) {
		t.Errorf("setup %q does not run retail migrate", setup)
	}
	for _, step := range []string{"migrate", "seed", "warm"} {
		if !strings.Contains(setup, "/retail "+step) {
			t.Errorf("setup %q does not run %s", setup, step)
		}
	}
	if i, j := strings.Index(setup, "migrate"), strings.Index(setup, "seed"); i > j {
		t.Errorf("setup %q seeds before migrating", setup)
	}
	cfg, err := loadConfig(func(k string) string { return c.Services["retail"].Environment[k] })
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.MigrateOnStart {
		t.Errorf("retail: MIGRATE_ON_START is not true")
	}
	if cmd := c.Services["retail"].Command; !slices.Equal(cmd, []string{"serve"}) {
		t.Errorf("retail command %v: want [serve]", cmd)
	}
}

// TestDockerfile checks that the services build this package's main from the
// repository root, and the image's entrypoint is that binary.
func TestDockerfile(t *testing.T) {
	c, root := readCompose(t)
	for _, name := range []string{"setup", "retail"} {
		b := c.Services[name].Build
		if b == nil {
			t.Fatalf("%s has no build section", name)
		}
		if filepath.Clean(b.Context) != "." {
			t.Errorf("%s build context %q: want . (the module root, for go.mod)", name, b.Context)
		}
		df, err := os.ReadFile(filepath.Join(root, b.Context, b.Dockerfile))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s := string(df)
		for _, want := range []string{"go build", "./examples/retail", "COPY go.mod go.sum", `ENTRYPOINT ["/retail"]`} {
			if !strings.Contains(s, want) {
				t.Errorf("%s does not contain %q", b.Dockerfile, want)
			}
		}
		if m := regexp.MustCompile(`FROM golang:(1\.\d+)`).FindStringSubmatch(s); m == nil {
			t.Errorf("%s: no golang build stage", b.Dockerfile)
		} else if gomod, _ := os.ReadFile(filepath.Join(root, "go.mod")); !regexp.MustCompile(`(?m)^go ` + regexp.QuoteMeta(m[1]) + `(\.\d+)?$`).Match(gomod) {
			t.Errorf("%s builds with Go %s, but go.mod asks for another version", b.Dockerfile, m[1])
		}
	}
	if _, err := os.Stat("main.go"); err != nil {
		t.Errorf("the Dockerfile builds ./examples/retail, but this package has no main.go: %v", err)
	}
}
