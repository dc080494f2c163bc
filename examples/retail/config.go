package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// The environment variables the service reads, all in one place: config
// parses them, and compose_test.go checks that docker-compose.yml sets every
// required one on the service.
const (
	envDatabaseURL      = "DATABASE_URL"       // required: postgres://user:pass@host:port/db?sslmode=disable
	envMemcachedAddr    = "MEMCACHED_ADDR"     // host:port[:weight][ name],...: a ketama ring; default 127.0.0.1:11211
	envMemcachedNewAddr = "MEMCACHED_NEW_ADDR" // during a migration: the ring it moves to, as MEMCACHED_ADDR; default none
	envMemcachedPhase   = "MEMCACHED_PHASE"    // with MEMCACHED_NEW_ADDR: old|write-both|fallback|new-reads|new
	envHTTPAddr         = "HTTP_ADDR"          // listen address of serve; default :8080
	envCache            = "CACHE"              // on|off; default on
	envCacheNamespace   = "CACHE_NAMESPACE"    // memcached key namespace; default retail
	envCacheTTL         = "CACHE_TTL"          // Go duration; default 1h
	envDBMaxConns       = "DB_MAX_CONNS"       // pgx pool size; default 32
	envMigrateOnStart   = "MIGRATE_ON_START"   // true: serve applies migrations first; default false
	envNearMaxAge       = "NEAR_CACHE_MAX_AGE" // near-cache of the catalogue: entries' max age, Go duration, 0 = none; default 5s
)

// configEnv lists every variable config reads, with whether the service needs
// it set (required) or has a usable default.
func configEnv() map[string]bool {
	return map[string]bool{
		envDatabaseURL:      true,
		envMemcachedAddr:    false,
		envMemcachedNewAddr: false,
		envMemcachedPhase:   false,
		envHTTPAddr:         false,
		envCache:            false,
		envCacheNamespace:   false,
		envCacheTTL:         false,
		envDBMaxConns:       false,
		envMigrateOnStart:   false,
		envNearMaxAge:       false,
	}
}

// config is the service's configuration, read from the environment by
// loadConfig. Every subcommand uses the same one.
type config struct {
	DatabaseURL    string
	MemcachedAddrs []string // MEMCACHED_ADDR's servers, each host:port[:weight][ name]
	// MemcachedNewAddrs, when not nil, is the ring of a migration in
	// MemcachedPhase (memclient.Migration from MemcachedAddrs to it).
	MemcachedNewAddrs []string
	MemcachedPhase    memclient.Phase // 0 when there is no migration
	HTTPAddr          string
	Cache             bool // false: CACHE=off, every read goes to Postgres
	Namespace         string
	CacheTTL          time.Duration
	DBMaxConns        int32
	MigrateOnStart    bool
	// NearMaxAge is the near-cache's MaxAge (repo.NearCache) in front of
	// the catalogue's stores; 0: no near-cache.
	NearMaxAge time.Duration
}

// loadConfig reads the configuration with getenv (os.Getenv in main, a map in
// tests) and reports every bad value at once.
func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		DatabaseURL:    getenv(envDatabaseURL),
		MemcachedAddrs: []string{"127.0.0.1:11211"},
		HTTPAddr:       ":8080",
		Cache:          true,
		Namespace:      "retail",
		CacheTTL:       time.Hour,
		DBMaxConns:     32,
		NearMaxAge:     5 * time.Second,
	}
	var errs []string
	if c.DatabaseURL == "" {
		errs = append(errs, envDatabaseURL+" is not set (e.g. postgres://postgres@127.0.0.1:5432/retail?sslmode=disable)")
	}
	if v := getenv(envMemcachedAddr); v != "" {
		var err error
		if c.MemcachedAddrs, err = parseServerList(envMemcachedAddr, v); err != nil {
			errs = append(errs, err.Error())
		}
	}
	newAddr, phase := getenv(envMemcachedNewAddr), getenv(envMemcachedPhase)
	if newAddr != "" {
		var err error
		if c.MemcachedNewAddrs, err = parseServerList(envMemcachedNewAddr, newAddr); err != nil {
			errs = append(errs, err.Error())
		}
	}
	switch {
	case phase != "":
		p, err := memclient.ParsePhase(phase)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q: want old, write-both, fallback, new-reads or new", envMemcachedPhase, phase))
		} else if newAddr == "" {
			errs = append(errs, fmt.Sprintf("%s=%s needs %s, the server list the migration moves to", envMemcachedPhase, phase, envMemcachedNewAddr))
		}
		c.MemcachedPhase = p
	case newAddr != "":
		errs = append(errs, fmt.Sprintf("%s is set but %s is not: name the migration's phase (old, write-both, fallback, new-reads or new)", envMemcachedNewAddr, envMemcachedPhase))
	}
	if v := getenv(envHTTPAddr); v != "" {
		c.HTTPAddr = v
	}
	switch v := strings.ToLower(getenv(envCache)); v {
	case "", "on", "true", "1":
	case "off", "false", "0":
		c.Cache = false
	default:
		errs = append(errs, fmt.Sprintf("%s=%q: want on or off", envCache, v))
	}
	if v := getenv(envCacheNamespace); v != "" {
		c.Namespace = v
	}
	if v := getenv(envCacheTTL); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Sprintf("%s=%q: want a positive duration such as 1h", envCacheTTL, v))
		}
		c.CacheTTL = d
	}
	if v := getenv(envNearMaxAge); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Sprintf("%s=%q: want a duration such as 1s, or 0 for no near-cache", envNearMaxAge, v))
		}
		c.NearMaxAge = d
	}
	if v := getenv(envDBMaxConns); v != "" {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Sprintf("%s=%q: want a positive integer", envDBMaxConns, v))
		}
		c.DBMaxConns = int32(n)
	}
	if v := getenv(envMigrateOnStart); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q: want true or false", envMigrateOnStart, v))
		}
		c.MigrateOnStart = b
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("configuration: %s", strings.Join(errs, "; "))
	}
	return c, nil
}

// parseServerList parses the server list v of the variable name: entries
// as memclient.ParseServers reads them (host:port[:weight][ name]), empty
// ones skipped.
func parseServerList(name, v string) ([]string, error) {
	var addrs []string
	for a := range strings.SplitSeq(v, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s lists no address", name)
	}
	if _, err := memclient.ParseServers(strings.Join(addrs, ",")); err != nil {
		return nil, fmt.Errorf("%s=%q: %w", name, v, err)
	}
	return addrs, nil
}

// environ is os.Getenv, named for the call sites.
func environ(k string) string { return os.Getenv(k) }
