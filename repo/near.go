package repo

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"
	"github.com/maypok86/otter/v2"
)

// NearConfig configures NewNearCache. Connect is required.
type NearConfig struct {
	// Connect opens the connection the near-cache listens on (LISTEN), for
	// its own use (it closes it), e.g. pgx.Connect(ctx, databaseURL). Not a
	// connection a pooler such as PgBouncer hands out per transaction.
	Connect func(ctx context.Context) (*pgx.Conn, error)

	// DB sends the invalidations (NOTIFY) of this process's writes; it may
	// be the stores' pool. Default: none are sent, and other processes'
	// near-caches learn of this process's writes only from MaxAge.
	DB DB

	// Channel is the NOTIFY channel every process of the fleet uses.
	// Default "cachedrepo_near".
	Channel string

	// Size bounds the entries kept (of every store that uses the
	// near-cache). Default 10,000.
	Size int

	// MaxAge is how long an entry may be served after it was read from
	// memcached, whatever the invalidations: the bound on a near-cache
	// hit's staleness when a NOTIFY is lost. Default 1s.
	MaxAge time.Duration

	// ReconnectDelay is how long the listener waits before listening again
	// after its connection failed. Default 1s.
	ReconnectDelay time.Duration
}

// NearCache is an opt-in in-process cache in front of memcached, shared by
// the Stores of a process that set it in Options.Near. It holds what
// memcached answered (rows and "not found"), keyed by cache key, for at most
// MaxAge, in a size-bounded otter cache, and is invalidated across
// processes by NOTIFY: every Store write, once it has committed and its
// write-through has reached memcached, removes its key from this process's
// near-cache at once (read-your-writes) and sends the key on Channel, and
// every process's listener removes it from its own; the WAL invalidator does
// the same for changes made behind the stores' backs when its target Stores
// have Options.Near set (with NearConfig.DB; that NearCache need not Run).
// Sending the NOTIFY after the write-through
// means a near-cache that drops the key reads the new row from memcached.
//
// The bound: a near-cache hit is never older than MaxAge. While every
// NOTIFY arrives, a near-cache hit is staler than the write that replaced
// it by no more than that NOTIFY's delivery (milliseconds; measured by the
// near-cache consistency test). A NOTIFY is lost when the writer dies
// between its commit and its NOTIFY, or the listener's connection fails:
// then MaxAge bounds it. A listener whose connection failed serves nothing
// from its near-cache until it listens again, and starts again empty; until
// Run has first connected, the near-cache serves nothing.
//
// Run must be running for the near-cache to serve. Safe for concurrent use.
type NearCache struct {
	cfg     NearConfig
	entries *otter.Cache[string, nearEntry]
	ready   atomic.Bool // the listener listens: entries may be served
	// epoch counts the near-cache's clearings and seq, per stripe of keys,
	// its invalidations, for fills that overlap one (see begin).
	epoch atomic.Uint64
	seq   [nearStripes]atomic.Uint64
	hits  atomic.Uint64

	nmu     sync.Mutex // guards sending and next
	sending bool       // a NOTIFY statement is in flight
	next    *noteBatch // the keys of writes waiting for it, or nil
}

// noteBatch is the keys of writes that leave in one NOTIFY statement.
type noteBatch struct {
	keys []string
	turn chan struct{} // closed when the batch's first writer is to send it
	sent chan struct{} // closed once it was sent
}

// nearStripes is how many counters of invalidations a near-cache keeps: a
// fill is dropped when its key's stripe saw one, not at every invalidation.
const nearStripes = 256

// stripe returns the invalidation counter of key's stripe (FNV-1a).
func (n *NearCache) stripe(key string) *atomic.Uint64 {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return &n.seq[h%nearStripes]
}

// nearEntry is what a near-cache holds for a key.
type nearEntry struct {
	v     any    // the row, of a type without references (see flat), or nil
	b     []byte // else the row, encoded by its store's codec (decoded afresh for each hit)
	found bool   // false: "not found"
	at    int64  // when it was read from memcached, unix nanos
}

// NewNearCache returns a near-cache for cfg; call Run to start it.
func NewNearCache(cfg NearConfig) (*NearCache, error) {
	if cfg.Connect == nil {
		return nil, errors.New("repo: NearConfig.Connect is required")
	}
	if cfg.Channel == "" {
		cfg.Channel = "cachedrepo_near"
	}
	if cfg.Size <= 0 {
		cfg.Size = 10_000
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = time.Second
	}
	if cfg.ReconnectDelay <= 0 {
		cfg.ReconnectDelay = time.Second
	}
	// No expiry in otter: get checks an entry's age itself (against the
	// time its caller read once), so otter need not read the clock on
	// every lookup; an entry past MaxAge is never served, and is replaced
	// by its key's next read or evicted by size.
	c, err := otter.New(&otter.Options[string, nearEntry]{
		MaximumSize: cfg.Size,
		Logger:      &otter.NoopLogger{},
	})
	if err != nil {
		return nil, err
	}
	return &NearCache{cfg: cfg, entries: c}, nil
}

// Run listens for invalidations until ctx ends, reconnecting after
// failures, and returns ctx's error. While it is not listening the
// near-cache serves nothing; each time it starts listening, it clears the
// near-cache first.
func (n *NearCache) Run(ctx context.Context) error {
	l := &pgxlisten.Listener{
		Connect: n.cfg.Connect,
		LogError: func(context.Context, error) {
			// The connection failed (or a notification was malformed):
			// invalidations may be lost from here on.
			n.stop()
		},
		ReconnectDelay: n.cfg.ReconnectDelay,
	}
	l.Handle(n.cfg.Channel, nearHandler{n})
	defer n.stop()
	return l.Listen(ctx)
}

// stop makes the near-cache serve nothing until the listener listens again.
func (n *NearCache) stop() {
	n.ready.Store(false)
	n.epoch.Add(1)
	n.entries.InvalidateAll()
}

// nearHandler applies notifications, and starts serving once listening.
type nearHandler struct{ n *NearCache }

func (h nearHandler) HandleNotification(_ context.Context, nt *pgconn.Notification, _ *pgx.Conn) error {
	h.n.Invalidate(nt.Payload)
	return nil
}

// HandleBacklog runs once the listener listens: what was sent before is
// lost, so the near-cache starts again empty.
func (h nearHandler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	h.n.epoch.Add(1)
	h.n.entries.InvalidateAll()
	h.n.ready.Store(true)
	return nil
}

// Invalidate removes key from this process's near-cache.
func (n *NearCache) Invalidate(key string) {
	n.stripe(key).Add(1)
	n.entries.Invalidate(key)
}

// Hits returns how many reads the near-cache answered.
func (n *NearCache) Hits() uint64 { return n.hits.Load() }

// get returns the entry of key if it may be served at now (UnixNano: a
// GetMany reads the clock once for all its keys).
func (n *NearCache) get(key string, now int64) (nearEntry, bool) {
	if !n.ready.Load() {
		return nearEntry{}, false
	}
	e, ok := n.entries.GetIfPresent(key)
	if !ok || now-e.at > int64(n.cfg.MaxAge) {
		return nearEntry{}, false
	}
	n.hits.Add(1)
	return e, true
}

// nearToken is what a fill of a key passes from begin to put.
type nearToken struct{ epoch, seq uint64 }

// begin returns the token a fill of key passes to put: an entry read from
// memcached while an invalidation of its key happened may be older than
// the write behind that invalidation, so it is kept only if none did (nor
// a clearing) since the read began.
func (n *NearCache) begin(key string) nearToken {
	return nearToken{n.epoch.Load(), n.stripe(key).Load()}
}

// put keeps e for key if no invalidation of its stripe, and no clearing,
// happened since begin gave tok.
func (n *NearCache) put(key string, tok nearToken, e nearEntry) {
	current := func() bool { return n.epoch.Load() == tok.epoch && n.stripe(key).Load() == tok.seq }
	if !n.ready.Load() || !current() {
		return
	}
	n.entries.Set(key, e)
	if !current() { // an invalidation raced the Set
		n.entries.Invalidate(key)
	}
}

// written removes keys at once (this process reads its own writes) and
// tells the other processes by NOTIFY, best effort: a NOTIFY lost is
// bounded by MaxAge. It returns once a statement carrying keys was sent.
//
// One NOTIFY statement is in flight at a time: the keys of writes that
// come meanwhile wait and leave together in the next one, sent by the
// first of those writers, so concurrent writers cost one statement per
// batch instead of one each, and no writer waits for more than the
// statement in flight and its own.
func (n *NearCache) written(ctx context.Context, keys ...string) {
	for _, k := range keys {
		n.Invalidate(k)
	}
	if n.cfg.DB == nil || len(keys) == 0 {
		return
	}
	ctx = context.WithoutCancel(ctx)
	n.nmu.Lock()
	if n.sending {
		b := n.next
		first := b == nil
		if first {
			b = &noteBatch{turn: make(chan struct{}), sent: make(chan struct{})}
			n.next = b
		}
		b.keys = append(b.keys, keys...)
		n.nmu.Unlock()
		if !first {
			<-b.sent
			return
		}
		<-b.turn // nobody adds to b any more
		n.notify(ctx, b.keys)
		close(b.sent)
	} else {
		n.sending = true
		n.nmu.Unlock()
		n.notify(ctx, keys)
	}
	// Hand the sending on to the next batch's first writer, if any.
	n.nmu.Lock()
	b := n.next
	n.next, n.sending = nil, b != nil
	n.nmu.Unlock()
	if b != nil {
		close(b.turn)
	}
}

// notify sends keys on the channel in one statement.
func (n *NearCache) notify(ctx context.Context, keys []string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = n.cfg.DB.Exec(ctx, "SELECT pg_notify($1, k) FROM unnest($2::text[]) k", n.cfg.Channel, keys)
}

// Listening reports whether the near-cache serves: its listener listens
// for invalidations.
func (n *NearCache) Listening() bool { return n.ready.Load() }
