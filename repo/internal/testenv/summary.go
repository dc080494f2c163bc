package testenv

import "github.com/cachedrepo/cachedrepo/repo/repotest"

// Summaryf is repotest.Summaryf: it prints a summary line and appends it to
// $CACHEDREPO_SUMMARY, which `make test` shows at its end.
func Summaryf(format string, args ...any) { repotest.Summaryf(format, args...) }
