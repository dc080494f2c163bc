package protocol

import (
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Config is what a Core needs to know; WithDefaults fills in the defaults
// documented on repo.Options.
type Config struct {
	Name            string // table, query or aggregate name, for events
	Namespace       string
	TTL             time.Duration
	Jitter          float64
	NegativeTTL     time.Duration
	LeaseTTL        time.Duration
	LeaseWait       time.Duration
	MaxItemSize     int
	CASRetries      int
	BreakerFailures int
	BreakerCooldown time.Duration
	EarlyRefresh    time.Duration // negative: none
	Hooks           observe.Hooks
}

// MaxRelativeTTL is the longest expiration memcached reads as relative
// seconds (30 days); larger values are absolute Unix times.
const MaxRelativeTTL = 30 * 24 * time.Hour

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = "cachedrepo"
	}
	if c.TTL <= 0 {
		c.TTL = time.Hour
	}
	switch {
	case c.Jitter == 0:
		c.Jitter = 0.1
	case c.Jitter < 0:
		c.Jitter = 0
	case c.Jitter > 0.9:
		c.Jitter = 0.9
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = 30 * time.Second
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 3 * time.Second
	}
	if c.LeaseWait <= 0 {
		c.LeaseWait = 250 * time.Millisecond
	}
	// A wait must end while the shared load (bounded by LeaseTTL) still has
	// time to read the database itself.
	c.LeaseWait = min(c.LeaseWait, c.LeaseTTL/2)
	if c.MaxItemSize <= 0 {
		c.MaxItemSize = 1<<20 - 1<<10
	}
	if c.BreakerFailures <= 0 {
		c.BreakerFailures = 3
	}
	if c.BreakerCooldown <= 0 {
		c.BreakerCooldown = time.Second
	}
	if c.CASRetries <= 0 {
		c.CASRetries = 16
	}
	// memcached counts the remaining TTL in whole seconds: with less than 2
	// an item may expire before its refresh is won.
	switch {
	case c.EarlyRefresh == 0: // negative: none (kept negative, so defaults apply once)
		c.EarlyRefresh = min(c.TTL/10, time.Minute)
		if c.EarlyRefresh < 2*time.Second {
			c.EarlyRefresh = -1 // a TTL under 20s gets none by default
		}
	case c.EarlyRefresh > 0 && c.EarlyRefresh < 2*time.Second:
		c.EarlyRefresh = 2 * time.Second
	}
	return c
}
