package main

import (
	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
)

// offCache is the repo.Cache of CACHE=off: it stores nothing. Every Get
// misses and every write "succeeds", so the stores, the counter and the
// leaderboard run their usual code and read Postgres on every request. The
// no-cache run of the load test therefore exercises the same handlers, the
// same SQL and the same pgx pool as the cached run; only memcached is gone.
type offCache struct{}

var _ repo.Cache = offCache{}

func (offCache) Get(string) (*memcache.Item, error) { return nil, memcache.ErrCacheMiss }
func (offCache) GetMulti([]string) (map[string]*memcache.Item, error) {
	return map[string]*memcache.Item{}, nil
}
func (offCache) Add(*memcache.Item) error            { return nil }
func (offCache) Set(*memcache.Item) error            { return nil }
func (offCache) CompareAndSwap(*memcache.Item) error { return memcache.ErrCacheMiss }
func (offCache) Delete(string) error                 { return memcache.ErrCacheMiss }
func (offCache) Increment(string, uint64) (uint64, error) {
	return 0, memcache.ErrCacheMiss
}
