package memclient

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/bradfitz/gomemcache/memcache"
)

// AddMulti stores each item only if its key holds nothing (memcached's
// add), with one pipeline of quiet "ms <key> <size> ME" requests (mode E:
// add) per server, the servers in parallel. It returns one outcome per item, in order: nil
// if it was stored, memcache.ErrNotStored if the key held something,
// memcache.ErrMalformedKey for a key the protocol cannot carry, or the
// *ServerError of its server, after which the item may or may not have been
// stored. err joins the servers' errors. Against servers without the meta
// protocol it returns ErrNoMeta.
func (c *Client) AddMulti(items []*memcache.Item) ([]error, error) {
	return c.storeMulti(items, false)
}

// CompareAndSwapMulti stores each item only if its key still holds what
// was read as the item (by its CasID, from Get, GetMulti or LeaseGet), with
// one pipeline of quiet "ms <key> <size> C<cas>" requests per server. Its
// outcomes are as AddMulti's, with memcache.ErrCASConflict for a key that
// changed meanwhile and memcache.ErrCacheMiss for one that is gone.
func (c *Client) CompareAndSwapMulti(items []*memcache.Item) ([]error, error) {
	return c.storeMulti(items, true)
}

func (c *Client) storeMulti(items []*memcache.Item, cas bool) ([]error, error) {
	if c.noMeta.Load() {
		return nil, ErrNoMeta
	}
	c.gm()
	out := make([]error, len(items))
	var groups [][]int // indexes into items, by server
	index := map[string]int{}
	for i, it := range items {
		if !legalKey(it.Key) {
			out[i] = memcache.ErrMalformedKey
			continue
		}
		addr, err := c.sel.PickServer(it.Key)
		if err != nil {
			return nil, err
		}
		g, ok := index[addr.String()]
		if !ok {
			g = len(groups)
			index[addr.String()] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for gi, g := range groups {
		wg.Go(func() {
			for len(g) > 0 {
				n := min(len(g), pipelineKeys)
				if err := c.storePipeline(items, g[:n], cas, out); err != nil {
					err = c.serverErr(items[g[0]].Key, err)
					for _, i := range g { // the rest of this server's items: unknown
						if out[i] == nil {
							out[i] = err
						}
					}
					errs[gi] = err
					return
				}
				g = g[n:]
			}
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// storePipeline sends the stores of items[idx], all of one server, and
// records the refusals in out. Quiet ms answers only failures ("NS", "EX",
// "NF"), which name no key, so each request carries its position as the
// opaque token ("O<n>"), which memcached echoes; "mn" ends the pipeline.
// A failed connection returns its error, with out unchanged for the
// requests whose answers were not read.
func (c *Client) storePipeline(items []*memcache.Item, idx []int, cas bool, out []error) error {
	mc, err := c.conn(items[idx[0]].Key)
	if err != nil {
		return err
	}
	mc.buf = mc.buf[:0]
	for n, i := range idx {
		it := items[i]
		mc.buf = append(mc.buf, "ms "...)
		mc.buf = append(mc.buf, it.Key...)
		mc.buf = append(mc.buf, ' ')
		mc.buf = strconv.AppendInt(mc.buf, int64(len(it.Value)), 10)
		if cas {
			mc.buf = append(mc.buf, " C"...)
			mc.buf = strconv.AppendUint(mc.buf, it.CasID, 10)
		} else {
			mc.buf = append(mc.buf, " ME"...) // mode E: add
		}
		mc.buf = append(mc.buf, " F"...)
		mc.buf = strconv.AppendUint(mc.buf, uint64(it.Flags), 10)
		mc.buf = append(mc.buf, " T"...)
		mc.buf = strconv.AppendInt(mc.buf, int64(it.Expiration), 10)
		mc.buf = append(mc.buf, " O"...)
		mc.buf = strconv.AppendInt(mc.buf, int64(n), 10)
		mc.buf = append(mc.buf, " q\r\n"...)
		mc.buf = append(mc.buf, it.Value...)
		mc.buf = append(mc.buf, "\r\n"...)
	}
	mc.buf = append(mc.buf, "mn\r\n"...)
	line, err := c.roundTrip(mc)
	for ; err == nil && !bytes.Equal(line, []byte("MN")); line, err = mc.readLine() {
		code, ok := statusCode(line)
		n, okn := opaque(line)
		if !ok || !okn || n >= len(idx) {
			e := replyErr(line)
			if errors.Is(e, ErrNoMeta) {
				c.noMeta.Store(true)
			}
			mc.nc.Close()
			if ok { // a status without its token
				e = fmt.Errorf("memclient: malformed response %q", line)
			}
			return e
		}
		switch code {
		case "NS":
			out[idx[n]] = memcache.ErrNotStored
		case "EX":
			out[idx[n]] = memcache.ErrCASConflict
		case "NF":
			out[idx[n]] = memcache.ErrCacheMiss
		default:
			mc.nc.Close()
			return fmt.Errorf("memclient: unexpected response %q", line)
		}
	}
	if err != nil {
		return err // roundTrip or readLine closed the connection
	}
	c.put(mc)
	return nil
}
