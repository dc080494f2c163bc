package repo

// ForgetFailedInvalidations turns off s's record of the keys it failed to
// invalidate: the control of the one-way partition checker.
func ForgetFailedInvalidations[T any, K comparable](s *Store[T, K]) { s.c.ForgetDirty() }
