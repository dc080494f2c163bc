package repotest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgServer is a throwaway PostgreSQL server started by the harness.
type pgServer struct {
	binDir  string
	version string
	dir     string // temporary directory: data/, the unix socket, postgres.log
	port    int
	extra   []string // "-c" settings beyond the shared server's (StartPostgres)
	as      *runAs
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
}

// postgresInstallHint is the command that installs the server binaries.
const postgresInstallHint = "apt-get update && apt-get install -y postgresql"

// findPostgres returns the directory holding initdb and postgres: the
// highest-numbered /usr/lib/postgresql/N/bin, else the directory of initdb
// in PATH.
func findPostgres() (binDir, version string, err error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.SliceStable(dirs, func(i, j int) bool { return pgDirVersion(dirs[i]) > pgDirVersion(dirs[j]) })
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			return d, filepath.Base(filepath.Dir(d)), nil
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(initdb)
		if isExecutable(filepath.Join(d, "postgres")) {
			return d, "", nil
		}
	}
	return "", "", &notInstalledError{
		what:    "PostgreSQL server binaries (initdb, postgres)",
		install: postgresInstallHint,
		envVar:  EnvDatabaseURL,
		example: "postgres://postgres@127.0.0.1:5432/postgres",
		looked:  "/usr/lib/postgresql/*/bin and PATH",
	}
}

// pgDirVersion returns N (as a number, for sorting) of /usr/lib/postgresql/N/bin.
func pgDirVersion(dir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	if err != nil {
		return -1
	}
	return v
}

// isExecutable reports whether file is a regular file with an execute bit.
func isExecutable(file string) bool {
	st, err := os.Stat(file)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// startPgServer initdbs and starts a throwaway server, waiting until it
// accepts connections.
func startPgServer(extra ...string) (*pgServer, error) {
	binDir, version, err := findPostgres()
	if err != nil {
		return nil, err
	}
	as, err := serverUser("PostgreSQL", "postgres")
	if err != nil {
		return nil, err
	}
	dir, err := makeTempDir("pg", as)
	if err != nil {
		return nil, err
	}
	s := &pgServer{binDir: binDir, version: version, dir: dir, extra: extra, as: as}
	if err := s.initdb(as); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	// The port was free a moment ago; another process may take it before
	// postgres binds it, so try a few.
	for attempt := 1; ; attempt++ {
		err = s.start(as, 0)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errPortInUse) || attempt == 5 {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
}

// describe names the server for logs.
func (s *pgServer) describe() string {
	v := s.version
	if v != "" {
		v = " " + v
	}
	return fmt.Sprintf("PostgreSQL%s from %s on 127.0.0.1:%d, data in %s", v, s.binDir, s.port, s.dir)
}

// url returns the admin URL of the server.
func (s *pgServer) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// env returns the environment for initdb and postgres.
func (s *pgServer) env() []string {
	return []string{
		"PATH=" + s.binDir + ":/usr/local/bin:/usr/bin:/bin",
		"HOME=" + s.dir,
		"LC_ALL=C",
		"LANG=C",
		"TZ=UTC",
	}
}

func (s *pgServer) initdb(as *runAs) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, "initdb"),
		"-D", filepath.Join(s.dir, "data"),
		"-U", "postgres",
		"-A", "trust",
		"-E", "UTF8",
		"--locale=C",
		"--no-sync",
	)
	cmd.Dir = s.dir // initdb fails if it cannot read its working directory
	cmd.Env = s.env()
	cmd.SysProcAttr = sysProcAttr(as)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("repotest: initdb failed: %v\n%s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// errPortInUse says the server could not bind its port.
var errPortInUse = errors.New("port in use")

// start starts postgres on port (0: a fresh free one) and waits until it
// accepts connections.
func (s *pgServer) start(as *runAs, port int) error {
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return err
		}
	}
	s.port = port
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("repotest: %w", err)
	}
	defer logFile.Close() // the child has its own copy

	socketDir := s.dir
	if len(socketDir) > 90 { // unix socket paths are limited to 107 bytes
		socketDir = ""
	}
	args := []string{"-D", filepath.Join(s.dir, "data"),
		"-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + socketDir,
		"-c", "max_connections=300",
		"-c", "shared_buffers=32MB",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "autovacuum=off",
		// Logical replication, for the WAL invalidator's tests: each test
		// database may hold a slot of its own.
		"-c", "wal_level=logical",
		"-c", "max_replication_slots=64",
		"-c", "max_wal_senders=64",
		// With synchronous_commit off, WAL reaches the WAL senders when the
		// WAL writer flushes it: every 10ms instead of 200ms.
		"-c", "wal_writer_delay=10ms",
		"-c", "max_wal_size=1GB",
		"-c", "logging_collector=off",
		"-c", "log_min_messages=warning",
	}
	for _, c := range s.extra {
		args = append(args, "-c", c)
	}
	cmd := exec.Command(filepath.Join(s.binDir, "postgres"), args...)
	cmd.Dir = s.dir
	cmd.Env = s.env()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr(as)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("repotest: starting postgres: %w", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	var lastErr error
	for {
		select {
		case <-s.exited:
			log := tailOfFile(logPath, 4096)
			s.cmd = nil
			if strings.Contains(log, "could not bind") || strings.Contains(log, "already in use") {
				return fmt.Errorf("repotest: postgres could not bind 127.0.0.1:%d: %w", port, errPortInUse)
			}
			return fmt.Errorf("repotest: postgres exited during startup (%v); its log:\n%s", cmd.ProcessState, log)
		default:
		}
		if time.Now().After(deadline) {
			log := tailOfFile(logPath, 4096)
			_ = s.stop()
			return fmt.Errorf("repotest: postgres did not accept connections on 127.0.0.1:%d within %v (last error: %v); its log:\n%s",
				port, startTimeout, lastErr, log)
		}
		if lastErr = pgPing(s.url()); lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pgPing connects to url and runs a query.
func pgPing(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// stop shuts the server down (immediate shutdown, then SIGKILL to its
// process group if it lingers) and removes its directory.
func (s *pgServer) stop() error {
	err := s.halt(syscall.SIGQUIT)
	if rmErr := os.RemoveAll(s.dir); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// halt stops postgres with sig (SIGINT: a fast shutdown, which
// checkpoints; SIGQUIT: an immediate one, which leaves crash recovery to the
// next start), then SIGKILLs its process group if it lingers.
func (s *pgServer) halt(sig syscall.Signal) error {
	if s.cmd == nil {
		return nil
	}
	var err error
	pid := s.cmd.Process.Pid
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("postgres did not stop within 10s of %v; killed it", sig)
		killGroup(pid, syscall.SIGKILL)
		<-s.exited
	}
	killGroup(pid, syscall.SIGKILL) // any straggling backend
	s.cmd = nil
	return err
}

// PostgresProcess is a PostgreSQL server of one test's own (StartPostgres),
// for faults the shared server must not see: a restart, a lost replication
// slot.
type PostgresProcess struct {
	tb testing.TB
	s  *pgServer
}

// StartPostgres starts a PostgreSQL server for tb alone, with the shared
// server's settings (wal_level=logical among them) and the extra "-c"
// settings given ("name=value", overriding those); it is stopped and
// removed with the test. The shared settings include fsync=off and
// synchronous_commit=off: a test that restarts the server with SIGQUIT and
// counts acknowledged commits wants "synchronous_commit=on".
// Without the server binaries it skips tb, or fails it under CI=true.
func StartPostgres(tb testing.TB, settings ...string) *PostgresProcess {
	tb.Helper()
	h := mustHarness(tb)
	s, err := startPgServer(settings...)
	if err != nil {
		unavailable(tb, err, h.ci)
	}
	tb.Cleanup(func() {
		if err := s.stop(); err != nil {
			tb.Errorf("repotest: stopping %s: %v", s.describe(), err)
		}
	})
	return &PostgresProcess{tb: tb, s: s}
}

// URL returns the admin URL of the server's postgres database.
func (p *PostgresProcess) URL() string { return p.s.url() }

// Restart stops the server with sig (syscall.SIGINT: a fast shutdown;
// syscall.SIGQUIT: an immediate one, whose next start is crash recovery)
// and starts it again on the same port, failing the test if it cannot.
func (p *PostgresProcess) Restart(sig syscall.Signal) {
	p.tb.Helper()
	if err := p.s.halt(sig); err != nil {
		p.tb.Fatal(err)
	}
	if err := p.s.start(p.s.as, p.s.port); err != nil {
		p.tb.Fatal(err)
	}
}
