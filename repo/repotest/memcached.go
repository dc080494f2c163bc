package repotest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// memcachedInstallHint is the command that installs memcached.
const memcachedInstallHint = "apt-get update && apt-get install -y memcached"

// MemcachedProcess is a private memcached server started by StartMemcached
// for one test, to be stopped, started and restarted by fault-injection
// tests. It always listens on the same loopback address, and a restarted
// server starts empty. Its methods are safe for concurrent use.
type MemcachedProcess struct {
	bin   string
	extra []string // arguments given to StartMemcached
	as    *runAs
	port  int
	out   *tailBuffer // the current process's output, for error messages

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil when stopped
	exited chan struct{} // closed when cmd has exited and been waited for
}

// StartMemcached starts a private memcached process for this test and
// registers tb.Cleanup to stop it. It runs like the shared server (see the
// package doc) on its own free loopback port; args (e.g. "-m", "1") are
// appended to the default arguments, so they override them. The binary is
// found as for the shared server, and the test is skipped (or, with
// CI=true, fails) when it is not installed.
func StartMemcached(tb testing.TB, args ...string) *MemcachedProcess {
	tb.Helper()
	h := mustHarness(tb)
	p, err := newMemcachedProcess(args)
	if err != nil {
		unavailable(tb, err, h.ci)
	}
	if err := p.startFresh(); err != nil {
		tb.Fatal(err)
	}
	if !h.track(p) {
		_ = p.Stop()
		tb.Fatal("repotest: the harness has shut down")
	}
	tb.Cleanup(func() {
		if err := p.Stop(); err != nil {
			tb.Errorf("repotest: stopping memcached on %s: %v", p.Addr(), err)
		}
		h.untrack(p)
	})
	return p
}

// findMemcached returns the path of the memcached binary, looking in PATH
// and then in directories PATH may lack (e.g. sbin for non-root users).
func findMemcached() (string, error) {
	return lookMemcached([]string{"/usr/bin", "/usr/sbin", "/usr/local/bin"})
}

// lookMemcached looks for memcached in PATH, then in dirs.
func lookMemcached(dirs []string) (string, error) {
	if bin, err := exec.LookPath("memcached"); err == nil {
		return bin, nil
	}
	for _, dir := range dirs {
		if bin := filepath.Join(dir, "memcached"); isExecutable(bin) {
			return bin, nil
		}
	}
	return "", &notInstalledError{
		what:    "memcached",
		install: memcachedInstallHint,
		looked:  strings.Join(append([]string{"PATH"}, dirs...), ", "),
	}
}

// newMemcachedProcess finds the binary and the user to run it as.
func newMemcachedProcess(extra []string) (*MemcachedProcess, error) {
	bin, err := findMemcached()
	if err != nil {
		return nil, err
	}
	as, err := serverUser("memcached", "memcache", "nobody")
	if err != nil {
		return nil, err
	}
	return &MemcachedProcess{
		bin:   bin,
		extra: append([]string(nil), extra...),
		as:    as,
		out:   &tailBuffer{max: 4096},
	}, nil
}

// Addr returns the server's host:port, the same across restarts.
func (p *MemcachedProcess) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))
}

// Running reports whether the server process is running.
func (p *MemcachedProcess) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runningLocked()
}

func (p *MemcachedProcess) runningLocked() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop kills the server (SIGKILL) and waits for it to exit. Stopping a
// stopped server does nothing.
func (p *MemcachedProcess) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	killGroup(p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("memcached (pid %d) did not exit within 10s of SIGKILL", p.cmd.Process.Pid)
	}
	p.cmd = nil
	return nil
}

// Start starts a stopped server again on the same port, empty, and waits
// until it accepts connections. It fails if the server is running.
func (p *MemcachedProcess) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.runningLocked() {
		return fmt.Errorf("memcached on %s is already running", p.Addr())
	}
	p.cmd = nil
	deadline := time.Now().Add(startTimeout)
	for {
		err := p.launchLocked(deadline)
		if err == nil {
			return nil
		}
		// The port may be briefly taken, e.g. by a client's connection
		// that got the same ephemeral port; wait for it.
		if !errors.Is(err, errPortInUse) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart stops the server and starts it again on the same port, empty.
func (p *MemcachedProcess) Restart() error {
	if err := p.Stop(); err != nil {
		return err
	}
	return p.Start()
}

// startFresh starts the server for the first time, on a free port; it
// tries another port when the chosen one was taken meanwhile.
func (p *MemcachedProcess) startFresh() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		p.port = port
		err = p.launchLocked(time.Now().Add(startTimeout))
		if err == nil {
			return nil
		}
		if !errors.Is(err, errPortInUse) || attempt == 5 {
			return err
		}
	}
}

// launchLocked starts the process on p.port and waits until it answers or
// deadline passes.
func (p *MemcachedProcess) launchLocked(deadline time.Time) error {
	args := []string{
		"-l", "127.0.0.1",
		"-p", strconv.Itoa(p.port),
		"-U", "0",
		"-t", "2",
		"-m", "256",
		"-c", strconv.Itoa(maxConns(4096)),
	}
	args = append(args, p.extra...)
	cmd := exec.Command(p.bin, args...)
	cmd.Dir = "/"
	p.out.Reset()
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	// As root, the process is started as p.as rather than with memcached's
	// own -u: a later setuid by memcached would clear the parent-death
	// signal that kills it with the test binary.
	cmd.SysProcAttr = sysProcAttr(p.as)
	exited, err := startCmd(cmd)
	if err != nil {
		return err
	}
	p.cmd, p.exited = cmd, exited

	err = memcachedReady(p.Addr(), time.Until(deadline), exited)
	if err == nil {
		return nil
	}
	select {
	case <-exited:
		p.cmd = nil
		out := p.out.String()
		if strings.Contains(out, "in use") || strings.Contains(out, "bind") {
			return fmt.Errorf("repotest: memcached could not listen on %s: %w: %s", p.Addr(), errPortInUse, out)
		}
		return fmt.Errorf("repotest: memcached exited during startup (%v): %s %s\n%s",
			cmd.ProcessState, p.bin, strings.Join(args, " "), out)
	default:
		killGroup(cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		p.cmd = nil
		return fmt.Errorf("repotest: memcached on %s did not answer: %w\n%s", p.Addr(), err, p.out.String())
	}
}

// maxConns returns want, or less if the open-files hard limit is lower
// (memcached raises its own limit to its -c value and fails when it cannot).
func maxConns(want int) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return want
	}
	if os.Geteuid() != 0 && lim.Max < uint64(want) {
		return max(64, int(lim.Max))
	}
	return want
}

// errExited says a server process exited while being waited for.
var errExited = errors.New("the process exited")

// memcachedReady waits up to timeout until the memcached server at addr
// answers a "version" command, or exited is closed.
func memcachedReady(addr string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		select {
		case <-exited:
			return errExited
		default:
		}
		if lastErr = memcachedVersion(addr); lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within %v: %w", timeout, lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// memcachedVersion sends "version" to addr and checks the answer.
func memcachedVersion(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("version\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "VERSION ") {
		return fmt.Errorf("unexpected answer to version: %q", strings.TrimSpace(line))
	}
	return nil
}
