package repotest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"gopkg.in/yaml.v3"
)

// nutcrackerInstallHint is the command that installs nutcracker.
const nutcrackerInstallHint = "apt-get update && apt-get install -y nutcracker"

// NutcrackerProcess is a private nutcracker (twemproxy) proxy started by
// StartNutcracker for one test.
type NutcrackerProcess struct {
	bin    string
	dir    string // its temporary directory: configuration and log
	addr   string
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited and been waited for
}

// nutcrackerPool is the configuration of the proxy's one server pool.
type nutcrackerPool struct {
	Listen         string   `yaml:"listen"`
	Hash           string   `yaml:"hash"`
	Distribution   string   `yaml:"distribution"`
	AutoEjectHosts bool     `yaml:"auto_eject_hosts"`
	Servers        []string `yaml:"servers"`
}

// StartNutcracker starts a private nutcracker (twemproxy) process for this
// test in front of servers and registers tb.Cleanup to stop it. Each server
// is in twemproxy's notation, "host:port:weight" optionally followed by a
// space and a name ("127.0.0.1:11211:1 a"). Its one pool places keys with
// "distribution: ketama" and "hash: md5", with "auto_eject_hosts: false",
// and listens on a free loopback port (its stats on another). The binary is
// found in PATH or /usr/sbin, /usr/local/sbin, /usr/local/bin, and the test
// is skipped (or, with CI=true, fails) when it is not installed.
func StartNutcracker(tb testing.TB, servers ...string) *NutcrackerProcess {
	tb.Helper()
	h := mustHarness(tb)
	bin, err := findNutcracker()
	if err != nil {
		unavailable(tb, err, h.ci)
	}
	dir, err := makeTempDir("nutcracker", nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) }) // runs after the stop below
	p := &NutcrackerProcess{bin: bin, dir: dir}
	if err := p.start(servers); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.stop)
	return p
}

// Addr returns the proxy's host:port.
func (p *NutcrackerProcess) Addr() string { return p.addr }

// findNutcracker returns the path of the nutcracker binary, looking in PATH
// and then in directories PATH may lack (Debian installs it in /usr/sbin).
func findNutcracker() (string, error) {
	dirs := []string{"/usr/sbin", "/usr/local/sbin", "/usr/local/bin"}
	if bin, err := exec.LookPath("nutcracker"); err == nil {
		return bin, nil
	}
	for _, dir := range dirs {
		if bin, err := exec.LookPath(filepath.Join(dir, "nutcracker")); err == nil {
			return bin, nil
		}
	}
	return "", &notInstalledError{
		what:    "nutcracker (twemproxy)",
		install: nutcrackerInstallHint,
		looked:  strings.Join(append([]string{"PATH"}, dirs...), ", "),
	}
}

// start launches the proxy on free ports, trying others when the chosen
// ones were taken meanwhile.
func (p *NutcrackerProcess) start(servers []string) error {
	for attempt := 1; ; attempt++ {
		err := p.launch(servers)
		if err == nil || !errors.Is(err, errPortInUse) || attempt == 5 {
			return err
		}
	}
}

// launch writes the configuration, starts the process and waits until it
// answers through one of its servers.
func (p *NutcrackerProcess) launch(servers []string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	statsPort, err := freePort()
	if err != nil {
		return err
	}
	p.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf, err := yaml.Marshal(map[string]nutcrackerPool{"repotest": {
		Listen:         p.addr,
		Hash:           "md5",
		Distribution:   "ketama",
		AutoEjectHosts: false,
		Servers:        servers,
	}})
	if err != nil {
		return fmt.Errorf("repotest: nutcracker configuration: %w", err)
	}
	confFile := filepath.Join(p.dir, "nutcracker.yml")
	logFile := filepath.Join(p.dir, "nutcracker.log")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		return fmt.Errorf("repotest: %w", err)
	}
	_ = os.Remove(logFile)
	args := []string{"-c", confFile, "-o", logFile, "-a", "127.0.0.1", "-s", strconv.Itoa(statsPort)}
	cmd := exec.Command(p.bin, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = sysProcAttr(nil)
	exited, err := startCmd(cmd)
	if err != nil {
		return err
	}
	p.cmd, p.exited = cmd, exited

	// nutcracker forwards "version" to a server of its pool.
	err = memcachedReady(p.addr, startTimeout, exited)
	if err == nil {
		return nil
	}
	if !errors.Is(err, errExited) {
		p.stop()
		return fmt.Errorf("repotest: nutcracker on %s did not answer: %w\n%s", p.addr, err, tailOfFile(logFile, 4096))
	}
	p.cmd = nil
	out := tailOfFile(logFile, 4096)
	if strings.Contains(out, "in use") {
		return fmt.Errorf("repotest: nutcracker could not listen on %s: %w: %s", p.addr, errPortInUse, out)
	}
	return fmt.Errorf("repotest: nutcracker exited during startup (%v): %s %s\n%s\nconfiguration:\n%s",
		cmd.ProcessState, p.bin, strings.Join(args, " "), out, conf)
}

// stop kills the proxy (SIGKILL), if running, and waits for it to exit.
func (p *NutcrackerProcess) stop() {
	if p.cmd != nil {
		killGroup(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
		p.cmd = nil
	}
}
