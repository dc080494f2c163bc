package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// The load generator's client reads what net/http's server sends: bodies
// with a Content-Length and chunked ones, empty answers, and a server that
// closes the connection; one connection serves every keep-alive request.
func TestConnReadsResponses(t *testing.T) {
	big := strings.Repeat("0123456789", 10_000) // more than the reader's buffer
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			w.Write([]byte(`{"ok":true}`))
		case "/chunked":
			for _, part := range []string{"first,", big, ",last"} {
				w.Write([]byte(part))
				w.(http.Flusher).Flush()
			}
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/missing":
			http.NotFound(w, r)
		case "/close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("bye"))
		case "/post":
			b := make([]byte, r.ContentLength)
			r.Body.Read(b)
			w.WriteHeader(http.StatusCreated)
			w.Write(b)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := newConn(strings.TrimPrefix(srv.URL, "http://"))
	defer c.close()
	ctx := context.Background()
	for _, tc := range []struct {
		path, body string
		status     int
		want       string
	}{
		{"/length", "", 200, `{"ok":true}`},
		{"/chunked", "", 200, "first," + big + ",last"},
		{"/empty", "", 204, ""},
		{"/missing", "", 404, "404 page not found\n"},
		{"/post", `{"quantity":7}`, 201, `{"quantity":7}`},
		{"/length", "", 200, `{"ok":true}`},
	} {
		var status int
		var got []byte
		if tc.body != "" {
			status, got = c.post(ctx, tc.path, []byte(tc.body), []byte{})
		} else {
			status, got = c.get(ctx, tc.path, []byte{})
		}
		if status != tc.status || string(got) != tc.want {
			t.Fatalf("%s: %d %.40q, want %d %.40q", tc.path, status, got, tc.status, tc.want)
		}
		if st := c.do(ctx, http.MethodGet, tc.path, nil); tc.body == "" && st != tc.status {
			t.Fatalf("%s discarding the body: %d, want %d", tc.path, st, tc.status)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for keep-alive requests, want 1", n)
	}
	if st, got := c.get(ctx, "/close", []byte{}); st != 200 || string(got) != "bye" || c.c != nil {
		t.Fatalf("/close: %d %q, connection kept: %v", st, got, c.c != nil)
	}
	if st, _ := c.get(ctx, "/length", nil); st != 200 || conns.Load() != 2 {
		t.Fatalf("after a close: %d over %d connections, want 200 over a new one", st, conns.Load())
	}
}
