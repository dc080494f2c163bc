package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

const cacheUsage = `usage: retail cache <command> [flags]

commands:
  sweep      delete from the new ring of a migration (MEMCACHED_NEW_ADDR, in the write-both
             phase) the entries earlier server lists left there; run it before add-node
  add-node   copy to a new memcached node the keys it will own (MEMCACHED_ADDR plus -node),
             through its leases, before it joins
`

// runCache dispatches the subcommands of retail cache.
func runCache(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, cacheUsage)
		return errors.New("cache: no command given")
	}
	cmd, args := args[0], args[1:]
	if cmd == "sweep" { // its own flags
		return runSweep(ctx, args, getenv, stdout, stderr)
	}
	fs := flag.NewFlagSet("retail cache "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch cmd {
	case "add-node":
		node := fs.String("node", "", "the new server, host:port[:weight] (required)")
		prefix := fs.String("prefix", "", "copy only the keys that start with this, e.g. the service's \"retail:\"; default every key")
		workers := fs.Int("workers", 8, "keys copied at once")
		if err := fs.Parse(args); err != nil {
			return err
		}
		spec := getenv(envMemcachedAddr)
		if spec == "" {
			spec = "127.0.0.1:11211"
		}
		return runAddNode(ctx, spec, *node, *prefix, *workers, stdout, stderr)
	default:
		fmt.Fprint(stderr, cacheUsage)
		return fmt.Errorf("cache: unknown command %q", cmd)
	}
}

// runAddNode pre-warms node (retail cache add-node): it copies the keys the
// ring of current plus node gives to another server than the ring of
// current does, with a progress bar on stderr and the counts and the next
// steps on stdout.
func runAddNode(ctx context.Context, current, node, prefix string, workers int, stdout, stderr io.Writer) error {
	if node == "" {
		return errors.New("add-node: -node host:port[:weight] is required")
	}
	if workers < 1 {
		return errors.New("add-node: -workers must be positive")
	}
	servers, err := memclient.ParseServers(current)
	if err != nil {
		return fmt.Errorf("add-node: %s: %w", envMemcachedAddr, err)
	}
	added, err := memclient.ParseServers(node)
	if err == nil && len(added) != 1 {
		err = fmt.Errorf("%d servers", len(added))
	}
	if err != nil {
		return fmt.Errorf("add-node: -node %q: want one host:port[:weight]: %w", node, err)
	}
	for _, s := range servers {
		if s.Addr == added[0].Addr {
			return fmt.Errorf("add-node: %s is already in %s", s.Addr, envMemcachedAddr)
		}
	}
	from, err := ringClient(servers, workers)
	if err != nil {
		return err
	}
	defer from.Close()
	to, err := ringClient(append(servers, added[0]), workers)
	if err != nil {
		return err
	}
	defer to.Close()
	if err := to.Ping(); err != nil {
		return fmt.Errorf("add-node: the new node does not answer: %w", err)
	}
	fmt.Fprintf(stderr, "add-node: copying to %s the keys it will own; every service instance must already write to both rings (phase write-both or fallback)\n", added[0].Addr)
	bar := newPrewarmBar(stderr)
	st, err := memclient.Prewarm(ctx, from, to, memclient.PrewarmConfig{Prefix: prefix, Concurrency: workers, Progress: bar.draw})
	bar.finish()
	fmt.Fprintf(stdout, "add-node: listed=%d moving=%d copied=%d present=%d raced=%d vanished=%d elapsed=%s rate=%.0f keys/s\n",
		st.Listed, st.Moving, st.Copied, st.Present, st.Raced, st.Vanished, st.Elapsed.Round(time.Millisecond), st.Rate())
	if err != nil {
		return fmt.Errorf("add-node: %w (running it again copies only what is missing)", err)
	}
	ring := strings.TrimRight(current, ", ") + "," + node
	fmt.Fprintf(stdout, `next steps (every instance already runs %[1]s=%[2]s %[3]s=write-both,
and retail cache sweep ran; phases: see memclient.Migration):
  1. set %[3]s=fallback on every instance, then new-reads, then new,
     each phase only once every instance runs the one before
  2. then run them on the new ring alone: %[4]s=%[2]s, %[1]s and %[3]s unset
`, envMemcachedNewAddr, ring, envMemcachedPhase, envMemcachedAddr)
	return nil
}

// ringClient returns a client over a ketama ring of servers.
func ringClient(servers []memclient.Server, conns int) (*memclient.Client, error) {
	ring, err := memclient.NewKetama(servers)
	if err != nil {
		return nil, fmt.Errorf("add-node: %w", err)
	}
	return memclient.New(memclient.Config{Selector: ring, MaxIdleConns: conns, Timeout: time.Second})
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
