package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// progress draws a progress bar with count, rate and ETA for a long job on
// w (stderr). On a terminal it redraws one line a few times a second;
// otherwise it prints a line every few seconds. Add is safe for concurrent
// use.
type progress struct {
	w     io.Writer
	label string
	total int64
	start time.Time
	done  atomic.Int64
	tty   bool

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// newProgress starts drawing; call finish when the job is done.
func newProgress(w io.Writer, label string, total int64) *progress {
	p := &progress{w: w, label: label, total: total, start: time.Now(), stop: make(chan struct{})}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	every := 3 * time.Second
	if p.tty {
		every = 200 * time.Millisecond
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.draw(false)
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

// Add counts n more rows done.
func (p *progress) Add(n int64) { p.done.Add(n) }

// finish stops redrawing and prints the final line; it returns the rows
// done and the elapsed time.
func (p *progress) finish() (int64, time.Duration) {
	p.stopOnce.Do(func() { close(p.stop) })
	p.wg.Wait()
	p.draw(true)
	return p.done.Load(), time.Since(p.start)
}

func (p *progress) draw(final bool) {
	done := p.done.Load()
	el := time.Since(p.start)
	rate := float64(done) / max(el.Seconds(), 1e-9)
	const width = 30
	frac := 1.0
	if p.total > 0 {
		frac = min(float64(done)/float64(p.total), 1)
	}
	bar := strings.Repeat("#", int(frac*width)) + strings.Repeat(".", width-int(frac*width))
	eta := "-"
	if final {
		eta = "done in " + el.Round(100*time.Millisecond).String()
	} else if rate > 0 && p.total > done {
		eta = "ETA " + time.Duration(float64(p.total-done)/rate*float64(time.Second)).Round(time.Second).String()
	}
	line := fmt.Sprintf("%-10s [%s] %3.0f%% %s/%s rows  %s rows/s  %s",
		p.label, bar, frac*100, thousands(done), thousands(p.total), thousands(int64(rate)), eta)
	switch {
	case p.tty && final:
		fmt.Fprintf(p.w, "\r\033[K%s\n", line)
	case p.tty:
		fmt.Fprintf(p.w, "\r\033[K%s", line)
	default:
		fmt.Fprintln(p.w, line)
	}
}

// thousands formats n with thousands separators: 1870000 -> "1,870,000".
func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
