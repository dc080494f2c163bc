package invalidation_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// ownPG is a PostgreSQL server of one test's own, for faults that the shared
// server of repotest must not see (a restart, a lost slot): initdb'd in a
// temporary directory, on a fixed port, so that it can be stopped and
// started again under the same URL. repotest has no restart of its shared
// server.
type ownPG struct {
	t      *testing.T
	bin    string
	dir    string
	port   int
	args   []string
	cred   *syscall.Credential // the postgres user's, when running as root
	cmd    *exec.Cmd
	exited chan struct{}
}

// startOwnPG initdbs and starts a server with wal_level=logical and the
// extra "-c" settings given; it is stopped and removed with the test.
func startOwnPG(t *testing.T, settings ...string) *ownPG {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	if len(dirs) == 0 {
		if v, _ := strconv.ParseBool(os.Getenv(repotest.EnvCI)); v {
			t.Fatal("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install -y postgresql)")
		}
		t.Skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install -y postgresql)")
	}
	s := &ownPG{t: t, bin: dirs[0]}
	dir, err := os.MkdirTemp("/tmp", "cachedrepo-invalidation-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s.dir = dir
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if os.Geteuid() == 0 { // initdb and postgres refuse to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root and no postgres user to run the server as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := s.command("initdb", "-D", s.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s.args = []string{"-D", s.data(), "-p", strconv.Itoa(s.port), "-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=", "-c", "wal_level=logical", "-c", "max_replication_slots=8",
		"-c", "max_wal_senders=8", "-c", "fsync=off", "-c", "wal_writer_delay=10ms", "-c", "autovacuum=off"}
	for _, c := range settings {
		s.args = append(s.args, "-c", c)
	}
	s.start()
	t.Cleanup(func() { s.stop(syscall.SIGQUIT) })
	return s
}

func pgMajor(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func (s *ownPG) data() string { return filepath.Join(s.dir, "data") }

// URL is the admin URL of the server's postgres database.
func (s *ownPG) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

func (s *ownPG) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"PATH=" + s.bin + ":/usr/bin:/bin", "LC_ALL=C", "TZ=UTC", "HOME=" + s.dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: s.cred}
	return cmd
}

// start starts postgres and waits until it accepts connections.
func (s *ownPG) start() {
	s.t.Helper()
	log, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	s.cmd = s.command("postgres", s.args...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	exited := make(chan struct{})
	s.exited = exited
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(exited) }(s.cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			s.t.Fatalf("postgres exited while starting:\n%s", b)
		default:
		}
		c, err := pgx.Connect(context.Background(), s.URL())
		if err == nil {
			_ = c.Close(context.Background())
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("postgres did not accept connections within 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops postgres with sig (SIGINT: a fast shutdown, which checkpoints;
// SIGQUIT: an immediate one, which leaves crash recovery to the next start)
// and waits for it.
func (s *ownPG) stop(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL) // a straggling backend
	s.cmd = nil
}

// Restart stops the server with sig and starts it again on the same port.
func (s *ownPG) Restart(sig syscall.Signal) {
	s.t.Helper()
	s.stop(sig)
	s.start()
}

// env returns a test environment over the server's postgres database: the
// library's migrations and the catalogue's seed rows, as testenv.New makes
// on the shared server, with the shared memcached.
func (s *ownPG) env(t *testing.T) *testenv.Env {
	t.Helper()
	return testenv.NewAt(t, s.URL())
}
