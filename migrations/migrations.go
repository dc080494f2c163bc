// Package migrations ships the schema of cachedrepo's own tables as
// golang-migrate migrations embedded in the binary, and the retail
// example's catalogue apart from them.
//
// Library (library/*.sql) creates what the library's types use:
//
//	cachedrepo_outbox   the invalidation outbox (invalidation.Repairer, repo.Options.Repairer)
//	counters            aggregate.Counter
//	scores              aggregate.Leaderboard
//
// Apply it with UpLibrary, or copy the files into your own migrations. Its
// versions are recorded in the table cachedrepo_schema_migrations, so it
// lives beside your own golang-migrate history (schema_migrations) without
// touching it. The SQL of each table is also on the type that uses it.
//
// Catalog (catalog/*.sql) is the retail example's schema (categories,
// products, stores, stock), used by the example and the tests. Up applies
// both. What a cached table of yours needs from its schema is documented on
// repo.Table: an explicit key, and optionally a version column with a
// sequence DEFAULT.
package migrations

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // the pgx5:// driver
	"github.com/golang-migrate/migrate/v4/source/iofs"
)

//go:embed library/*.sql catalog/*.sql
var files embed.FS

// LibraryTable is the golang-migrate history table of the library's
// migrations.
const LibraryTable = "cachedrepo_schema_migrations"

// Library returns the library's migrations (outbox, counters, scores).
func Library() fs.FS { return sub("library") }

// Catalog returns the retail example's catalogue migrations.
func Catalog() fs.FS { return sub("catalog") }

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		panic(err) // the directory is embedded above
	}
	return f
}

// NewLibrary returns a migrate instance of the library's migrations for the
// PostgreSQL database at databaseURL (postgres:// or postgresql://),
// recording versions in LibraryTable. Close it when done.
func NewLibrary(databaseURL string) (*migrate.Migrate, error) {
	return newMigrate(Library(), databaseURL, LibraryTable)
}

// NewCatalog returns a migrate instance of the example's catalogue
// migrations, recording versions in golang-migrate's default table.
func NewCatalog(databaseURL string) (*migrate.Migrate, error) {
	return newMigrate(Catalog(), databaseURL, "")
}

func newMigrate(fsys fs.FS, databaseURL, table string) (*migrate.Migrate, error) {
	src, err := iofs.New(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	u, err := driverURL(databaseURL, table)
	if err != nil {
		return nil, err
	}
	m, err := migrate.NewWithSourceInstance("iofs", src, u)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return m, nil
}

// UpLibrary applies the library's migrations not yet applied. A database
// already up to date is not an error.
func UpLibrary(databaseURL string) error {
	return run(NewLibrary, databaseURL, (*migrate.Migrate).Up)
}

// Up applies the library's migrations and then the catalogue's: the schema
// of the example and the tests.
func Up(databaseURL string) error {
	if err := UpLibrary(databaseURL); err != nil {
		return err
	}
	return run(NewCatalog, databaseURL, (*migrate.Migrate).Up)
}

// Down reverts the catalogue's migrations and then the library's. A
// database with none applied is not an error.
func Down(databaseURL string) error {
	if err := run(NewCatalog, databaseURL, (*migrate.Migrate).Down); err != nil {
		return err
	}
	return run(NewLibrary, databaseURL, (*migrate.Migrate).Down)
}

func run(open func(string) (*migrate.Migrate, error), databaseURL string, step func(*migrate.Migrate) error) error {
	m, err := open(databaseURL)
	if err != nil {
		return err
	}
	err = step(m)
	srcErr, dbErr := m.Close()
	if err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("migrations: %w", err)
	}
	if err := errors.Join(srcErr, dbErr); err != nil {
		return fmt.Errorf("migrations: closing: %w", err)
	}
	return nil
}

// driverURL maps a PostgreSQL URL to golang-migrate's pgx v5 scheme, with
// the history table if one is given.
func driverURL(databaseURL, table string) (string, error) {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return "", fmt.Errorf("migrations: database URL: %w", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "postgres", "postgresql", "pgx5":
		u.Scheme = "pgx5"
	default:
		return "", fmt.Errorf("migrations: database URL scheme %q: want postgres://", u.Scheme)
	}
	if table != "" {
		q := u.Query()
		q.Set("x-migrations-table", table)
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}
