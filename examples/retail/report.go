package main

import (
	"encoding/json"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report is the side-by-side result of the two load runs.
type report struct {
	On, Off runResult
	Probe   *runResult // the staleness run (cache on, with the probe's second instance), or nil
	Warm    *warmReport
	Options loadOptions
	Keys    *keyspace
	When    time.Time
}

// Goals of issue #5.
const (
	goalQueriesPerRequest = 0.05
	goalSpeedup           = 2.5
	goalWarmRatio         = 0.8
)

// staleness is the staleness run's measurement, or nil.
func (r report) staleness() *stalenessResult {
	if r.Probe == nil {
		return nil
	}
	return r.Probe.Staleness
}

func mark(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// summary is the table printed at the end of make demo.
func (r report) summary() string {
	var b strings.Builder
	row := func(name, on, off, ratio string) {
		fmt.Fprintf(&b, "| %-34s | %12s | %12s | %8s |\n", name, on, off, ratio)
	}
	row("", "cache on", "cache off", "on/off")
	fmt.Fprintf(&b, "|%s|%s|%s|%s|\n", strings.Repeat("-", 36), strings.Repeat("-", 14), strings.Repeat("-", 14), strings.Repeat("-", 10))
	row("throughput (req/s)", fmt.Sprintf("%.0f", r.On.Throughput), fmt.Sprintf("%.0f", r.Off.Throughput), ratio(r.On.Throughput, r.Off.Throughput))
	row("p50 latency (ms)", fmt.Sprintf("%.2f", r.On.P50ms), fmt.Sprintf("%.2f", r.Off.P50ms), ratio(r.On.P50ms, r.Off.P50ms))
	row("p99 latency (ms)", fmt.Sprintf("%.2f", r.On.P99ms), fmt.Sprintf("%.2f", r.Off.P99ms), ratio(r.On.P99ms, r.Off.P99ms))
	row("cache hit ratio", pct(r.On.HitRatio), pct(r.Off.HitRatio), "")
	row("near-cache hit share", pct(r.On.NearShare), pct(r.Off.NearShare), "")
	row("DB read queries per read request", fmt.Sprintf("%.4f", r.On.ReadQueriesPerRead), fmt.Sprintf("%.4f", r.Off.ReadQueriesPerRead), "")
	row("DB statements per request (all)", fmt.Sprintf("%.4f", r.On.QueriesPerRequest), fmt.Sprintf("%.4f", r.Off.QueriesPerRequest), "")
	if st := r.staleness(); st != nil {
		row("near-cache staleness p99/max (ms)", fmt.Sprintf("%.1f / %.1f", st.P99Ms, st.MaxMs), "-", "")
	}
	row("requests measured", thousands(r.On.Requests), thousands(r.Off.Requests), "")
	row("errors (5xx, transport)", thousands(r.On.ServerErrors), thousands(r.Off.ServerErrors), "")
	b.WriteString("\n")
	fmt.Fprintf(&b, "- DB read queries per read request <= %.2f with the cache: %.4f, %s\n", goalQueriesPerRequest, r.On.ReadQueriesPerRead, mark(r.On.ReadQueriesPerRead <= goalQueriesPerRequest))
	fmt.Fprintf(&b, "- throughput >= %.1fx the no-cache run: %sx, %s\n", goalSpeedup, ratio(r.On.Throughput, r.Off.Throughput), mark(r.On.Throughput >= goalSpeedup*r.Off.Throughput))
	fmt.Fprintf(&b, "- p99 lower than the no-cache run: %.2f ms vs %.2f ms, %s\n", r.On.P99ms, r.Off.P99ms, mark(r.On.P99ms < r.Off.P99ms))
	if st := r.staleness(); st != nil {
		fmt.Fprintf(&b, "- near-cache staleness across instances, in a run of its own at %.0f req/s (%s probed writes, %s reads after them, %s stale): p50 %.1f ms, p99 %.1f ms, max %.1f ms; "+
			"stale past the bound (NEAR_CACHE_MAX_AGE %.0f ms): %d, %s\n",
			r.Probe.Throughput, thousands(st.Probes), thousands(st.Reads), thousands(st.StaleReads), st.P50Ms, st.P99Ms, st.MaxMs, st.BoundMs, st.BeyondBound,
			mark(st.Probes > 0 && st.BeyondBound == 0 && st.Errors == 0))
	}
	if w := r.Warm; w != nil {
		fmt.Fprintf(&b, "- warm-up: %s rows in %.1fs, %s rows/s (stock %s rows/s)", thousands(w.Rows), w.Seconds, thousands(int64(w.RowsPerSec)), thousands(int64(w.StockPerSec)))
		if w.RawSetsPerSec > 0 {
			fmt.Fprintf(&b, "; raw parallel Set %s/s; ratio %.2f (goal >= %.1f), %s", thousands(int64(w.RawSetsPerSec)), w.Ratio, goalWarmRatio, mark(w.Ratio >= goalWarmRatio))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func pct(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }

// write writes report.md, report.svg and results.json into dir and returns
// their paths.
func (r report) write(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	md := filepath.Join(dir, "report.md")
	svg := filepath.Join(dir, "report.svg")
	js := filepath.Join(dir, "results.json")
	if err := os.WriteFile(md, []byte(r.markdown()), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(svg, []byte(r.svg()), 0o644); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(map[string]any{"cache_on": r.On, "cache_off": r.Off, "staleness_run": r.Probe, "warm": r.Warm, "when": r.When}, "", "  ")
	if err := os.WriteFile(js, append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return []string{md, svg, js}, nil
}

func (r report) markdown() string {
	var b strings.Builder
	o := r.Options
	b.WriteString("# Retail example: load test with and without the cache\n\n")
	fmt.Fprintf(&b, "Run %s on %s/%s, %d CPUs (%s). The same service binary ran twice, with `CACHE=on` and `CACHE=off`"+
		" (a repo.Cache that stores nothing, so every read goes to PostgreSQL through the same handlers and SQL).\n\n",
		r.When.Format(time.RFC3339), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "Workload: %s products in %d categories, %d stores, %s stock rows; %d concurrent keep-alive clients; "+
		"%v measured after %v of unmeasured load per run, %d round(s) alternating on and off (each mode's median run shown); Zipf s=%.2f over products, articles, stores and players; %.0f%% writes.\n\n",
		thousands(int64(len(r.Keys.products))), len(r.Keys.categories), len(r.Keys.stores),
		thousands(int64(len(r.Keys.products))*int64(len(r.Keys.stores))), o.Clients, o.Duration, o.Warmup, max(o.Rounds, 1), o.Skew, o.WritePct)
	b.WriteString("![throughput, latency and database queries, cache on vs off](report.svg)\n\n## Summary\n\n")
	b.WriteString(r.summary())
	b.WriteString("\nDB read queries are SELECTs without FOR UPDATE, counted by a pgx QueryTracer on the pool; " +
		"\"statements\" counts everything sent: a write's statements (one for a quantity set or a visit, BEGIN, SELECT ... FOR UPDATE, UPDATE and COMMIT " +
		"for a delta) and, with the cache, the near-cache's NOTIFYs, which are not reads. " +
		"Hit ratio is (near-cache hits + memcached hits) / (near-cache hits + hits + misses) over every store and cached query.\n")
	if st := r.staleness(); st != nil {
		fmt.Fprintf(&b, "\nNear-cache staleness: in a run of its own after the measured rounds, under the same load (%.0f req/s, near-cache share %s), "+
			"a second instance of the service ran beside the loaded one; the throughput runs above have no second instance, "+
			"which would take CPU from the measured service. "+
			"Every %v a probe read a random stock row through the second instance (so its near-cache held the row), "+
			"set the row's quantity through the loaded instance, and then read the row through the second instance until it answered "+
			"the new version. A stale read is one that answered an older version after the write was acknowledged; its staleness is how long after "+
			"the acknowledgement it ended. The second instance learns of the write only from the NOTIFY the loaded instance sends after its write-through; "+
			"NEAR_CACHE_MAX_AGE bounds it when a NOTIFY is lost.\n",
			r.Probe.Throughput, pct(r.Probe.NearShare), probeEvery)
	}
	b.WriteString("\n## Per endpoint\n\n| endpoint | share | on p50 ms | on p99 ms | off p50 ms | off p99 ms |\n|---|---:|---:|---:|---:|---:|\n")
	ops, _ := mix(o.WritePct)
	for _, op := range ops {
		on, off := r.On.Ops[op.name], r.Off.Ops[op.name]
		fmt.Fprintf(&b, "| %s | %.1f%% | %.2f | %.2f | %.2f | %.2f |\n", op.name, 100*op.weight, on.P50ms, on.P99ms, off.P50ms, off.P99ms)
	}
	b.WriteString("\n## Cache protocol counters (cache on, measured window)\n\n")
	fmt.Fprintf(&b, "| hits | misses | fills | lease waits | CAS conflicts | cache errors |\n|---:|---:|---:|---:|---:|---:|\n| %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
		r.On.Hits, r.On.Misses, r.On.Fills, r.On.LeaseWaits, r.On.CASConflicts, r.On.CacheErrors)
	if w := r.Warm; w != nil {
		b.WriteString("\n## Warm-up\n\n| table | rows | seconds | rows/s |\n|---|---:|---:|---:|\n")
		for _, t := range w.Tables {
			fmt.Fprintf(&b, "| %s | %s | %.2f | %s |\n", t.Table, thousands(t.Rows), t.Elapsed.Seconds(), thousands(int64(t.Rate())))
		}
		if w.RawSetsPerSec > 0 {
			fmt.Fprintf(&b, "| raw parallel Set (%d-byte values) | %s | %.2f | %s |\n", w.RawValueBytes, thousands(w.RawSets),
				float64(w.RawSets)/w.RawSetsPerSec, thousands(int64(w.RawSetsPerSec)))
			fmt.Fprintf(&b, "\nStock warm-up rate / raw Set rate: **%.2f** (goal >= %.1f). %d workers, %d rows per Store.Warm call.\n", w.Ratio, goalWarmRatio, w.Workers, w.Batch)
		}
	}
	return b.String()
}

// svg draws four panels of paired bars (cache on, cache off): throughput,
// p50, p99 and DB read queries per read request.
func (r report) svg() string {
	type panel struct {
		title   string
		on, off float64
		format  string
	}
	panels := []panel{
		{"Throughput (req/s, higher is better)", r.On.Throughput, r.Off.Throughput, "%.0f"},
		{"p50 latency (ms, lower is better)", r.On.P50ms, r.Off.P50ms, "%.2f"},
		{"p99 latency (ms, lower is better)", r.On.P99ms, r.Off.P99ms, "%.2f"},
		{"DB read queries per read request", r.On.ReadQueriesPerRead, r.Off.ReadQueriesPerRead, "%.3f"},
	}
	const (
		pw, ph   = 230, 260 // panel size
		top      = 50
		barW     = 60
		chartTop = 40
		chartH   = 160
	)
	w := pw*len(panels) + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n", w, ph+top+20, w, ph+top+20)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="24" font-size="16" font-weight="bold">%s</text>`+"\n",
		html.EscapeString(fmt.Sprintf("cachedrepo retail example: %d clients, %v per run, %.0f%% writes", r.Options.Clients, r.Options.Duration, r.Options.WritePct)))
	fmt.Fprintf(&b, `<rect x="10" y="34" width="12" height="12" fill="#1b7f79"/><text x="26" y="45" font-size="12">cache on</text>`+"\n")
	fmt.Fprintf(&b, `<rect x="100" y="34" width="12" height="12" fill="#9a9a9a"/><text x="116" y="45" font-size="12">cache off</text>`+"\n")
	for i, p := range panels {
		x0 := 10 + i*pw
		y0 := top
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" font-weight="bold">%s</text>`+"\n", x0, y0+20, html.EscapeString(p.title))
		maxV := slices.Max([]float64{p.on, p.off, 1e-9})
		base := y0 + chartTop + chartH
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", x0+20, base, x0+pw-30, base)
		for j, v := range []float64{p.on, p.off} {
			h := int(v / maxV * chartH)
			x := x0 + 35 + j*(barW+30)
			color := "#1b7f79"
			if j == 1 {
				color = "#9a9a9a"
			}
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", x, base-h, barW, h, color)
			fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" text-anchor="middle">%s</text>`+"\n", x+barW/2, base-h-5, fmt.Sprintf(p.format, v))
			label := "on"
			if j == 1 {
				label = "off"
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" text-anchor="middle">%s</text>`+"\n", x+barW/2, base+16, label)
		}
		if p.off > 0 && p.on > 0 {
			fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11" fill="#555">on/off = %.2f</text>`+"\n", x0+35, base+34, p.on/p.off)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
