package repotest

import (
	"fmt"
	"os"
)

// Summaryf prints one summary line of a test or benchmark (the figures it
// measured) and, when CACHEDREPO_SUMMARY names a file, appends the line to
// it, so that a test run can show every summary line at its end (go test
// shows a passing package's output only with -v). This project's
// `make test` does that.
func Summaryf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fmt.Print(line)
	if path := os.Getenv("CACHEDREPO_SUMMARY"); path != "" {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			_, _ = f.WriteString(line) // one write: lines of parallel packages do not interleave
			_ = f.Close()
		}
	}
}
