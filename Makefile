# Tests run against a real PostgreSQL and a real memcached (see
# repo/repotest): the servers are started from the installed binaries, or
# taken from CACHEDREPO_TEST_DATABASE_URL / CACHEDREPO_TEST_MEMCACHED.

SHELL := /bin/bash
GO ?= go
FUZZTIME ?= 20s
MEMCACHED_INSTALL := apt-get update && apt-get install -y memcached nutcracker

.PHONY: test vet bench bench-ratio fuzz check-memcached demo demo-full check-go

ADAPTERS := repo/repootel

## test: run all tests with the race detector, the adapters' modules included
## (installs memcached and nutcracker if missing and root), then the WAL invalidator's
## 100,000-row benchmark once (wal-bench:), then print the summary lines the
## tests measured (consistency:, wal:, herd:, ...)
test: check-memcached
	@summary="$$(mktemp)"; rc=0; \
	CACHEDREPO_SUMMARY="$$summary" $(GO) test -race -count=1 ./... || rc=$$?; \
	for m in $(ADAPTERS); do [ $$rc = 0 ] || break; echo "== $$m"; (cd $$m && $(GO) vet ./... && $(GO) test -race -count=1 ./...) || rc=$$?; done; \
	if [ $$rc = 0 ]; then echo "== wal-bench (BenchmarkWALApply, once, without -race)"; \
		CACHEDREPO_SUMMARY="$$summary" $(GO) test -count=1 -run='^$$' -bench='^BenchmarkWALApply$$' -benchtime=1x ./repo/invalidation || rc=$$?; fi; \
	echo "== summary lines"; cat "$$summary"; rm -f "$$summary"; exit $$rc

check-memcached:
	@if ! command -v memcached >/dev/null 2>&1 || ! { command -v nutcracker || [ -x /usr/sbin/nutcracker ]; } >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "memcached or nutcracker is not installed; installing them: $(MEMCACHED_INSTALL)"; \
			$(MEMCACHED_INSTALL); \
		else \
			echo "memcached or nutcracker is not installed; the tests need them. Install them with:"; \
			echo "  $(MEMCACHED_INSTALL)"; \
			exit 1; \
		fi; \
	fi

## vet: fail on unformatted files, then go vet
vet:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt -l reports unformatted files:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@for m in $(ADAPTERS); do (cd $$m && $(GO) vet ./...) || exit 1; done

## bench: benchmarks of the repository layer
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./repo/...

## bench-ratio: store/raw ratios of the hit, near-cache, parallel, GetMany and miss
## benchmarks, the rows alternating run by run (PAIRS pairs, default 5)
bench-ratio:
	bash scripts/bench-ratio.sh $(or $(PAIRS),5)

## fuzz: short runs of the fuzz targets ($(FUZZTIME) each)
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzKey$$' -fuzztime=$(FUZZTIME) ./cachekeys
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./internal/codec

## demo: the retail example end to end at quick scale (187,000 stock rows): throwaway
## Postgres + memcached, migrate, seed, warm, load with the cache on and off, report
demo: check-go
	bash scripts/demo.sh quick

## demo-full: the same at full scale (1,870,000 stock rows; a few minutes)
demo-full: check-go
	bash scripts/demo.sh full

check-go:
	@command -v $(GO) >/dev/null 2>&1 || { echo "Go is not installed (need Go 1.26: https://go.dev/dl/)"; exit 1; }
