package repotest

import "errors"

// ErrNotInstalled is wrapped by the errors of Servers and NewScratch when a
// server binary is not installed and no environment variable names an
// existing server. (Where a test would be skipped, or fail under CI=true,
// code without a testing.TB gets this error instead.)
var ErrNotInstalled = errors.New("repotest: server not installed")

// Servers returns the admin (superuser) URL of the shared PostgreSQL server
// and host:port of the shared memcached server, finding or starting them on
// first use exactly as Postgres and Memcached do. It is for code that gets no
// testing.TB, such as Example functions; tests should use Postgres, Memcached
// and NewDatabase, which skip or fail the test themselves.
//
// Like the other helpers it needs Run in TestMain. It returns an error if
// the harness is not running or a server cannot be found or started; the
// error wraps ErrNotInstalled when a binary is missing. Code without a
// testing.TB cannot skip, so it should treat every error as a failure: an
// Example prints it, and its output then differs from the expected output,
// with or without CI=true. It is safe for concurrent use.
func Servers() (dbURL, memcachedAddr string, err error) {
	h, err := runningHarness()
	if err != nil {
		return "", "", err
	}
	h.pgOnce.Do(func() { h.pgErr = h.startPostgres(discardf) })
	if h.pgErr != nil {
		return "", "", h.pgErr
	}
	h.mcOnce.Do(func() { h.mcErr = h.startMemcached(discardf) })
	if h.mcErr != nil {
		return "", "", h.mcErr
	}
	return h.pgURL, h.mcAddr, nil
}

// discardf is a logf that drops its message: without a testing.TB there is
// nowhere quiet to log to, and stdout belongs to the Example's output.
func discardf(string, ...any) {}

// Scratch is a fresh database and key namespace on the shared servers, for
// code that gets no testing.TB (see Servers). Close drops the database.
type Scratch struct {
	// DatabaseURL connects, as the admin user, to a fresh, empty database
	// of its own (created from template0).
	DatabaseURL string
	// Memcached is host:port of the shared memcached server.
	Memcached string
	// Namespace is a key namespace no other test or Scratch uses; keep every
	// key under it instead of flushing the shared server.
	Namespace string

	adminURL, dbName string
}

// NewScratch creates a fresh database and picks a unique key namespace on
// the shared servers, both named after name (an Example's name, say), and
// returns them. The caller must call Close when done, after closing its
// own connections or pools (Close drops the database even if some are left
// open). The errors are those of Servers, or a failure to create the
// database. It is safe for concurrent use.
func NewScratch(name string) (*Scratch, error) {
	admin, mc, err := Servers()
	if err != nil {
		return nil, err
	}
	db, err := createDatabase(admin, name)
	if err != nil {
		return nil, err
	}
	return &Scratch{
		DatabaseURL: withDatabase(admin, db),
		Memcached:   mc,
		Namespace:   namespaceFor(name),
		adminURL:    admin,
		dbName:      db,
	}, nil
}

// Close drops the scratch database (WITH (FORCE), so connections still open
// do not block it). The namespace's keys are left to expire. A second Close
// does nothing. Close must not be called concurrently with itself.
func (s *Scratch) Close() error {
	if s.dbName == "" {
		return nil
	}
	err := dropDatabase(s.adminURL, s.dbName)
	if err == nil {
		s.dbName = ""
	}
	return err
}
