package repotest

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// tempPrefix starts the names of the temporary directories the harness
// makes, so that removeStaleTempDirs can find those left behind.
const tempPrefix = "cachedrepo-repotest-"

// ownerFile, inside such a directory, holds the pid of the test binary that
// made it.
const ownerFile = "owner.pid"

// runAs is the OS user a server process runs as; nil means the current user.
type runAs struct {
	name     string
	uid, gid uint32
}

// serverUser returns the user to run a server as: nil when not root,
// otherwise the first of names that exists.
func serverUser(what string, names ...string) (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range names {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &runAs{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("repotest: running as root, and %s refuses to run as root, but none of the users %s exists to run it as; "+
		"create one (e.g. `useradd --system %s`) or run the tests as a non-root user",
		what, strings.Join(names, ", "), names[0])
}

// sysProcAttr puts a child in its own process group (so a terminal's ^C
// reaches only the test binary, which then stops it), sends it SIGKILL
// when the test binary dies, and runs it as as.
func sysProcAttr(as *runAs) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if as != nil {
		attr.Credential = &syscall.Credential{Uid: as.uid, Gid: as.gid, Groups: []uint32{}}
	}
	return attr
}

// startCmd starts cmd and returns a channel closed once it has exited and
// been waited for.
func startCmd(cmd *exec.Cmd) (exited chan struct{}, err error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("repotest: starting %s: %w", cmd.Path, err)
	}
	exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return exited, nil
}

// killGroup sends sig to the process group led by pid, ignoring a group
// that is already gone.
func killGroup(pid int, sig syscall.Signal) {
	if pid > 0 {
		_ = syscall.Kill(-pid, sig)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("repotest: finding a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("repotest: finding a free port: %w", err)
	}
	return port, nil
}

// makeTempDir makes a temporary directory owned by as (when not nil) in a
// place as can reach, and records the test binary's pid in it.
func makeTempDir(kind string, as *runAs) (string, error) {
	root := os.TempDir()
	if as != nil && !reachable(root, as.uid) {
		root = "/tmp"
	}
	dir, err := os.MkdirTemp(root, tempPrefix+kind+"-")
	if err != nil {
		return "", fmt.Errorf("repotest: making a temporary directory: %w", err)
	}
	// Written whole under another name and renamed, so that
	// removeStaleTempDirs never sees a partial file.
	tmp := filepath.Join(dir, ownerFile+".tmp")
	err = os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, ownerFile))
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("repotest: %w", err)
	}
	if as != nil {
		if err := os.Chown(dir, int(as.uid), int(as.gid)); err != nil {
			_ = os.RemoveAll(dir)
			return "", fmt.Errorf("repotest: giving %s to user %s: %w", dir, as.name, err)
		}
	}
	return dir, nil
}

// reachable reports whether user uid can traverse every directory from dir
// up to /.
func reachable(dir string, uid uint32) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil {
			return false
		}
		if st.Mode&0o001 == 0 && !(st.Uid == uid && st.Mode&0o100 != 0) {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// removeStaleTempDirs removes the temporary directories of test binaries
// that are gone (killed before they could clean up) and whose servers are
// gone too. A directory is removed only when its owner file names a process
// that no longer exists: one still being set up (no owner file yet) is left
// alone, as is anything else.
func removeStaleTempDirs() {
	for _, root := range uniq(os.TempDir(), "/tmp") {
		dirs, _ := filepath.Glob(filepath.Join(root, tempPrefix+"*"))
		for _, dir := range dirs {
			owner, ok := readPid(filepath.Join(dir, ownerFile))
			if !ok || alive(owner) {
				continue
			}
			if pm, ok := readPid(filepath.Join(dir, "data", "postmaster.pid")); ok && alive(pm) {
				continue
			}
			_ = os.RemoveAll(dir)
		}
	}
}

func uniq(a, b string) []string {
	if filepath.Clean(a) == filepath.Clean(b) {
		return []string{a}
	}
	return []string{a, b}
}

// readPid returns the positive number on the first line of file, and
// whether there was one.
func readPid(file string) (int, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// fuzzing reports whether the test binary runs with -test.fuzz.
func fuzzing() bool {
	if !flag.Parsed() {
		flag.Parse()
	}
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}

// tailBuffer keeps the last max bytes written to it; safe for concurrent
// use. It collects a server's output for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

// String returns what was kept, trimmed.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(bytes.TrimSpace(b.buf))
}

// Reset forgets what was kept.
func (b *tailBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = b.buf[:0]
}

// tailOfFile returns at most the last n bytes of file, trimmed.
func tailOfFile(file string, n int64) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, 0)
	}
	var b bytes.Buffer
	_, _ = b.ReadFrom(f)
	return string(bytes.TrimSpace(b.Bytes()))
}
