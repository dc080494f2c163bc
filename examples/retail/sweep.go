package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// runSweep is retail cache sweep: during a migration from MEMCACHED_ADDR to
// MEMCACHED_NEW_ADDR, it deletes from the new ring the entries of the
// service's keys (CACHE_NAMESPACE) that the new ring places on another
// server than the old one does, left there by an earlier server list
// (memclient.Migration.Sweep), and prints how many. Run it once every
// instance runs MEMCACHED_PHASE=write-both, before any moves to fallback.
func runSweep(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("retail cache sweep", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: retail cache sweep\n\n"+
			"Deletes from %s the entries of the keys of %s that it places on another server than %s does\n"+
			"(stale: left from an earlier server list). Run it once every instance runs %s=write-both.\n",
			envMemcachedNewAddr, envCacheNamespace, envMemcachedAddr, envMemcachedPhase)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("sweep: unexpected arguments %q", fs.Args())
	}
	cfg, err := migrationConfig("sweep", "the sweep", getenv, memclient.PhaseWriteBoth,
		"run the sweep once every instance runs "+envMemcachedPhase+"=write-both, before any moves to fallback")
	if err != nil {
		return err
	}
	from, to, m, err := newMemcache(cfg, 4, time.Second)
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	defer from.Close()
	defer to.Close()
	prefix := cfg.Namespace + ":"
	began := time.Now()
	n, err := m.Sweep(ctx, prefix)
	fmt.Fprintf(stdout, "sweep: deleted=%d prefix=%s elapsed=%s\n", n, prefix, time.Since(began).Round(time.Millisecond))
	if err != nil {
		return fmt.Errorf("sweep: %w (running it again is safe)", err)
	}
	fmt.Fprintf(stdout, "next: retail cache add-node to pre-warm the new ring (optional; it needs every server of %s to answer); then %s=fallback on every instance\n", envMemcachedAddr, envMemcachedPhase)
	return nil
}

// migrationConfig reads, for cmd (a step of a migration, named step in
// messages), the configuration the service instances run with: loadConfig's
// MEMCACHED_ADDR, MEMCACHED_NEW_ADDR, MEMCACHED_PHASE and CACHE_NAMESPACE
// (DATABASE_URL is not needed). It fails unless a migration is configured in
// phase, the one the instances must all run for the step; when is what the
// error then says about running it.
func migrationConfig(cmd, step string, getenv func(string) string, phase memclient.Phase, when string) (config, error) {
	cfg, err := loadConfig(func(k string) string {
		if k == envDatabaseURL { // the migration's steps do not read the database
			return "unused"
		}
		return getenv(k)
	})
	if err != nil {
		return cfg, fmt.Errorf("%s: %w", cmd, err)
	}
	if cfg.MemcachedNewAddrs == nil {
		return cfg, fmt.Errorf("%s: %s is not set: %s is a step of a migration to the server list it names", cmd, envMemcachedNewAddr, step)
	}
	if cfg.MemcachedPhase != phase {
		return cfg, fmt.Errorf("%s: %s=%s: %s", cmd, envMemcachedPhase, cfg.MemcachedPhase, when)
	}
	return cfg, nil
}
