package repo

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/cachedrepo/cachedrepo/repo/invalidation"
)

// A Store is a target of the WAL invalidator (invalidation.WAL): it is kept
// in line with changes made behind its back.
var _ invalidation.Target = (*Store[struct{}, int64])(nil)

// WALTable returns the table, its key columns and its version column, for
// the WAL invalidator.
func (s *Store[T, K]) WALTable() (table string, key []string, version string) {
	if s.t.versionIdx >= 0 {
		version = s.t.cols[s.t.versionIdx]
	}
	return s.t.name, s.t.keyCols, version
}

// errUnkeyable means a WAL change's key could not be turned into K.
var errUnkeyable = errors.New("repo: key type not parsable from the WAL")

// WALApply brings the cache in line with one committed transaction's
// changes to the table, for the WAL invalidator: with a version column it
// deletes an entry only if it is older than the change (so write-through
// values survive); without one, it deletes. It first re-reads the table's
// key generation, so no key is missed after another process's
// InvalidateAll. A key type that cannot be parsed from PostgreSQL's text
// format (only integers, strings, bools and 16-byte UUIDs, or structs of
// them, can) invalidates the whole table instead. It returns an error only if
// the cache could not be updated.
func (s *Store[T, K]) WALApply(ctx context.Context, changes []invalidation.Change) error {
	kb, err := s.gen.Refresh(s.c)
	if err != nil {
		return err
	}
	keys, versions := make([]string, 0, len(changes)), make([]int64, 0, len(changes))
	at := make(map[string]int, len(changes))
	for _, ch := range changes {
		k, err := s.t.parseKey(ch.Key)
		if err != nil {
			return s.InvalidateAll(ctx)
		}
		key := s.keyWith(kb, k)
		version := ch.Version
		if ch.Deleted {
			version = 0
		}
		keys, versions = invalidation.Coalesce(keys, versions, at, key, version)
	}
	if err := s.c.DeleteOlderMany(ctx, keys, versions); err != nil {
		return &OpError{Op: "wal", Table: s.t.name, Err: err}
	}
	if s.near != nil { // the near-caches of this process and, by NOTIFY, of the others
		s.near.written(ctx, keys...)
	}
	return nil
}

// textParser returns a function that parses PostgreSQL's text format of a
// value of type t into v, or nil if t is not supported.
func textParser(t reflect.Type) func(s string, v reflect.Value) error {
	switch t.Kind() {
	case reflect.String:
		return func(s string, v reflect.Value) error { v.SetString(s); return nil }
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(s string, v reflect.Value) error {
			n, err := strconv.ParseInt(s, 10, t.Bits())
			v.SetInt(n)
			return err
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return func(s string, v reflect.Value) error {
			n, err := strconv.ParseUint(s, 10, t.Bits())
			v.SetUint(n)
			return err
		}
	case reflect.Bool:
		return func(s string, v reflect.Value) error {
			b, err := strconv.ParseBool(s)
			v.SetBool(b)
			return err
		}
	case reflect.Array:
		if t.Len() == 16 && t.Elem().Kind() == reflect.Uint8 { // a uuid
			return func(s string, v reflect.Value) error {
				b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
				if err != nil || len(b) != 16 {
					return fmt.Errorf("not a uuid: %q", s)
				}
				reflect.Copy(v, reflect.ValueOf(b))
				return nil
			}
		}
	}
	return nil
}

// parseKey turns a key's columns in text format into K.
func (c *compiled[T, K]) parseKey(text []string) (K, error) {
	var k K
	if c.keyParsers == nil || len(text) != len(c.keyParsers) {
		return k, errUnkeyable
	}
	v := reflect.ValueOf(&k).Elem()
	for i, p := range c.keyParsers {
		f := v
		if v.Kind() == reflect.Struct && len(c.keyCols) > 1 {
			f = v.Field(i)
		}
		if err := p(text[i], f); err != nil {
			return k, fmt.Errorf("%w: %w", errUnkeyable, err)
		}
	}
	return k, nil
}

// compileKeyParsers sets keyParsers if every key column's Go type can be
// parsed from text.
func (c *compiled[T, K]) compileKeyParsers() {
	kt := reflect.TypeFor[K]()
	var ps []func(string, reflect.Value) error
	if len(c.keyCols) == 1 {
		ps = append(ps, textParser(kt))
	} else if kt.Kind() == reflect.Struct && kt.NumField() == len(c.keyCols) {
		for i := range kt.NumField() {
			ps = append(ps, textParser(kt.Field(i).Type))
		}
	}
	for _, p := range ps {
		if p == nil {
			return
		}
	}
	if len(ps) == len(c.keyCols) {
		c.keyParsers = ps
	}
}
