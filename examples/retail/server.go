package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cachedrepo/cachedrepo/repo"
)

// Limits on request input.
const (
	maxBodyBytes    = 1 << 16
	maxNameLen      = 64  // article numbers, units, store codes, boards, players
	defaultPageSize = 50  // products per category page
	maxPageSize     = 200 // largest category page or top-N
)

// handler returns the service's HTTP API:
//
//	GET  /healthz                                   Postgres (and memcached) reachable
//	GET  /metrics                                   Prometheus metrics
//	GET  /products/{id}                             one product
//	GET  /sqlc/products/{id}                        the same, from the sqlc-typed store (sqlc.go)
//	GET  /categories/{id}/products?limit=N          products of a category, by id
//	GET  /stock/{article}/{uom}                     stock of an article in every store
//	GET  /stock/{article}/{uom}/{store}             stock of an article in one store
//	POST /stock/{article}/{uom}/{store}             {"delta": -2} or {"quantity": 10}
//	POST /visits                                    count a visit: {"visitors": N}
//	GET  /visits                                    {"visitors": N}
//	POST /boards/{board}/scores                     {"player": "p1", "score": 1234}
//	GET  /boards/{board}/top?n=10                   top scores
//	GET  /boards/{board}/players/{player}/rank      a player's score and rank
//
// Errors are JSON objects {"error": "..."} with status 400 (bad input), 404
// (no such row), 409 (stock would go negative) or 500.
func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", a.health)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /products/{id}", a.getProduct)
	mux.HandleFunc("GET /sqlc/products/{id}", a.getSQLCProduct)
	mux.HandleFunc("GET /categories/{id}/products", a.listCategory)
	mux.HandleFunc("GET /stock/{article}/{uom}", a.getStockAcross)
	mux.HandleFunc("GET /stock/{article}/{uom}/{store}", a.getStock)
	mux.HandleFunc("POST /stock/{article}/{uom}/{store}", a.updateStock)
	mux.HandleFunc("POST /visits", a.postVisit)
	mux.HandleFunc("GET /visits", a.getVisits)
	mux.HandleFunc("POST /boards/{board}/scores", a.postScore)
	mux.HandleFunc("GET /boards/{board}/top", a.getTop)
	mux.HandleFunc("GET /boards/{board}/players/{player}/rank", a.getRank)
	return a.instrument(mux)
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// instrument counts requests and their latency by route pattern.
func (a *app) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		a.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		a.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		if sw.code >= 500 {
			a.metrics.errors.WithLabelValues(route).Inc()
		}
	})
}

// badRequest is an input error, answered with 400 and its message.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return &badRequest{fmt.Sprintf(format, args...)} }

// errConflict is answered with 409.
var errConflict = errors.New("conflict")

// writeJSON answers v as JSON with the given status (see jsonEncoder).
func writeJSON(w http.ResponseWriter, code int, v any) {
	var b []byte
	if je, ok := v.(jsonEncoder); ok {
		e := jsonBufs.Get().(*jsonEnc)
		defer jsonBufs.Put(e)
		e.b, e.ok = e.b[:0], true
		if je.encodeJSON(e); e.ok {
			b = e.b
		}
	}
	if b == nil {
		var err error
		if b, err = json.Marshal(v); err != nil {
			code, b = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
		}
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	// With its length known the body goes out in one piece, not chunked.
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// fail answers err with the matching status and a JSON error body. Server
// errors are logged and answered with a generic message.
func (a *app) fail(w http.ResponseWriter, r *http.Request, err error) {
	var br *badRequest
	switch {
	case errors.As(err, &br):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": br.msg})
	case errors.Is(err, repo.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not found"})
	case errors.Is(err, errConflict):
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
	case errors.Is(err, errUnavailable):
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": err.Error()})
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "request cancelled"})
	default:
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "internal error"})
	}
}

// pathID parses the path value name as a positive integer id.
func pathID(r *http.Request, name string) (int64, error) {
	v := r.PathValue(name)
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, badf("%s %q: want a positive integer", name, v)
	}
	return id, nil
}

// pathName returns the path value name, checked to be a short printable
// string.
func pathName(r *http.Request, name string) (string, error) {
	return checkName(name, r.PathValue(name))
}

func checkName(what, v string) (string, error) {
	if v == "" || len(v) > maxNameLen || !utf8.ValidString(v) {
		return "", badf("%s %q: want 1 to %d bytes of UTF-8", what, v, maxNameLen)
	}
	for _, c := range v {
		if c < 0x20 || c == 0x7f {
			return "", badf("%s %q: control characters are not allowed", what, v)
		}
	}
	return v, nil
}

// queryInt parses the query parameter name as an integer in [1, max], or
// returns def when it is absent.
func queryInt(r *http.Request, name string, def, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, badf("%s=%q: want an integer from 1 to %d", name, v, max)
	}
	return n, nil
}

// decodeBody decodes a JSON body into v, rejecting unknown fields, trailing
// data and bodies over maxBodyBytes.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badf("request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badf("request body: unexpected data after the JSON object")
	}
	return nil
}

func (a *app) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.ping(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": err.Error()})
		return
	}
	cache := "on"
	if !a.cfg.Cache {
		cache = "off"
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "cache": cache})
}

func (a *app) getProduct(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	p, err := a.cat.products.Get(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (a *app) listCategory(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	limit, err := queryInt(r, "limit", defaultPageSize, maxPageSize)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	cat, err := a.cat.categories.Get(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ps, err := a.cat.productsInCategory(r.Context(), id, limit)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, categoryPage{cat, ps})
}

// categoryPage is the answer of GET /categories/{id}/products.
type categoryPage struct {
	Category Category  `json:"category"`
	Products []Product `json:"products"`
}

// stockKey reads the stock key from the path.
func stockKey(r *http.Request, withStore bool) (StockKey, error) {
	var k StockKey
	var err error
	if k.ArticleNumber, err = pathName(r, "article"); err != nil {
		return k, err
	}
	if k.UOM, err = pathName(r, "uom"); err != nil {
		return k, err
	}
	if withStore {
		if k.StoreCode, err = pathName(r, "store"); err != nil {
			return k, err
		}
	}
	return k, nil
}

func (a *app) getStock(w http.ResponseWriter, r *http.Request) {
	k, err := stockKey(r, true)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	s, err := a.cat.stock.Get(r.Context(), k)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (a *app) getStockAcross(w http.ResponseWriter, r *http.Request) {
	k, err := stockKey(r, false)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rows, err := a.cat.stockAcrossStores(r.Context(), k.ArticleNumber, k.UOM)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if len(rows) == 0 {
		a.fail(w, r, repo.ErrNotFound)
		return
	}
	var total int64
	for _, s := range rows {
		total += int64(s.Quantity)
	}
	writeJSON(w, http.StatusOK, stockAcross{k.ArticleNumber, k.UOM, total, rows})
}

// stockAcross is the answer of GET /stock/{article}/{uom}.
type stockAcross struct {
	ArticleNumber string  `json:"article_number"`
	UOM           string  `json:"uom"`
	Total         int64   `json:"total"`
	Stores        []Stock `json:"stores"`
}

// stockChange is the body of POST /stock/...: exactly one of Delta (add to
// the quantity) and Quantity (set it).
type stockChange struct {
	Delta    *int32 `json:"delta"`
	Quantity *int32 `json:"quantity"`
}

func (a *app) updateStock(w http.ResponseWriter, r *http.Request) {
	k, err := stockKey(r, true)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var c stockChange
	if err := decodeBody(w, r, &c); err != nil {
		a.fail(w, r, err)
		return
	}
	if (c.Delta == nil) == (c.Quantity == nil) {
		a.fail(w, r, badf(`request body: give exactly one of "delta" and "quantity"`))
		return
	}
	if c.Quantity != nil && *c.Quantity < 0 {
		a.fail(w, r, badf("quantity %d: must not be negative", *c.Quantity))
		return
	}
	var s Stock
	if c.Quantity != nil {
		// A new quantity does not depend on the row: one UPDATE, without
		// reading the row under a lock first.
		s, err = a.cat.stock.Replace(r.Context(), Stock{ArticleNumber: k.ArticleNumber, UOM: k.UOM, StoreCode: k.StoreCode,
			Quantity: *c.Quantity, UpdatedAt: time.Now().UTC()})
	} else {
		s, err = a.cat.stock.Update(r.Context(), k, func(s *Stock) error {
			q := int64(s.Quantity) + int64(*c.Delta)
			if q < 0 {
				return fmt.Errorf("%w: stock of %s %s in %s would fall to %d", errConflict, k.ArticleNumber, k.UOM, k.StoreCode, q)
			}
			if q > 1<<31-1 {
				return badf("quantity %d: too large", q)
			}
			s.Quantity = int32(q)
			s.UpdatedAt = time.Now().UTC()
			return nil
		})
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// visitorsCounter is the counter the visit endpoints count.
const visitorsCounter = "visitors"

func (a *app) postVisit(w http.ResponseWriter, r *http.Request) {
	n, err := a.agg.visit(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"visitors": n})
}

func (a *app) getVisits(w http.ResponseWriter, r *http.Request) {
	n, err := a.agg.visits(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"visitors": n})
}

// scoreSubmission is the body of POST /boards/{board}/scores.
type scoreSubmission struct {
	Player string `json:"player"`
	Score  *int64 `json:"score"`
}

func (a *app) postScore(w http.ResponseWriter, r *http.Request) {
	board, err := pathName(r, "board")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var s scoreSubmission
	if err := decodeBody(w, r, &s); err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := checkName("player", s.Player); err != nil {
		a.fail(w, r, err)
		return
	}
	if s.Score == nil {
		a.fail(w, r, badf(`request body: "score" is missing`))
		return
	}
	if err := a.agg.submit(r.Context(), board, s.Player, *s.Score); err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"board": board, "player": s.Player, "score": *s.Score})
}

func (a *app) getTop(w http.ResponseWriter, r *http.Request) {
	board, err := pathName(r, "board")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	n, err := queryInt(r, "n", 10, maxPageSize)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	top, err := a.agg.top(r.Context(), board, n)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if top == nil {
		top = []entry{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"board": board, "top": top})
}

func (a *app) getRank(w http.ResponseWriter, r *http.Request) {
	board, err := pathName(r, "board")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	player, err := pathName(r, "player")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	e, err := a.agg.rank(r.Context(), board, player)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}
