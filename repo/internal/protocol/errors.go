package protocol

import "errors"

// The protocol's sentinel errors; package repo exports them.
var (
	ErrCorrupt          = errors.New("repo: corrupt cache value")
	ErrTooLarge         = errors.New("repo: value too large for the cache")
	ErrRetriesExhausted = errors.New("repo: compare-and-swap retries exhausted")
)
