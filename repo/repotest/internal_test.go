package repotest

import (
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "postgres://postgres@127.0.0.1:5432/rt_x?sslmode=disable"},
		{"postgresql://u:p@h/", "postgresql://u:p@h/rt_x"},
		{"postgres://u@h/db?dbname=other&sslmode=disable", "postgres://u@h/rt_x?sslmode=disable"},
		{"host=/tmp port=5432 user=postgres dbname=postgres", "host=/tmp port=5432 user=postgres dbname=postgres dbname='rt_x'"},
	} {
		if got := withDatabase(tc.in, "rt_x"); got != tc.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDatabaseName(t *testing.T) {
	re := regexp.MustCompile(`^rt_[a-z0-9_]{1,36}_[0-9a-f]{12}$`)
	for _, name := range []string{"T", "TestX/sub_test#01", strings.Repeat("Ünïcode/Λ", 20)} {
		got := databaseName(name)
		if !re.MatchString(got) || len(got) > 63 {
			t.Errorf("databaseName(%q) = %q", name, got)
		}
		if databaseName(name) == got {
			t.Errorf("databaseName(%q) returned the same name twice", name)
		}
	}
}

// fakeTB records how a helper ended the test.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skip(args ...any) {
	f.skipped, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any) {
	f.failed, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runFake runs fn with a fakeTB in its own goroutine, as the testing
// package would, and returns the fake.
func runFake(fn func(tb testing.TB)) *fakeTB {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

func TestUnavailableSkipsOrFailsInCI(t *testing.T) {
	notInstalled := &notInstalledError{
		what: "memcached", install: memcachedInstallHint, looked: "PATH",
		envVar: EnvMemcached, example: "127.0.0.1:11211",
	}
	f := runFake(func(tb testing.TB) { unavailable(tb, notInstalled, false) })
	if !f.skipped || f.failed {
		t.Fatalf("not installed, CI unset: skipped=%v failed=%v, want a skip", f.skipped, f.failed)
	}
	for _, want := range []string{"apt-get update && apt-get install -y memcached", EnvMemcached} {
		if !strings.Contains(f.msg, want) {
			t.Errorf("skip message %q does not mention %q", f.msg, want)
		}
	}

	f = runFake(func(tb testing.TB) { unavailable(tb, notInstalled, true) })
	if !f.failed || f.skipped {
		t.Fatalf("not installed, CI=true: skipped=%v failed=%v, want a failure", f.skipped, f.failed)
	}
	if !strings.Contains(f.msg, "CI=true") || !strings.Contains(f.msg, memcachedInstallHint) {
		t.Errorf("failure message %q does not explain itself", f.msg)
	}

	f = runFake(func(tb testing.TB) { unavailable(tb, fmt.Errorf("initdb failed"), false) })
	if !f.failed {
		t.Fatalf("a startup error must fail, not skip: skipped=%v", f.skipped)
	}
}

func TestMemcachedNotFoundMessage(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := lookMemcached(nil)
	if err == nil {
		t.Fatal("lookMemcached found memcached in an empty PATH")
	}
	if !strings.Contains(err.Error(), memcachedInstallHint) {
		t.Errorf("message %q does not say what to install", err)
	}
}

func TestFindPostgresPrefersHighestVersion(t *testing.T) {
	dirs := []string{"/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/13/bin"}
	best := dirs[0]
	for _, d := range dirs {
		if pgDirVersion(d) > pgDirVersion(best) {
			best = d
		}
	}
	if best != "/usr/lib/postgresql/15/bin" {
		t.Errorf("highest version = %s", best)
	}
}
