#!/usr/bin/env bash
# demo.sh [quick|full]: the retail example end to end (make demo, make demo-full).
#
# Starts a throwaway PostgreSQL and memcached (scripts/servers.sh; memcached is
# installed with apt-get if missing and root), builds examples/retail, then:
# migrate, seed, warm (with the raw Set baseline), and the load test run twice
# against the service, with the cache on and off (then one cache-on run with
# the near-cache staleness probe). Prints the side-by-side
# summary and where the report is, and stops and removes everything it started.
#
#   quick (default): 1,100 products x 170 stores = 187,000 stock rows
#   full:            11,000 products x 170 stores = 1,870,000 stock rows
#
# Environment: DEMO_DURATION (per run, default 12s), DEMO_ROUNDS (on/off pairs, 3: each mode's median run is reported), DEMO_CLIENTS (64),
# DEMO_PIN (procs, the default: the load generator on GOMAXPROCS=1, the service on every CPU;
# taskset: the load generator also pinned to the first of this shell's CPUs; none),
# DEMO_REPORT_DIR (default examples/retail/report, or report-full).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-quick}"
case "$mode" in
quick) scale=0.1 ;;
full) scale=1 ;;
*)
	echo "usage: $0 [quick|full]" >&2
	exit 2
	;;
esac
duration="${DEMO_DURATION:-12s}"
rounds="${DEMO_ROUNDS:-3}"
clients="${DEMO_CLIENTS:-64}"
default_dir=examples/retail/report
[ "$mode" = quick ] || default_dir=examples/retail/report-full
report_dir="${DEMO_REPORT_DIR:-$default_dir}"

say() { printf '\n==> %s\n' "$*"; }

# free_port BASE: the first port from BASE on that nothing on 127.0.0.1 answers.
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
	echo "$p"
}

state="$(mktemp -d /tmp/cachedrepo-demo.XXXXXX)"
chmod 755 "$state"
export CACHEDREPO_STATE_DIR="$state"
CACHEDREPO_PG_PORT="$(free_port 25442)"
CACHEDREPO_MEMCACHED_PORT="$(free_port 11321)"
export CACHEDREPO_PG_PORT CACHEDREPO_MEMCACHED_PORT
big_mc_pid=""

cleanup() {
	local rc=$?
	say "stopping the servers the demo started"
	if [ -n "$big_mc_pid" ]; then
		kill "$big_mc_pid" 2>/dev/null || true
		wait "$big_mc_pid" 2>/dev/null || true
	fi
	bash scripts/servers.sh reset || true
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting PostgreSQL and memcached (state in $state)"
bash scripts/servers.sh start
eval "$(bash scripts/servers.sh env)"

if [ "$mode" = full ]; then
	# servers.sh's memcached has 256 MB; 1.87M rows plus the raw-Set
	# baseline need about 700 MB, so the full run gets its own with 1 GB.
	mc_port="$(free_port $((CACHEDREPO_MEMCACHED_PORT + 1)))"
	mc_args=(-l 127.0.0.1 -p "$mc_port" -U 0 -t 2 -m 1024 -c 4096)
	if [ "$(id -u)" = 0 ]; then
		mc_args+=(-u "$(id -u memcache >/dev/null 2>&1 && echo memcache || echo nobody)")
	fi
	memcached "${mc_args[@]}" >"$state/memcached-1g.log" 2>&1 &
	big_mc_pid=$!
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$mc_port") 2>/dev/null && break
		sleep 0.1
	done
	export MEMCACHED_ADDR="127.0.0.1:$mc_port"
	echo "memcached with 1 GB on $MEMCACHED_ADDR (pid $big_mc_pid)"
fi

say "building examples/retail"
go build -o "$state/retail" ./examples/retail
retail="$state/retail"

say "migrate"
"$retail" migrate
say "seed (scale $scale)"
"$retail" seed -scale "$scale"
say "warm-up (and the raw parallel Set baseline)"
mkdir -p "$report_dir"
"$retail" warm -raw -out "$report_dir/warm.json"
say "load: $clients clients, $duration per run, $rounds rounds of cache on then off"
# The load generator runs with GOMAXPROCS=1 (DEMO_PIN=taskset: also pinned
# to the first of this shell's CPUs) so that it does not starve the service
# it measures, which gets every CPU; DEMO_PIN=none runs it unpinned.
pin=()
case "${DEMO_PIN:-procs}" in
taskset)
	if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
		allowed="$(taskset -pc $$ | sed 's/.*: //')" # this shell's CPUs, e.g. 0-1 or 2,3
		first="${allowed%%[-,]*}"
		pin=(env GOMAXPROCS=1 RETAIL_SERVICE_CPUS="$allowed" RETAIL_SERVICE_PROCS="$(nproc)" taskset -c "$first")
		echo "load generator pinned to CPU $first (GOMAXPROCS=1); the service on CPUs $allowed"
	fi
	;;
procs)
	pin=(env GOMAXPROCS=1 RETAIL_SERVICE_PROCS="$(nproc)")
	echo "load generator on GOMAXPROCS=1; the service on GOMAXPROCS=$(nproc)"
	;;
esac
"${pin[@]}" "$retail" load -compare -rounds "$rounds" -duration "$duration" -clients "$clients" -out "$report_dir" -warm-results "$report_dir/warm.json" 2>"$state/service.log" ||
	{ tail -n 30 "$state/service.log" >&2; exit 1; }
