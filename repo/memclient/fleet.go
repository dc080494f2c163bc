package memclient

import "net"

// Server returns the address of the server that holds key, as the Client's
// selector places it. Selectors that keep their addresses (ServerList,
// Ketama) return the same net.Addr for every key of a server, so it can key
// a map of per-server state without allocating.
func (c *Client) Server(key string) (net.Addr, error) {
	c.gm()
	return c.sel.PickServer(key)
}

// ServerError is the failure of one server's part of a request that spans
// servers (GetMulti, DeleteIfUnchanged): the other servers' parts may have
// succeeded. Their errors are joined (errors.Join); errors.As finds the
// first, and unwrapping the join lists each.
type ServerError struct {
	Addr net.Addr
	Err  error
}

func (e *ServerError) Error() string {
	return "memclient: server " + e.Addr.String() + ": " + e.Err.Error()
}

// Unwrap returns the server's error.
func (e *ServerError) Unwrap() error { return e.Err }

// serverErr wraps err, if not nil, as the failure of the server of key.
func (c *Client) serverErr(key string, err error) error {
	if err == nil {
		return nil
	}
	addr, perr := c.sel.PickServer(key)
	if perr != nil {
		return err
	}
	return &ServerError{Addr: addr, Err: err}
}
