// Package migrations holds the schema used by cachedrepo's tests and example
// service as golang-migrate migrations embedded in the binary, and helpers to
// apply them.
//
// Users with their own schema keep their own migrations; what a cached table
// needs from its schema is documented on repo.Table (an explicit key, and
// optionally a version column with a sequence DEFAULT).
package migrations

import (
	"embed"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // the pgx5:// driver
	"github.com/golang-migrate/migrate/v4/source/iofs"
)

//go:embed *.sql
var files embed.FS

// New returns a migrate instance over the embedded migrations for the
// PostgreSQL database at databaseURL (postgres:// or postgresql:// URLs are
// accepted and handed to golang-migrate's pgx v5 driver). Close it when done.
func New(databaseURL string) (*migrate.Migrate, error) {
	src, err := iofs.New(files, ".")
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	u, err := driverURL(databaseURL)
	if err != nil {
		return nil, err
	}
	m, err := migrate.NewWithSourceInstance("iofs", src, u)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return m, nil
}

// Up applies every migration not yet applied. A database already up to date
// is not an error.
func Up(databaseURL string) error {
	return run(databaseURL, (*migrate.Migrate).Up)
}

// Down reverts every applied migration. A database with none applied is not
// an error.
func Down(databaseURL string) error {
	return run(databaseURL, (*migrate.Migrate).Down)
}

func run(databaseURL string, step func(*migrate.Migrate) error) error {
	m, err := New(databaseURL)
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

// driverURL maps a PostgreSQL URL to golang-migrate's pgx v5 scheme.
func driverURL(databaseURL string) (string, error) {
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
	return u.String(), nil
}
