package main

import (
	"bufio"
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
	if err := ctx.Err(); err != nil {
		return 0
	}
	if c.c == nil {
		d := net.Dialer{Timeout: 5 * time.Second}
		nc, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0
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
		return 0
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		c.close()
		return 0
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.Close {
		c.close()
	}
	return resp.StatusCode
}

func (c *conn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}
