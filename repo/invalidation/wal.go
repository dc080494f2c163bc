package invalidation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// WALConfig configures NewWAL. ConnString and Targets are required.
type WALConfig struct {
	// ConnString connects to the database as a role with the REPLICATION
	// attribute (or a superuser); "replication=database" is added to it.
	// The server needs wal_level=logical and a free replication slot and
	// WAL sender (max_replication_slots, max_wal_senders).
	ConnString string

	// Targets are the cached tables to keep in line: Stores, Counters,
	// Leaderboards. Changes to other tables in the publication are ignored
	// (and counted).
	Targets []Target

	// Slot is the logical replication slot, created if missing. One WAL
	// holds it at a time; others started with the same Slot wait and take
	// over when it is released. Default "cachedrepo_invalidator".
	Slot string

	// Publication is the publication of the targets' tables, created if
	// missing and extended with any target table it lacks. Default
	// "cachedrepo".
	Publication string

	// StatusInterval is how often the confirmed position is reported to the
	// server (and so how much WAL a restart replays at most). Default 1s.
	StatusInterval time.Duration

	// RetryInterval is the pause before connecting again after a failure,
	// and a standby's pause before it tries to take the slot. Default 1s.
	RetryInterval time.Duration

	// Hooks receive CacheError events (step "wal") for cache steps that
	// failed and are retried.
	Hooks observe.Hooks
}

// WAL is the WAL invalidator: it tails PostgreSQL's logical replication
// (pgoutput) for the targets' tables and applies every committed INSERT,
// UPDATE, DELETE and TRUNCATE to the cache, so that changes made behind the
// stores' backs (psql, migrations, batch jobs, other services) reach the
// cache within its lag instead of the TTL. See the package documentation.
type WAL struct {
	cfg     WALConfig
	targets map[string][]*walTarget // by "schema.table"; a table may have several (row types of two releases)

	changes, txns, ignored, truncates, invalidations, unkeyed atomic.Uint64
	confirmed                                                 atomic.Uint64 // LSN
	holding                                                   atomic.Bool

	lagMu sync.Mutex
	lags  []time.Duration // the last lagWindow commit-to-cache lags
	lagN  int
}

const lagWindow = 4096

type walTarget struct {
	t       Target
	key     []string
	version string
	changed atomic.Bool // some change of the table was applied
}

// WALStats are counters of what a WAL did since it was created.
type WALStats struct {
	Transactions  uint64        // transactions with changes to target tables, applied and confirmed
	Changes       uint64        // row changes applied to the cache
	Ignored       uint64        // row changes of tables that are not targets
	Truncates     uint64        // TRUNCATEs applied (each an InvalidateAll)
	Tables        int           // target tables that had changes
	Invalidations uint64        // InvalidateAll calls of targets (TRUNCATE, Unkeyed changes, a new or lost slot)
	Unkeyed       uint64        // row changes whose key the WAL did not carry (see the package doc), applied as an InvalidateAll of their table
	ConfirmedLSN  string        // the last position confirmed to the server
	Holding       bool          // this WAL holds the slot now
	LagP50        time.Duration // commit to cache step, over the last 4096 transactions
	LagP99        time.Duration
}

// NewWAL returns a WAL invalidator for cfg. It checks the configuration and
// does not connect.
func NewWAL(cfg WALConfig) (*WAL, error) {
	if cfg.ConnString == "" || len(cfg.Targets) == 0 {
		return nil, errors.New("invalidation: NewWAL needs a ConnString and Targets")
	}
	if cfg.Slot == "" {
		cfg.Slot = "cachedrepo_invalidator"
	}
	if cfg.Publication == "" {
		cfg.Publication = "cachedrepo"
	}
	for _, n := range []string{cfg.Slot, cfg.Publication} {
		if err := protocol.CheckIdent(n); err != nil || strings.Contains(n, ".") {
			return nil, fmt.Errorf("invalidation: slot or publication name %q is not a plain name", n)
		}
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	w := &WAL{cfg: cfg, targets: map[string][]*walTarget{}}
	for _, t := range cfg.Targets {
		name, key, version := t.WALTable()
		if !strings.Contains(name, ".") {
			name = "public." + name
		}
		if len(key) == 0 {
			return nil, fmt.Errorf("invalidation: target of table %s has no key columns", name)
		}
		w.targets[name] = append(w.targets[name], &walTarget{t: t, key: key, version: version})
	}
	return w, nil
}

// Stats returns a snapshot of the WAL's counters.
func (w *WAL) Stats() WALStats {
	st := WALStats{Transactions: w.txns.Load(), Changes: w.changes.Load(), Ignored: w.ignored.Load(),
		Truncates: w.truncates.Load(), Invalidations: w.invalidations.Load(), Unkeyed: w.unkeyed.Load(),
		ConfirmedLSN: pglogrepl.LSN(w.confirmed.Load()).String(), Holding: w.holding.Load()}
	for _, ts := range w.targets {
		for _, t := range ts {
			if t.changed.Load() {
				st.Tables++
				break
			}
		}
	}
	w.lagMu.Lock()
	lags := slices.Clone(w.lags)
	w.lagMu.Unlock()
	if len(lags) > 0 {
		slices.Sort(lags)
		st.LagP50 = lags[len(lags)/2]
		st.LagP99 = lags[len(lags)*99/100]
	}
	return st
}

func (w *WAL) recordLag(d time.Duration) {
	w.lagMu.Lock()
	if len(w.lags) < lagWindow {
		w.lags = append(w.lags, d)
	} else {
		w.lags[w.lagN%lagWindow] = d
	}
	w.lagN++
	w.lagMu.Unlock()
}

// Run tails the WAL until ctx ends, and returns ctx's error. It connects,
// makes sure the publication and the slot exist, and streams; after a
// failure (a lost connection, a restarted server, the slot held by another
// WAL) it waits RetryInterval and starts again from the slot's confirmed
// position, so nothing committed is lost. Run it in a goroutine of its own.
func (w *WAL) Run(ctx context.Context) error {
	for {
		err := w.session(ctx)
		w.holding.Store(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !isSlotBusy(err) {
			w.cacheErr(ctx, "", err)
		}
		if err := protocol.Sleep(ctx, w.cfg.RetryInterval); err != nil {
			return err
		}
	}
}

func (w *WAL) cacheErr(ctx context.Context, table string, err error) {
	if h := w.cfg.Hooks.Event; h != nil {
		h(ctx, observe.Event{Kind: observe.CacheError, Step: observe.StepWAL, Table: table, Err: err})
	}
}

// isSlotBusy reports whether err says another WAL holds the slot.
func isSlotBusy(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55006" // object_in_use
}

// session is one connection's life: set up, stream, until an error.
func (w *WAL) session(ctx context.Context) error {
	cfg, err := pgconn.ParseConfig(w.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("invalidation: wal: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("invalidation: wal: connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := w.ensurePublication(ctx, conn); err != nil {
		return err
	}
	created, err := w.ensureSlot(ctx, conn)
	if err != nil {
		return err
	}
	err = pglogrepl.StartReplication(ctx, conn, w.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + w.cfg.Publication + "'"}})
	if err != nil {
		return fmt.Errorf("invalidation: wal: starting replication: %w", err)
	}
	w.holding.Store(true)
	if created {
		// A new slot streams from now: changes committed before it (while
		// no slot existed, or after a slot was lost) never arrive, so
		// nothing cached before now can be trusted.
		if err := w.invalidateAll(ctx); err != nil {
			return err
		}
	}
	return w.stream(ctx, conn)
}

// simple runs sql on a replication connection and returns the rows' text.
func simple(ctx context.Context, conn *pgconn.PgConn, sql string) ([][]string, error) {
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, r := range res {
		for _, row := range r.Rows {
			s := make([]string, len(row))
			for i, v := range row {
				s[i] = string(v)
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// ensurePublication creates the publication, or adds the target tables it
// lacks.
func (w *WAL) ensurePublication(ctx context.Context, conn *pgconn.PgConn) error {
	pub := protocol.QuoteLiteral(w.cfg.Publication)
	rows, err := simple(ctx, conn, "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = "+pub)
	if err != nil {
		return fmt.Errorf("invalidation: wal: reading publication: %w", err)
	}
	have := map[string]bool{}
	for _, r := range rows {
		have[r[0]] = true
	}
	exists, err := simple(ctx, conn, "SELECT 1 FROM pg_publication WHERE pubname = "+pub)
	if err != nil {
		return fmt.Errorf("invalidation: wal: reading publication: %w", err)
	}
	var missing []string
	for name := range w.targets {
		if !have[name] {
			missing = append(missing, protocol.QuoteIdent(name))
		}
	}
	slices.Sort(missing)
	ident := protocol.QuoteIdent(w.cfg.Publication)
	switch {
	case len(exists) == 0:
		_, err = simple(ctx, conn, "CREATE PUBLICATION "+ident+" FOR TABLE "+strings.Join(missing, ", "))
	case len(missing) > 0:
		_, err = simple(ctx, conn, "ALTER PUBLICATION "+ident+" ADD TABLE "+strings.Join(missing, ", "))
	}
	if err != nil {
		return fmt.Errorf("invalidation: wal: publication %s: %w", w.cfg.Publication, err)
	}
	return nil
}

// ensureSlot creates the slot if it is missing, or if the server lost it
// (wal_status 'lost': it fell behind max_slot_wal_keep_size). It reports
// whether it created one.
func (w *WAL) ensureSlot(ctx context.Context, conn *pgconn.PgConn) (bool, error) {
	rows, err := simple(ctx, conn, "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = "+protocol.QuoteLiteral(w.cfg.Slot))
	if err != nil {
		return false, fmt.Errorf("invalidation: wal: reading slot: %w", err)
	}
	if len(rows) == 1 && rows[0][0] != "lost" {
		return false, nil
	}
	if len(rows) == 1 { // lost: drop it and start afresh
		if err := pglogrepl.DropReplicationSlot(ctx, conn, w.cfg.Slot, pglogrepl.DropReplicationSlotOptions{}); err != nil {
			return false, fmt.Errorf("invalidation: wal: dropping the lost slot: %w", err)
		}
	}
	_, err = pglogrepl.CreateReplicationSlot(ctx, conn, w.cfg.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{})
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42710" { // duplicate_object: another WAL made it
			return false, nil
		}
		return false, fmt.Errorf("invalidation: wal: creating slot: %w", err)
	}
	return true, nil
}

// invalidateAll makes every target's cache unreachable.
func (w *WAL) invalidateAll(ctx context.Context) error {
	for _, ts := range w.targets {
		for _, t := range ts {
			if err := t.t.InvalidateAll(ctx); err != nil {
				return err
			}
			w.invalidations.Add(1)
		}
	}
	return nil
}

// walTxn is the changes of a transaction being received, or of a batch of
// committed ones, by target.
type walTxn struct {
	changes map[*walTarget][]Change
	order   []*walTarget
	trunc   []*walTarget
	unkeyed []*walTarget // a target per change whose key the WAL did not carry
	size    int          // changes
}

func (tx *walTxn) add(t *walTarget, c Change) {
	if tx.changes == nil {
		tx.changes = map[*walTarget][]Change{}
	}
	if _, ok := tx.changes[t]; !ok {
		tx.order = append(tx.order, t)
	}
	tx.changes[t] = append(tx.changes[t], c)
	tx.size++
}

// merge appends o's changes to tx's.
func (tx *walTxn) merge(o *walTxn) {
	for _, t := range o.order {
		for _, c := range o.changes[t] {
			tx.add(t, c)
		}
	}
	tx.trunc = append(tx.trunc, o.trunc...)
	tx.unkeyed = append(tx.unkeyed, o.unkeyed...)
}

// stream receives transactions and applies them in batches: committed
// transactions gather until no message is waiting (for a millisecond), or
// the batch holds maxBatch changes or is 20ms old; then the batch's cache
// steps run, pipelined, and only then is its last commit confirmed.
func (w *WAL) stream(ctx context.Context, conn *pgconn.PgConn) error {
	relations := map[uint32]*pglogrepl.RelationMessage{}
	var tx, batch walTxn
	var inTx bool // between a BEGIN and its COMMIT
	var confirmed, batchEnd pglogrepl.LSN
	var commits []time.Time // of the batch's transactions with target changes
	var batchStart time.Time
	nextStatus := time.Now().Add(w.cfg.StatusInterval)
	status := func() error {
		nextStatus = time.Now().Add(w.cfg.StatusInterval)
		w.confirmed.Store(uint64(confirmed))
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: confirmed, WALFlushPosition: confirmed, WALApplyPosition: confirmed})
	}
	flush := func() error {
		if err := w.apply(ctx, &batch); err != nil {
			return err
		}
		for _, at := range commits {
			w.txns.Add(1)
			w.recordLag(time.Since(at))
		}
		confirmed, batch, commits, batchStart = batchEnd, walTxn{}, commits[:0], time.Time{}
		if time.Until(nextStatus) > w.cfg.StatusInterval/10 {
			nextStatus = time.Now().Add(w.cfg.StatusInterval / 10) // confirm soon
		}
		return nil
	}
	for {
		pending := batchEnd > confirmed
		if pending && (batch.size >= maxBatch || time.Since(batchStart) >= maxBatchAge) {
			if err := flush(); err != nil {
				return err
			}
			pending = false
		}
		if time.Now().After(nextStatus) {
			if err := status(); err != nil {
				return fmt.Errorf("invalidation: wal: status update: %w", err)
			}
		}
		deadline := nextStatus
		if soon := time.Now().Add(flushWait); pending && soon.Before(deadline) {
			deadline = soon
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		raw, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				if pending {
					if err := flush(); err != nil {
						return err
					}
				}
				continue
			}
			return fmt.Errorf("invalidation: wal: receiving: %w", err)
		}
		if e, ok := raw.(*pgproto3.ErrorResponse); ok {
			return fmt.Errorf("invalidation: wal: %w", pgconn.ErrorResponseToPgError(e))
		}
		msg, ok := raw.(*pgproto3.CopyData)
		if !ok || len(msg.Data) == 0 {
			continue
		}
		switch msg.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("invalidation: wal: %w", err)
			}
			// A keepalive carries the position the server has decoded and
			// sent up to: every transaction that committed before it has
			// reached us, so when none is pending here (received and not
			// yet applied, or begun and not yet committed) it is confirmed.
			// Without this, WAL of activity outside the publication would
			// be retained until the next change to a target table.
			if !pending && !inTx && ka.ServerWALEnd > confirmed {
				confirmed = ka.ServerWALEnd
				nextStatus = time.Time{}
			}
			if ka.ReplyRequested {
				nextStatus = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("invalidation: wal: %w", err)
			}
			m, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return fmt.Errorf("invalidation: wal: %w", err)
			}
			if _, ok := m.(*pglogrepl.BeginMessage); ok {
				inTx = true
			}
			c, ok := w.handle(m, relations, &tx)
			if !ok {
				break
			}
			inTx = false
			if tx.size > 0 || len(tx.trunc) > 0 || len(tx.unkeyed) > 0 {
				commits = append(commits, c.CommitTime)
			}
			if batchStart.IsZero() {
				batchStart = time.Now()
			}
			batch.merge(&tx)
			batchEnd = c.TransactionEndLSN
			tx = walTxn{}
		}
	}
}

// Batching of the cache steps (see stream).
const (
	maxBatch    = 5000
	maxBatchAge = 20 * time.Millisecond
	flushWait   = time.Millisecond
)

// handle takes one logical replication message into tx; at a commit it
// returns the commit and true.
func (w *WAL) handle(m pglogrepl.Message, relations map[uint32]*pglogrepl.RelationMessage, tx *walTxn) (*pglogrepl.CommitMessage, bool) {
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		relations[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		*tx = walTxn{}
	case *pglogrepl.InsertMessage:
		w.change(relations, tx, m.RelationID, m.Tuple, rowInserted)
	case *pglogrepl.UpdateMessage:
		if m.OldTuple != nil { // the key changed (or REPLICA IDENTITY FULL): the old key is gone
			w.change(relations, tx, m.RelationID, m.OldTuple, rowOld)
		}
		w.change(relations, tx, m.RelationID, m.NewTuple, rowUpdated)
	case *pglogrepl.DeleteMessage:
		w.change(relations, tx, m.RelationID, m.OldTuple, rowOld)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			tx.trunc = append(tx.trunc, w.target(relations, id)...)
		}
	case *pglogrepl.CommitMessage:
		return m, true
	}
	return nil, false
}

func (w *WAL) target(relations map[uint32]*pglogrepl.RelationMessage, id uint32) []*walTarget {
	r := relations[id]
	if r == nil {
		return nil
	}
	return w.targets[r.Namespace+"."+r.RelationName]
}

// rowKind is what a tuple of a change is.
type rowKind int

const (
	rowInserted rowKind = iota // an INSERT's new row
	rowUpdated                 // an UPDATE's new row
	rowOld                     // a DELETE's old row, or an UPDATE's old key
)

// change records one row change of the transaction for each target of its
// table, if it has any. A change whose key columns the tuple does not carry
// (NULL, an unchanged TOASTed value, or not sent: the key is not in the
// table's REPLICA IDENTITY), and an UPDATE of a table whose REPLICA
// IDENTITY does not cover the key (it may have changed the key, and the old
// one is not sent), cannot name the cached entry: it is recorded as
// unkeyed, and its table is invalidated whole.
func (w *WAL) change(relations map[uint32]*pglogrepl.RelationMessage, tx *walTxn, id uint32, tuple *pglogrepl.TupleData, kind rowKind) {
	ts, r := w.target(relations, id), relations[id]
	if len(ts) == 0 {
		w.ignored.Add(1)
		return
	}
	for _, t := range ts {
		c, ok := Change{Key: make([]string, len(t.key)), Deleted: kind == rowOld}, tuple != nil
		if kind == rowUpdated && !identityCovers(r, t.key) {
			ok = false
		}
		found := 0
		for i, col := range r.Columns {
			if !ok || i >= len(tuple.Columns) {
				break
			}
			j := slices.Index(t.key, col.Name)
			if tuple.Columns[i].DataType != pglogrepl.TupleDataTypeText {
				ok = j < 0 // a key column without its value
				continue
			}
			v := string(tuple.Columns[i].Data)
			if j >= 0 {
				c.Key[j] = v
				found++
			}
			if kind != rowOld && col.Name == t.version {
				c.Version, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		if !ok || found != len(t.key) {
			tx.unkeyed = append(tx.unkeyed, t)
			continue
		}
		tx.add(t, c)
	}
}

// identityCovers reports whether every column of key is in the relation's
// REPLICA IDENTITY (the columns the WAL sends of a row's old version).
func identityCovers(r *pglogrepl.RelationMessage, key []string) bool {
	n := 0
	for _, col := range r.Columns {
		if col.Flags&1 != 0 && slices.Contains(key, col.Name) {
			n++
		}
	}
	return n == len(key)
}

// apply runs a batch's cache steps, retrying (with RetryInterval pauses)
// until they succeed or ctx ends: the batch is confirmed only after them.
func (w *WAL) apply(ctx context.Context, tx *walTxn) error {
	for {
		err := w.applyOnce(ctx, tx)
		if err == nil {
			return nil
		}
		w.cacheErr(ctx, "", err)
		if err := protocol.Sleep(ctx, w.cfg.RetryInterval); err != nil {
			return err
		}
	}
}

func (w *WAL) applyOnce(ctx context.Context, tx *walTxn) error {
	for _, t := range tx.trunc {
		if err := t.t.InvalidateAll(ctx); err != nil {
			return err
		}
		w.truncates.Add(1)
		w.invalidations.Add(1)
	}
	// The batch's changes without a key: one InvalidateAll per table, after
	// their commits.
	var done []*walTarget
	for _, t := range tx.unkeyed {
		if slices.Contains(done, t) {
			continue
		}
		if err := t.t.InvalidateAll(ctx); err != nil {
			return err
		}
		done = append(done, t)
		w.invalidations.Add(1)
	}
	w.unkeyed.Add(uint64(len(tx.unkeyed)))
	tx.unkeyed = nil
	for _, t := range tx.order {
		cs := tx.changes[t]
		if err := t.t.WALApply(ctx, cs); err != nil {
			return err
		}
		w.changes.Add(uint64(len(cs)))
		t.changed.Store(true)
		delete(tx.changes, t)
	}
	tx.order, tx.trunc, tx.size = nil, nil, 0
	return nil
}

// SlotStatus is what the server says of a WAL's slot.
type SlotStatus struct {
	Exists      bool
	Active      bool   // a WAL is streaming from it
	WALStatus   string // "reserved", "extended", "unreserved" or "lost" (see pg_replication_slots)
	RetainedWAL int64  // bytes of WAL the slot keeps on the server (current position - confirmed)
}

// SlotStatus reads the slot's state from pg_replication_slots.
func (w *WAL) SlotStatus(ctx context.Context) (SlotStatus, error) {
	cfg, err := pgconn.ParseConfig(w.cfg.ConnString)
	if err != nil {
		return SlotStatus{}, err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return SlotStatus{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := simple(ctx, conn, `SELECT active, coalesce(wal_status, ''),
		coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = `+protocol.QuoteLiteral(w.cfg.Slot))
	if err != nil || len(rows) == 0 {
		return SlotStatus{}, err
	}
	n, _ := strconv.ParseInt(rows[0][2], 10, 64)
	return SlotStatus{Exists: true, Active: rows[0][0] == "t", WALStatus: rows[0][1], RetainedWAL: n}, nil
}
