package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// conn is a minimal HTTP/1.1 keep-alive client over one TCP connection, for
// the load generator. The service and the load generator share this
// machine's CPUs; net/http's Client (transport goroutines, connection pool,
// header maps on both sides) costs about as much CPU per request as the
// service itself, which would hide the difference the cache makes. Like wrk
// or hey's raw mode, conn writes the request bytes directly and reads the
// response with readResponse (Content-Length and chunked bodies). It is not
// safe for concurrent use: each client goroutine has its own.
type conn struct {
	addr string
	host string
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer

	deadline time.Time // the deadline set on c
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
	if dl, ok := ctx.Deadline(); ok && !dl.Equal(c.deadline) {
		_ = c.c.SetDeadline(dl)
		c.deadline = dl
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
	status, buf, keep, err := c.readResponse(buf)
	if err != nil || !keep {
		c.close()
	}
	if err != nil {
		return 0, buf
	}
	return status, buf
}

// readResponse reads one response from c.r: its status and, if buf is not
// nil, its body appended to buf (else the body is discarded); keep is false
// if the server closes the connection after it. It reads what the service
// sends (a Content-Length or a chunked body) without http.ReadResponse's
// header map and body readers, which cost as much CPU as the rest of a
// request here.
func (c *conn) readResponse(buf []byte) (status int, _ []byte, keep bool, err error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, buf, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, buf, false, fmt.Errorf("malformed status line %q", line)
	}
	if status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return 0, buf, false, fmt.Errorf("malformed status line %q", line)
	}
	length, chunked, keep := int64(-1), false, true
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, buf, false, err
		}
		h := bytes.TrimRight(line, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, buf, false, fmt.Errorf("malformed header %q", h)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.ParseInt(string(value), 10, 64); err != nil || length < 0 {
				return 0, buf, false, fmt.Errorf("malformed Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			keep = !bytes.EqualFold(value, []byte("close"))
		}
	}
	switch {
	case chunked:
		for {
			line, err := c.r.ReadSlice('\n')
			if err != nil {
				return 0, buf, false, err
			}
			size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
			n, err := strconv.ParseInt(string(size), 16, 64)
			if err != nil || n < 0 {
				return 0, buf, false, fmt.Errorf("malformed chunk size %q", line)
			}
			if n == 0 { // the last chunk; no trailers are sent
				if _, err := c.r.Discard(2); err != nil {
					return 0, buf, false, err
				}
				return status, buf, keep, nil
			}
			if buf, err = c.body(buf, n+2); err != nil { // with the chunk's CRLF
				return 0, buf, false, err
			}
			if buf != nil {
				buf = buf[:len(buf)-2]
			}
		}
	case length >= 0:
		buf, err = c.body(buf, length)
		return status, buf, keep, err
	case status == http.StatusNoContent || status == http.StatusNotModified || status < 200:
		return status, buf, keep, nil
	}
	return 0, buf, false, fmt.Errorf("response %d without a length", status)
}

// body reads n bytes of a body from c.r, appended to buf, or discarded if
// buf is nil.
func (c *conn) body(buf []byte, n int64) ([]byte, error) {
	if buf == nil {
		_, err := c.r.Discard(int(n))
		return nil, err
	}
	start := len(buf)
	buf = slices.Grow(buf, int(n))[:start+int(n)]
	_, err := io.ReadFull(c.r, buf[start:])
	return buf, err
}

func (c *conn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
		c.deadline = time.Time{}
	}
}
