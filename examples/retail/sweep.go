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
	cfg, err := loadConfig(func(k string) string {
		if k == envDatabaseURL { // the sweep does not read the database
			return "unused"
		}
		return getenv(k)
	})
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	if cfg.MemcachedNewAddrs == nil {
		return fmt.Errorf("sweep: %s is not set: the sweep is a step of a migration to the server list it names", envMemcachedNewAddr)
	}
	if cfg.MemcachedPhase != memclient.PhaseWriteBoth {
		return fmt.Errorf("sweep: %s=%s: run the sweep once every instance runs %s=write-both, before any moves to fallback",
			envMemcachedPhase, cfg.MemcachedPhase, envMemcachedPhase)
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
	fmt.Fprintf(stdout, "next: when adding a node, retail cache add-node -node host:port (pre-warm); then %s=fallback on every instance\n", envMemcachedPhase)
	return nil
}
