package repo

import "context"

// ForgetFailedInvalidations turns off s's record of the keys it failed to
// invalidate: the control of the one-way partition checker.
func ForgetFailedInvalidations[T any, K comparable](s *Store[T, K]) { s.c.ForgetDirty() }

// NearWritten is what a write through a Store does to n once it has
// reached memcached: n.written.
func NearWritten(ctx context.Context, n *NearCache, keys ...string) { n.written(ctx, keys...) }

// NearHolds reports whether n holds an entry for key.
func NearHolds(n *NearCache, key string) bool {
	_, ok := n.entries.GetIfPresent(key)
	return ok
}
