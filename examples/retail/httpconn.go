package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// conn is a minimal HTTP/1.1 keep-alive client over one TCP connection, for
// the load generator. The service and the load generator share this
// machine's CPUs; net/http's Client (transport goroutines, connection pool,
// header maps on both sides) costs about as much CPU per request as the
// service itself, which would hide the difference the cache makes. Like wrk
// or hey's raw mode, conn writes the request bytes directly and parses the
// response with http.ReadResponse (which handles chunked bodies). It is not
// safe for concurrent use: each client goroutine has its own.
type conn struct {
	addr string
	host string
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

func newConn(addr string) *conn { return &conn{addr: addr, host: addr} }

// do sends one request and returns its status (0 on a transport error, after
// which the connection is redialled on the next call). The body is read and
// discarded.
func (c *conn) do(ctx context.Context, method, path string, body []byte) int {
	status, _ := c.roundTrip(ctx, method, path, body, nil)
	return status
}

// get is do for a GET whose response body is wanted: it is appended to buf.
func (c *conn) get(ctx context.Context, path string, buf []byte) (int, []byte) {
	return c.roundTrip(ctx, http.MethodGet, path, nil, buf)
}

// post is do for a POST whose response body is appended to buf.
func (c *conn) post(ctx context.Context, path string, body, buf []byte) (int, []byte) {
	return c.roundTrip(ctx, http.MethodPost, path, body, buf)
}

// roundTrip sends one request and returns its status and, if buf is not
// nil, the response body appended to buf.
func (c *conn) roundTrip(ctx context.Context, method, path string, body, buf []byte) (int, []byte) {
	if err := ctx.Err(); err != nil {
		return 0, buf
	}
	if c.c == nil {
		d := net.Dialer{Timeout: 5 * time.Second}
		nc, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0, buf
		}
		c.c, c.r, c.w = nc, bufio.NewReaderSize(nc, 32<<10), bufio.NewWriterSize(nc, 4<<10)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.c.SetDeadline(dl)
	}
	w := c.w
	w.WriteString(method)
	w.WriteByte(' ')
	w.WriteString(path)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(c.host)
	if body != nil {
		w.WriteString("\r\nContent-Type: application/json\r\nContent-Length: ")
		w.WriteString(strconv.Itoa(len(body)))
	}
	w.WriteString("\r\n\r\n")
	w.Write(body)
	if err := w.Flush(); err != nil {
		c.close()
		return 0, buf
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		c.close()
		return 0, buf
	}
	if buf != nil {
		w := bytes.NewBuffer(buf)
		_, err = io.Copy(w, resp.Body)
		buf = w.Bytes()
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	if err != nil || resp.Close {
		c.close()
	}
	if err != nil {
		return 0, buf
	}
	return resp.StatusCode, buf
}

func (c *conn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}
