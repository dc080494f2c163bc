// Package protocol is the cache protocol shared by repo's Store and Query
// and the aggregate package's Counter, Leaderboard and CAS values: the
// envelope, leases and fills (Core.Leased), versioned write-through
// (Core.PutVersioned), the one CAS retry loop (Core.CASLoop), the shared
// in-process load (Core.Share), the breaker that keeps reads off a failing
// cache, and table key generations. repo's package documentation describes
// the protocol; this package is its implementation, private to the module.
package protocol
