package repotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// NewDatabase creates a fresh, empty database for this test, with a unique
// name, on the shared PostgreSQL server, registers tb.Cleanup to drop it
// (WITH (FORCE), so connections left open do not block the drop), and
// returns its URL, which connects as the admin user.
//
// The database is created from template0, so it holds nothing but the
// public schema. Register cleanups that close pools on the database after
// calling NewDatabase, so that they run before the drop.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	admin := Postgres(tb)
	name, err := createDatabase(admin, tb.Name())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := dropDatabase(admin, name); err != nil {
			tb.Error(err)
		}
	})
	return withDatabase(admin, name)
}

// createDatabase creates an empty database named after testName (see
// databaseName) on the server at adminURL and returns its name.
func createDatabase(adminURL, testName string) (string, error) {
	for attempt := 0; ; attempt++ {
		name := databaseName(testName)
		err := adminExec(adminURL, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0")
		if err == nil {
			return name, nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" && attempt < 3 { // duplicate_database
			continue
		}
		return "", fmt.Errorf("repotest: creating database %q: %w", name, err)
	}
}

// dropDatabase drops the database name, even with connections still open.
func dropDatabase(adminURL, name string) error {
	if err := adminExec(adminURL, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("repotest: dropping database %q: %w", name, err)
	}
	return nil
}

// adminExec runs sql on its own connection to adminURL. A connection per
// statement costs a few milliseconds on loopback and is never stale.
func adminExec(adminURL, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// databaseName returns a unique database name for the test named testName:
// "rt_", the lower-cased test name reduced to [a-z0-9_] and at most 36
// bytes, "_" and 12 random hex digits; 52 bytes at most, under PostgreSQL's
// limit of 63. The random part keeps names unique across test binaries
// sharing one server.
func databaseName(testName string) string {
	var b strings.Builder
	b.WriteString("rt_")
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= 3+36 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteByte('_')
	b.WriteString(randomHex(6))
	return b.String()
}

// withDatabase returns connString with its database replaced by name. It
// accepts both URL (postgres://...) and keyword/value (host=... user=...)
// connection strings.
func withDatabase(connString, name string) string {
	if u, err := url.Parse(connString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + name
		u.RawPath = ""
		if q := u.Query(); q.Has("dbname") {
			q.Del("dbname")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	// In keyword/value form the last dbname wins.
	return strings.TrimSpace(connString) + " dbname='" + name + "'"
}

// randomHex returns 2n random hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return hex.EncodeToString(b)
}

// Namespace returns a unique memcached key namespace for this test: up to 15
// bytes of the test name, "-" and 16 random hex digits, all in
// [A-Za-z0-9_-] and at most 32 bytes. It is unique across tests and test
// binaries sharing a server, so tests never need flush_all. Namespace does
// not need Run.
func Namespace(tb testing.TB) string {
	tb.Helper()
	return namespaceFor(tb.Name())
}

// namespaceFor returns a unique key namespace for the test named testName,
// as described at Namespace.
func namespaceFor(testName string) string {
	var b strings.Builder
	for _, r := range testName {
		if b.Len() >= 15 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		b.WriteByte('t')
	}
	b.WriteByte('-')
	b.WriteString(randomHex(8))
	return b.String()
}
