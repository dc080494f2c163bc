package repo_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
)

// The consistency checker across processes. The parent test sets up the
// database and the private memcached behind its partition proxy, then starts
// its own test binary once per store instance, running only
// TestConsistencyWorker, which builds a store exactly as runConsistency does
// (its own pool, cache client and Repairer, the same options and fill
// delays), runs the same load and writes its history to a file. Every
// process stamps its operations with time.Now().UnixNano() minus a start
// time the parent chose, so the histories share one clock; the parent
// injects the faults meanwhile, then merges the histories and checks them
// as runConsistency does.

// Environment of a worker process.
const (
	ckEnvWorker   = "CACHEDREPO_CK_WORKER"   // the marker: the worker's index
	ckEnvDB       = "CACHEDREPO_CK_DB"       // database URL
	ckEnvCache    = "CACHEDREPO_CK_CACHE"    // memcached address (the proxy)
	ckEnvNS       = "CACHEDREPO_CK_NS"       // key namespace
	ckEnvDuration = "CACHEDREPO_CK_DURATION" // how long the load runs, from the start time
	ckEnvWorkers  = "CACHEDREPO_CK_WORKERS"  // goroutines of the process
	ckEnvKeys     = "CACHEDREPO_CK_KEYS"     // keys 1..N
	ckEnvStart    = "CACHEDREPO_CK_START"    // start time, Unix nanoseconds
	ckEnvPrefix   = "CACHEDREPO_CK_PREFIX"   // prefix of written values, unique per process
	ckEnvClient   = "CACHEDREPO_CK_CLIENT"   // the process's first client id
	ckEnvOut      = "CACHEDREPO_CK_OUT"      // file to write the history to
)

// ckStartDelay is how far ahead of the workers' launch the parent puts the
// start time, so that every process has built its store before the load
// begins (a worker that is late only starts late).
const ckStartDelay = 1500 * time.Millisecond

// ckWorkerOut is what a worker process writes to its output file.
type ckWorkerOut struct {
	Ops         []ckWireOp `json:"ops"`
	CacheErrors int64      `json:"cache_errors"`
	ReadyNanos  int64      `json:"ready_ns"` // when its store was built, on the shared clock
	NearHits    uint64     `json:"near_hits,omitempty"`
}

// ckWireOp is a ckOp as JSON.
type ckWireOp struct {
	Client int    `json:"c"`
	Key    int64  `json:"k"`
	Op     string `json:"o"`
	Value  string `json:"v,omitempty"`
	Out    string `json:"r,omitempty"`
	Call   int64  `json:"s"`
	Ret    int64  `json:"e"`
}

func (w ckWireOp) op() ckOp {
	return ckOp{client: w.Client, key: w.Key, in: ckInput{op: w.Op[0], value: w.Value}, out: w.Out, call: w.Call, ret: w.Ret}
}

func wireOp(op ckOp) ckWireOp {
	return ckWireOp{Client: op.client, Key: op.key, Op: string(rune(op.in.op)), Value: op.in.value, Out: op.out, Call: op.call, Ret: op.ret}
}

// TestConsistencyProcesses: TestConsistencyStore with each of the 4 store
// instances in a process of its own, under the same faults, held to the
// same standard: no stale read, every key linearizable, the cache equal to
// the database afterwards.
func TestConsistencyProcesses(t *testing.T) {
	if os.Getenv(ckEnvWorker) != "" {
		t.Skip("this is a worker process of TestConsistencyProcesses")
	}
	cfg := ckConfig{protocol: "store", instances: 4, workers: 6, keys: 24, duration: consistencyDuration(),
		faults: []string{"restart", "kill", "none"}}
	r := runConsistencyProcesses(t, cfg)
	violations := r.staleReads + r.badKeys + r.cacheMismatches
	testenv.Summaryf("consistency: protocol=store faults=restart,kill,evict,delay instances=%d processes=%d ops=%d faults=%d violations=%d stale_reads=%d nonlinearizable_keys=%d unproven_keys=%d cache_mismatches=%d cache_errors=%d\n",
		cfg.instances, cfg.instances, r.ops, r.faults, violations, r.staleReads, r.badKeys, r.unprovenKeys, r.cacheMismatches, r.cacheErrors)
	if violations != 0 {
		t.Fatalf("violations: %d stale reads, %d keys not linearizable, %d cache mismatches", r.staleReads, r.badKeys, r.cacheMismatches)
	}
	if r.faults == 0 || r.ops < 2000 {
		t.Fatalf("the run proves little: %d ops, %d faults", r.ops, r.faults)
	}
}

// ckWorkerProc is a running worker process.
type ckWorkerProc struct {
	index          int
	out            string // its history file
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{} // closed when it has exited and been waited for
	err            error         // of Wait, once done is closed
	killed         bool          // by kill, before it exited
}

// report is the process's output, for a failure message; it must have exited.
func (w *ckWorkerProc) report() string {
	return fmt.Sprintf("--- stdout:\n%s--- stderr:\n%s", ckTail(w.stdout.String(), 16<<10), ckTail(w.stderr.String(), 16<<10))
}

// ckTail returns the last n bytes of s.
func ckTail(s string, n int) string {
	if len(s) > n {
		s = "[...]" + s[len(s)-n:]
	}
	return s
}

// startCkWorker starts worker process i, running only the test run names,
// with env added to this process's
// environment, and registers a cleanup that kills it if it still runs.
func startCkWorker(t *testing.T, i int, out, run string, timeout time.Duration, env []string) *ckWorkerProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd() // the package directory under go test, as for this process
	if err != nil {
		t.Fatal(err)
	}
	w := &ckWorkerProc{index: i, out: out, done: make(chan struct{})}
	w.cmd = exec.Command(exe, "-test.run="+run, "-test.count=1", "-test.timeout="+timeout.String())
	w.cmd.Dir = wd
	w.cmd.Env = append(os.Environ(), append(env, ckEnvWorker+"="+strconv.Itoa(i), ckEnvOut+"="+out)...)
	w.cmd.Stdout, w.cmd.Stderr = &w.stdout, &w.stderr
	// Its own process group, killed with this process (Linux parent-death
	// signal), as repotest does for the servers.
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		t.Fatalf("start worker process %d: %v", i, err)
	}
	go func() {
		w.err = w.cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(w.kill)
	return w
}

// kill kills the process (and its process group) if it still runs, and
// waits for it to exit.
func (w *ckWorkerProc) kill() {
	select {
	case <-w.done:
	default:
		w.killed = true
		_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
		<-w.done
	}
}

func runConsistencyProcesses(t *testing.T, cfg ckConfig) ckResult {
	t.Helper()
	rig := newCkRig(t, cfg.keys)
	dir := t.TempDir()
	start := time.Now().Add(ckStartDelay)
	startNanos := start.UnixNano()
	rig.now = func() int64 { return time.Now().UnixNano() - startNanos }
	rctx, stop := context.WithDeadline(ctx, start.Add(cfg.duration))
	defer stop()

	grace := 2 * time.Minute // for a worker to exit after the load's end
	env := []string{
		ckEnvDB + "=" + rig.e.URL,
		ckEnvCache + "=" + rig.px.Addr(),
		ckEnvNS + "=" + rig.e.NS,
		ckEnvDuration + "=" + cfg.duration.String(),
		ckEnvWorkers + "=" + strconv.Itoa(cfg.workers),
		ckEnvKeys + "=" + strconv.Itoa(cfg.keys),
		ckEnvStart + "=" + strconv.FormatInt(startNanos, 10),
	}
	procs := make([]*ckWorkerProc, cfg.instances)
	for i := range procs {
		own := append(slices.Clone(env), fmt.Sprintf("%s=p%d-", ckEnvPrefix, i), fmt.Sprintf("%s=%d", ckEnvClient, i*cfg.workers))
		procs[i] = startCkWorker(t, i, filepath.Join(dir, fmt.Sprintf("worker-%d.json", i)), "^TestConsistencyWorker$", ckStartDelay+cfg.duration+grace, own)
	}
	var failure atomic.Bool
	for _, w := range procs { // a worker that fails ends the run early
		go func() {
			<-w.done
			if w.err != nil {
				failure.Store(true)
				stop()
			}
		}()
	}

	var wg sync.WaitGroup
	if sleep(rctx, time.Until(start)) == nil {
		rig.injectFaults(t, rctx, &wg, cfg.faults)
	}
	<-rctx.Done()
	wg.Wait()
	rig.px.Heal()

	if failure.Load() { // the run is void: stop the others, report the failures
		for _, w := range procs {
			w.kill()
		}
	}
	deadline := time.After(grace)
	for _, w := range procs {
		select {
		case <-w.done:
		case <-deadline:
			w.kill()
			t.Fatalf("worker process %d was still running %v after the load's end (killed)\n%s", w.index, grace, w.report())
		}
	}
	for _, w := range procs {
		if w.err != nil && !w.killed {
			t.Errorf("worker process %d failed: %v\n%s", w.index, w.err, w.report())
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	history, outs := collectWorkers(t, procs)
	var res ckResult
	var lastReady int64 = -1 << 63
	for _, out := range outs {
		res.cacheErrors += int(out.CacheErrors)
		lastReady = max(lastReady, out.ReadyNanos)
	}
	if lastReady > 0 {
		t.Logf("the last worker process was ready %v after the start time: increase ckStartDelay", time.Duration(lastReady))
	}
	res.ops, res.faults = len(history), int(rig.faults.Load())
	rig.check(t, history, cfg.keys, &res)
	res.cacheMismatches = rig.quiescence(t, cfg.keys)
	return res
}

// collectWorkers waits (up to 2 minutes) for the worker processes to exit
// and returns their histories, merged, and their outputs.
func collectWorkers(t *testing.T, procs []*ckWorkerProc) (history []ckOp, outs []ckWorkerOut) {
	t.Helper()
	for _, w := range procs {
		select {
		case <-w.done:
		case <-time.After(2 * time.Minute):
			w.kill()
			t.Fatalf("worker process %d still ran 2 minutes after the load's end (killed)\n%s", w.index, w.report())
		}
		if w.err != nil {
			t.Fatalf("worker process %d failed: %v\n%s", w.index, w.err, w.report())
		}
		b, err := os.ReadFile(w.out)
		if err != nil {
			t.Fatalf("worker process %d wrote no history: %v\n%s", w.index, err, w.report())
		}
		var out ckWorkerOut
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("worker process %d: history: %v", w.index, err)
		}
		for _, op := range out.Ops {
			history = append(history, op.op())
		}
		t.Logf("worker process %d: %d operations", w.index, len(out.Ops))
		outs = append(outs, out)
	}
	return history, outs
}

// ckWorkerEnv is what every worker process reads from its environment: its
// load and its clock, and where its history goes.
type ckWorkerEnv struct {
	index                      string
	duration                   time.Duration
	workers, keys, firstClient int
	start                      int64 // the shared clock's zero, Unix nanoseconds
	prefix, out                string
}

// readWorkerEnv reads a worker's environment, failing t on a missing or
// malformed variable.
func readWorkerEnv(t *testing.T) ckWorkerEnv {
	t.Helper()
	w := ckWorkerEnv{index: os.Getenv(ckEnvWorker)}
	env := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			t.Fatalf("worker %s: %s is not set", w.index, name)
		}
		return v
	}
	num := func(name string) int {
		n, err := strconv.ParseInt(env(name), 10, 64)
		if err != nil {
			t.Fatalf("worker %s: %s: %v", w.index, name, err)
		}
		return int(n)
	}
	var err error
	if w.duration, err = time.ParseDuration(env(ckEnvDuration)); err != nil {
		t.Fatalf("worker %s: %s: %v", w.index, ckEnvDuration, err)
	}
	w.workers, w.keys, w.start, w.firstClient = num(ckEnvWorkers), num(ckEnvKeys), int64(num(ckEnvStart)), num(ckEnvClient)
	w.prefix, w.out = env(ckEnvPrefix), env(ckEnvOut)
	return w
}

// now is the worker's clock: nanoseconds since the shared start.
func (w ckWorkerEnv) now() int64 { return time.Now().UnixNano() - w.start }

// write writes the worker's history with out (whose Ops it sets) to its
// output file.
func (w ckWorkerEnv) write(t *testing.T, history []ckOp, out ckWorkerOut) {
	t.Helper()
	out.Ops = make([]ckWireOp, len(history))
	for i, op := range history {
		out.Ops[i] = wireOp(op)
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.out, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConsistencyWorker is one store instance of TestConsistencyProcesses,
// in a process of its own; it is skipped unless that test started it.
func TestConsistencyWorker(t *testing.T) {
	if os.Getenv(ckEnvWorker) == "" {
		t.Skip("a worker process of TestConsistencyProcesses: runs only when started by it")
	}
	w := readWorkerEnv(t)
	pool := newCkPool(t, os.Getenv(ckEnvDB), w.workers)
	mc, err := cacheClient(w.workers*2, time.Second, os.Getenv(ckEnvCache))
	if err != nil {
		t.Fatal(err)
	}
	s, r := newCkStore(t, pool, mc, os.Getenv(ckEnvNS))
	ready := w.now()

	rctx, stop := context.WithDeadline(ctx, time.Unix(0, w.start).Add(w.duration))
	defer stop()
	if err := sleep(rctx, time.Until(time.Unix(0, w.start))); err != nil {
		t.Fatalf("worker %s: ready %v after the start time, later than the load's end", w.index, time.Duration(ready))
	}
	repaired := make(chan struct{})
	go func() { defer close(repaired); _ = r.Run(rctx) }()
	history := runCkLoad(rctx, []subject{storeSubject{s}}, w.workers, w.keys, w.firstClient, w.prefix, w.now)
	<-repaired
	w.write(t, history, ckWorkerOut{CacheErrors: int64(s.Stats().CacheErrors), ReadyNanos: ready})
}
