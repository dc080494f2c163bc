package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

const cacheUsage = `usage: retail cache <command> [flags]

commands:
  sweep      delete from the new ring of a migration (MEMCACHED_NEW_ADDR, in the write-both
             phase) the entries earlier server lists left there; run it before add-node
  add-node   pre-warm the new ring of a migration (MEMCACHED_NEW_ADDR, in the write-both
             phase, after sweep): copy to each server the keys it will own, through its leases
`

// runCache dispatches the subcommands of retail cache.
func runCache(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, cacheUsage)
		return errors.New("cache: no command given")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "sweep":
		return runSweep(ctx, args, getenv, stdout, stderr)
	case "add-node":
		return runAddNode(ctx, args, getenv, stdout, stderr)
	default:
		fmt.Fprint(stderr, cacheUsage)
		return fmt.Errorf("cache: unknown command %q", cmd)
	}
}

// runAddNode is retail cache add-node, the pre-warm of a migration from
// MEMCACHED_ADDR to MEMCACHED_NEW_ADDR (memclient.Prewarm): it copies the
// keys with the prefix (default the service's, CACHE_NAMESPACE) that the
// new ring places on another server than the old one does to that server,
// through its lease, with a progress bar on stderr and the counts, the rate
// and the next steps on stdout. It reads the migration the service instances
// run with and refuses unless it is in MEMCACHED_PHASE=write-both: a copy
// made while some writer changes the old ring alone may go stale. -node,
// if given, must be the one server the new ring adds.
func runAddNode(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("retail cache add-node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", "", "the server "+envMemcachedNewAddr+" adds to "+envMemcachedAddr+", host:port[:weight]; optional, checked against them")
	prefix := fs.String("prefix", "", "copy only the keys that start with this (default \"$"+envCacheNamespace+":\", the service's keys; -prefix= for every key)")
	workers := fs.Int("workers", 8, "keys copied at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("add-node: unexpected arguments %q", fs.Args())
	}
	if *workers < 1 {
		return errors.New("add-node: -workers must be positive")
	}
	cfg, err := migrationConfig("add-node", "the pre-warm", getenv, memclient.PhaseWriteBoth,
		"the pre-warm copies only while every writer reaches both rings: run it once every instance runs "+
			envMemcachedPhase+"=write-both (after retail cache sweep), before any moves to fallback")
	if err != nil {
		return err
	}
	prefixSet := false
	fs.Visit(func(f *flag.Flag) { prefixSet = prefixSet || f.Name == "prefix" })
	if !prefixSet {
		*prefix = cfg.Namespace + ":"
	}
	oldRing, _ := memclient.ParseServers(strings.Join(cfg.MemcachedAddrs, ",")) // loadConfig parsed them
	newRing, _ := memclient.ParseServers(strings.Join(cfg.MemcachedNewAddrs, ","))
	added, removed := ringChange(oldRing, newRing)
	if *node != "" {
		if err := checkNode(*node, oldRing, newRing, added); err != nil {
			return err
		}
	}
	from, to, _, err := newMemcache(cfg, *workers, time.Second)
	if err != nil {
		return fmt.Errorf("add-node: %w", err)
	}
	defer from.Close()
	defer to.Close()
	if err := to.Ping(); err != nil {
		return fmt.Errorf("add-node: the new ring %s does not answer: %w", envMemcachedNewAddr, err)
	}
	fmt.Fprintf(stdout, "add-node: copying to their new servers the keys with prefix %q that move from %s to %s (which adds %s, removes %s)\n",
		*prefix, envMemcachedAddr, envMemcachedNewAddr, listOrNone(added), listOrNone(removed))
	bar := newPrewarmBar(stderr)
	st, err := memclient.Prewarm(ctx, from, to, memclient.PrewarmConfig{Prefix: *prefix, Concurrency: *workers, Progress: bar.draw})
	bar.finish()
	fmt.Fprintf(stdout, "add-node: listed=%d moving=%d copied=%d present=%d raced=%d vanished=%d elapsed=%s rate=%.0f keys/s\n",
		st.Listed, st.Moving, st.Copied, st.Present, st.Raced, st.Vanished, st.Elapsed.Round(time.Millisecond), st.Rate())
	if err != nil {
		return fmt.Errorf("add-node: %w (running it again copies only what is missing)", err)
	}
	ring := strings.Join(cfg.MemcachedNewAddrs, ",")
	fmt.Fprintf(stdout, `next steps (every instance runs %[1]s=%[2]s %[3]s=write-both,
and retail cache sweep ran; phases: see memclient.Migration):
  1. set %[3]s=fallback on every instance, then new-reads, then new,
     each phase only once every instance runs the one before
  2. then run them on the new ring alone: %[4]s=%[2]s, %[1]s and %[3]s unset
`, envMemcachedNewAddr, ring, envMemcachedPhase, envMemcachedAddr)
	return nil
}

// ringChange returns the addresses of the servers of newRing that oldRing
// does not have, and of those of oldRing that newRing does not have.
func ringChange(oldRing, newRing []memclient.Server) (added, removed []string) {
	in := func(ring []memclient.Server, addr string) bool {
		return slices.ContainsFunc(ring, func(s memclient.Server) bool { return s.Addr == addr })
	}
	for _, s := range newRing {
		if !in(oldRing, s.Addr) {
			added = append(added, s.Addr)
		}
	}
	for _, s := range oldRing {
		if !in(newRing, s.Addr) {
			removed = append(removed, s.Addr)
		}
	}
	return added, removed
}

// checkNode checks that node, add-node's -node, is the one server that
// newRing adds to oldRing (added), with the same weight if it names one.
func checkNode(node string, oldRing, newRing []memclient.Server, added []string) error {
	s, err := memclient.ParseServers(node)
	if err == nil && len(s) != 1 {
		err = fmt.Errorf("%d servers", len(s))
	}
	if err != nil {
		return fmt.Errorf("add-node: -node %q: want one host:port[:weight]: %w", node, err)
	}
	n := s[0]
	if slices.ContainsFunc(oldRing, func(o memclient.Server) bool { return o.Addr == n.Addr }) {
		return fmt.Errorf("add-node: -node %s is already in %s", n.Addr, envMemcachedAddr)
	}
	i := slices.IndexFunc(newRing, func(o memclient.Server) bool { return o.Addr == n.Addr })
	if i < 0 {
		return fmt.Errorf("add-node: -node %s is not in %s: the instances' migration does not add it", n.Addr, envMemcachedNewAddr)
	}
	if len(added) != 1 {
		return fmt.Errorf("add-node: %s adds %s to %s, not only -node %s", envMemcachedNewAddr, strings.Join(added, ", "), envMemcachedAddr, n.Addr)
	}
	if w := max(newRing[i].Weight, 1); n.Weight != 0 && n.Weight != w {
		return fmt.Errorf("add-node: -node %s has weight %d, %s gives it %d", n.Addr, n.Weight, envMemcachedNewAddr, w)
	}
	return nil
}

// listOrNone returns addrs comma-separated, or "none".
func listOrNone(addrs []string) string {
	if len(addrs) == 0 {
		return "none"
	}
	return strings.Join(addrs, ",")
}

// prewarmBar draws a Prewarm's progress on w: the listing's counts, then a
// bar over the moving keys with the counts and the copy rate. On a terminal
// it redraws one line; otherwise it prints a line every few seconds.
type prewarmBar struct {
	w     io.Writer
	tty   bool
	last  memclient.PrewarmProgress
	drawn time.Time
}

func newPrewarmBar(w io.Writer) *prewarmBar {
	b := &prewarmBar{w: w, drawn: time.Now()}
	if f, ok := w.(*os.File); ok {
		st, err := f.Stat()
		b.tty = err == nil && st.Mode()&os.ModeCharDevice != 0
	}
	return b
}

// draw is the PrewarmConfig.Progress of the command.
func (b *prewarmBar) draw(p memclient.PrewarmProgress) {
	b.last = p
	if b.tty || time.Since(b.drawn) >= 3*time.Second {
		b.print(false)
	}
}

// finish draws the last counts and ends the line.
func (b *prewarmBar) finish() { b.print(true) }

func (b *prewarmBar) print(final bool) {
	b.drawn = time.Now()
	p := b.last
	line := fmt.Sprintf("add-node   listing: %s keys, %s moving", thousands(int64(p.Listed)), thousands(int64(p.Moving)))
	if p.Copying {
		const width = 30
		frac := 1.0
		if p.Moving > 0 {
			frac = float64(p.Done()) / float64(p.Moving)
		}
		n := int(frac * width)
		line = fmt.Sprintf("add-node   [%s%s] %3.0f%% %s/%s keys  copied %s present %s raced %s vanished %s  %s keys/s",
			strings.Repeat("#", n), strings.Repeat(".", width-n), frac*100, thousands(int64(p.Done())), thousands(int64(p.Moving)),
			thousands(int64(p.Copied)), thousands(int64(p.Present)), thousands(int64(p.Raced)), thousands(int64(p.Vanished)),
			thousands(int64(p.Rate())))
	}
	end := "\n"
	if b.tty { // redraw the line; end it when done
		line = "\r\033[K" + line
		if !final {
			end = ""
		}
	}
	fmt.Fprint(b.w, line+end)
}
