package repo

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
)

// The invalidation outbox. With Options.Repairer set, every write records its
// cache key in the outbox table in the same statement (so in the same
// transaction) as the change itself. After the commit the store updates the
// cache and, if that worked, deletes the row. A row left behind (the process
// died between commit and cache update, or the cache was unreachable) is
// replayed by a Repairer, which deletes the key from the cache and then the
// row. Deleting is always safe: the next read refills from the database under
// a lease, so a fill that read the row before the write cannot win.
//
// The table (migrations.Library creates it):
//
//	CREATE TABLE cachedrepo_outbox (
//	    id         bigserial PRIMARY KEY,
//	    cache_key  text NOT NULL,
//	    created_at timestamptz NOT NULL DEFAULT now()
//	);

// writeSQL holds a store's write statements, with or without the outbox.
type writeSQL struct {
	outbox                         bool
	insert, upsert, update, delete string
	outboxDone                     string
}

func newWriteSQL[T any, K comparable](c *compiled[T, K], outbox string) writeSQL {
	w := writeSQL{insert: c.insert, upsert: c.upsert, update: c.update, delete: c.delete}
	if outbox == "" {
		return w
	}
	ob := protocol.QuoteIdent(outbox)
	var ret []string
	for _, col := range c.cols {
		ret = append(ret, "w."+protocol.QuoteIdent(col))
	}
	rowCols := strings.Join(ret, ", ")
	delCol := "w." + "true"
	if c.versionIdx >= 0 {
		delCol = "w." + protocol.QuoteIdent(c.cols[c.versionIdx])
	}
	wrap := func(stmt string, params int, cols string) string {
		if cols == "w.true" {
			return fmt.Sprintf("WITH w AS (%s), o AS (INSERT INTO %s (cache_key) SELECT $%d FROM w RETURNING id) SELECT true, o.id FROM w CROSS JOIN o", stmt, ob, params+1)
		}
		return fmt.Sprintf("WITH w AS (%s), o AS (INSERT INTO %s (cache_key) SELECT $%d FROM w RETURNING id) SELECT %s, o.id FROM w CROSS JOIN o", stmt, ob, params+1, cols)
	}
	w.outbox = true
	w.insert = wrap(c.insert, len(c.writeCols), rowCols)
	w.upsert = wrap(c.upsert, len(c.writeCols), rowCols)
	w.update = wrap(c.update, len(c.keyCols)+len(c.setCols), rowCols)
	w.delete = wrap(c.delete, len(c.keyCols), delCol)
	w.outboxDone = fmt.Sprintf("DELETE FROM %s WHERE id = $1", ob)
	return w
}

// scanner returns the row scanner for write statements: with the outbox,
// the last column is the outbox row id, stored in *outboxID and hidden from
// the table's Scan.
func (s *Store[T, K]) scanner(outboxID *int64) pgx.RowToFunc[T] {
	if !s.w.outbox {
		return s.t.scan
	}
	return func(row pgx.CollectableRow) (T, error) {
		return s.t.scan(lastColumn{CollectableRow: row, dst: outboxID})
	}
}

// lastColumn hides a row's last column from a scan function and scans it
// into dst instead.
type lastColumn struct {
	pgx.CollectableRow
	dst *int64
}

func (r lastColumn) FieldDescriptions() []pgconn.FieldDescription {
	fd := r.CollectableRow.FieldDescriptions()
	return fd[:len(fd)-1]
}

func (r lastColumn) Scan(dest ...any) error {
	return r.CollectableRow.Scan(append(dest, r.dst)...)
}

func (r lastColumn) Values() ([]any, error) {
	v, err := r.CollectableRow.Values()
	if len(v) > 0 {
		v = v[:len(v)-1]
	}
	return v, err
}

func (r lastColumn) RawValues() [][]byte {
	v := r.CollectableRow.RawValues()
	if len(v) > 0 {
		v = v[:len(v)-1]
	}
	return v
}
