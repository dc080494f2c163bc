package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// stalenessResult is what the near-cache staleness probe measured during a
// cache-on run (see probeStaleness).
type stalenessResult struct {
	Probes      int64   `json:"probes"`           // writes probed
	Reads       int64   `json:"reads"`            // reads of the written rows by the other instance, after the write's acknowledgement
	StaleReads  int64   `json:"stale_reads"`      // of those, the reads that answered a row older than the acknowledged write
	MaxMs       float64 `json:"max_staleness_ms"` // the longest a stale read ended after the acknowledgement
	P50Ms       float64 `json:"p50_staleness_ms"` // per probe: how long the older row was still served (0 if never)
	P99Ms       float64 `json:"p99_staleness_ms"`
	BoundMs     float64 `json:"bound_ms"`     // the near-cache's MaxAge (NEAR_CACHE_MAX_AGE): the bound the docs state
	BeyondBound int64   `json:"beyond_bound"` // stale reads that ended later than the bound after the acknowledgement
	Errors      int64   `json:"errors"`       // probe requests that failed
}

// probeEvery is the staleness probe's pace: one probed write per tick.
const probeEvery = 25 * time.Millisecond

// probeStaleness measures, until ctx ends, how stale the near-cache of one
// instance of the service is after a write through another: at every tick
// it picks a stock row, reads it through other (so other's near-cache holds
// it), sets its quantity through main, and once main acknowledged the write
// (with the row's new version), reads the row through other until other
// answers that version or a newer one. A read that answers an older version
// is stale; its staleness is how long after the acknowledgement it ended.
// Other learns of the write from main's NOTIFY, so what this measures is
// the invalidation's delivery across processes, under the load's traffic.
// bound is the near-cache's MaxAge.
func probeStaleness(ctx context.Context, mainURL, otherURL string, ks *keyspace, bound time.Duration, seed uint64) stalenessResult {
	main, other := newConn(strings.TrimPrefix(mainURL, "http://")), newConn(strings.TrimPrefix(otherURL, "http://"))
	defer main.close()
	defer other.close()
	r := rand.New(rand.NewPCG(seed, 0x57a1e))
	res := stalenessResult{BoundMs: ms(bound)}
	var per []time.Duration
	buf := make([]byte, 0, 1024)
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			continue
		case <-tick.C:
		}
		p := ks.products[r.IntN(len(ks.products))]
		path := "/stock/" + p.article + "/" + p.uom + "/" + ks.stores[r.IntN(len(ks.stores))]
		if _, _, ok := readVersion(ctx, other, path, buf); !ok {
			res.failed(ctx)
			continue
		}
		st, b := main.post(ctx, path, []byte(`{"quantity":`+strconv.Itoa(r.IntN(500))+`}`), buf[:0])
		acked := time.Now()
		want, ok := versionOf(b)
		if st != 200 || !ok {
			res.failed(ctx)
			continue
		}
		var stale time.Duration
		for ctx.Err() == nil {
			v, end, ok := readVersion(ctx, other, path, buf)
			if !ok {
				res.failed(ctx)
				break
			}
			res.Reads++
			if v >= want {
				break
			}
			res.StaleReads++
			stale = end.Sub(acked)
			if stale > bound {
				res.BeyondBound++
			}
			if stale > 2*bound+time.Second {
				break // far past the bound: counted; stop polling this row
			}
		}
		res.Probes++
		per = append(per, stale)
		res.MaxMs = max(res.MaxMs, ms(stale))
	}
	slices.Sort(per)
	res.P50Ms, res.P99Ms = ms(percentile(per, 50)), ms(percentile(per, 99))
	return res
}

// failed counts a failed probe request, unless the probe was ending (the
// connection's deadline is ctx's, and may fire before ctx reports it).
func (r *stalenessResult) failed(ctx context.Context) {
	if dl, ok := ctx.Deadline(); ctx.Err() != nil || ok && !time.Now().Before(dl) {
		return
	}
	r.Errors++
}

// readVersion reads the stock row at path through c and returns its
// version and when the answer arrived.
func readVersion(ctx context.Context, c *conn, path string, buf []byte) (int64, time.Time, bool) {
	st, b := c.get(ctx, path, buf[:0])
	end := time.Now()
	v, ok := versionOf(b)
	return v, end, st == 200 && ok
}

// versionOf returns the version of a stock row's JSON.
func versionOf(b []byte) (int64, bool) {
	var row struct {
		Version *int64 `json:"version"`
	}
	if json.Unmarshal(b, &row) != nil || row.Version == nil {
		return 0, false
	}
	return *row.Version, true
}
