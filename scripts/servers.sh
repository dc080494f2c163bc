#!/usr/bin/env bash
# servers.sh start|stop|status|env|reset
#
# Starts a throwaway PostgreSQL and memcached for running the example (or the
# tests, against long-lived servers) locally:
#
#   bash scripts/servers.sh start
#   eval "$(bash scripts/servers.sh env)"
#   ...
#   bash scripts/servers.sh stop     # keeps the data; `reset` also deletes it
#
# State (data directory, logs, pid files) lives in $CACHEDREPO_STATE_DIR,
# default /tmp/cachedrepo-dev. Ports: $CACHEDREPO_PG_PORT (default 25432, below the ephemeral port range so no outgoing connection holds it) and
# $CACHEDREPO_MEMCACHED_PORT (default 11311), both on 127.0.0.1 only.
# PostgreSQL runs with trust auth as user postgres, fsync off: never use it
# for data you want to keep. As root, the servers run as the postgres and
# memcache (or nobody) users.
set -euo pipefail

STATE_DIR="${CACHEDREPO_STATE_DIR:-/tmp/cachedrepo-dev}"
PG_PORT="${CACHEDREPO_PG_PORT:-25432}"
MC_PORT="${CACHEDREPO_MEMCACHED_PORT:-11311}"
PG_DB="cachedrepo"
PG_DIR="$STATE_DIR/pg"           # owned by the postgres user when root
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
MC_DIR="$STATE_DIR/memcached"
MC_PID="$MC_DIR/memcached.pid"
MC_LOG="$MC_DIR/memcached.log"

PG_INSTALL="apt-get update && apt-get install -y postgresql"
MC_INSTALL="apt-get update && apt-get install -y memcached"

die() {
	echo "servers.sh: $*" >&2
	exit 1
}
say() { echo "servers.sh: $*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

# as_pg CMD...: run CMD as the postgres user when root.
as_pg() {
	if is_root; then
		if command -v runuser >/dev/null 2>&1; then
			runuser -u postgres -- "$@"
		else
			su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
		fi
	else
		"$@"
	fi
}

# pg_bindir: the directory of initdb/pg_ctl, highest /usr/lib/postgresql/N/bin first.
pg_bindir() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -rn); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			echo "$d"
			return 0
		fi
	done
	if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
		dirname "$(command -v pg_ctl)"
		return 0
	fi
	return 1
}

memcached_bin() {
	command -v memcached 2>/dev/null && return 0
	local b
	for b in /usr/bin/memcached /usr/sbin/memcached /usr/local/bin/memcached; do
		[ -x "$b" ] && echo "$b" && return 0
	done
	return 1
}

# memcached_user: the user to run memcached as when root.
memcached_user() {
	if id -u memcache >/dev/null 2>&1; then echo memcache; else echo nobody; fi
}

ensure_memcached() {
	memcached_bin >/dev/null && return 0
	if is_root; then
		say "memcached not found; installing it: $MC_INSTALL"
		apt-get update && apt-get install -y memcached
		memcached_bin >/dev/null || die "memcached still not found after installing it"
	else
		die "memcached not found; install it with: $MC_INSTALL"
	fi
}

pg_url() { echo "postgres://postgres@127.0.0.1:$PG_PORT/${1:-postgres}?sslmode=disable"; }

pg_running() {
	local bindir
	bindir="$(pg_bindir)" || return 1
	[ -f "$PG_DATA/postmaster.pid" ] && as_pg "$bindir/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

# mc_answers: memcached on MC_PORT answers "version".
mc_answers() {
	local line
	line="$( (
		exec 3<>"/dev/tcp/127.0.0.1/$MC_PORT" || exit 1
		printf 'version\r\n' >&3
		IFS= read -r -t 2 l <&3 && echo "$l"
	) 2>/dev/null)" || true
	[[ "$line" == VERSION* ]]
}

mc_pid() {
	[ -f "$MC_PID" ] || return 1
	local pid
	pid="$(cat "$MC_PID")"
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_pg() {
	local bindir
	bindir="$(pg_bindir)" || die "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH; install them with: $PG_INSTALL"
	if pg_running; then
		say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
		return 0
	fi
	mkdir -p "$PG_DIR"
	if is_root; then
		chown postgres: "$PG_DIR"
		as_pg test -w "$PG_DIR" || die "user postgres cannot write $PG_DIR; set CACHEDREPO_STATE_DIR to a directory it can reach (e.g. under /tmp)"
	fi
	chmod 700 "$PG_DIR"
	if [ ! -f "$PG_DATA/PG_VERSION" ]; then
		say "initdb into $PG_DATA"
		(cd "$PG_DIR" && as_pg env LC_ALL=C TZ=UTC "$bindir/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$PG_DIR/initdb.log" 2>&1) ||
			{ cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
	fi
	local opts="-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_DIR"
	opts+=" -c max_connections=300 -c shared_buffers=64MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
	# Logical replication for retail invalidator (the WAL invalidator).
	opts+=" -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c max_slot_wal_keep_size=1GB -c wal_writer_delay=10ms"
	if ! (cd "$PG_DIR" && as_pg env LC_ALL=C "$bindir/pg_ctl" start -w -t 60 -D "$PG_DATA" -l "$PG_LOG" -o "$opts" >/dev/null); then
		tail -n 20 "$PG_LOG" >&2 || true
		die "PostgreSQL did not start on 127.0.0.1:$PG_PORT (is the port taken? set CACHEDREPO_PG_PORT)"
	fi
	local psql="$bindir/psql"
	[ -x "$psql" ] || psql="$(command -v psql)" || die "psql not found; install it with: $PG_INSTALL"
	if ! (cd "$PG_DIR" && as_pg "$psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc \
		"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") | grep -q 1; then
		(cd "$PG_DIR" && as_pg "$psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE $PG_DB") >/dev/null
	fi
	say "PostgreSQL running on 127.0.0.1:$PG_PORT (data in $PG_DATA, log $PG_LOG)"
}

start_mc() {
	ensure_memcached
	local bin pid
	bin="$(memcached_bin)"
	if pid="$(mc_pid)"; then
		say "memcached already running on 127.0.0.1:$MC_PORT (pid $pid)"
		return 0
	fi
	if mc_answers; then
		die "something else already answers on 127.0.0.1:$MC_PORT; set CACHEDREPO_MEMCACHED_PORT"
	fi
	mkdir -p "$MC_DIR"
	local args=(-l 127.0.0.1 -p "$MC_PORT" -U 0 -t 2 -m 256 -c 4096)
	if is_root; then
		args+=(-u "$(memcached_user)")
	fi
	# setsid: detach from the terminal, so the server outlives this shell.
	setsid "$bin" "${args[@]}" </dev/null >"$MC_LOG" 2>&1 &
	pid=$!
	echo "$pid" >"$MC_PID"
	local i
	for i in $(seq 100); do
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$MC_LOG" >&2 || true
			rm -f "$MC_PID"
			die "memcached exited during startup"
		fi
		mc_answers && break
		sleep 0.1
	done
	mc_answers || die "memcached did not answer on 127.0.0.1:$MC_PORT within 10s"
	say "memcached running on 127.0.0.1:$MC_PORT (pid $pid, log $MC_LOG)"
}

stop_pg() {
	local bindir
	if ! bindir="$(pg_bindir)" || ! pg_running; then
		say "PostgreSQL not running"
		return 0
	fi
	as_pg "$bindir/pg_ctl" stop -w -t 30 -m fast -D "$PG_DATA" >/dev/null
	say "PostgreSQL stopped"
}

stop_mc() {
	local pid i
	if ! pid="$(mc_pid)"; then
		rm -f "$MC_PID"
		say "memcached not running"
		return 0
	fi
	kill "$pid" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$MC_PID"
	say "memcached stopped"
}

status() {
	local rc=0 pid
	if pg_running; then
		echo "postgres:  running on 127.0.0.1:$PG_PORT ($(pg_url "$PG_DB"))"
	else
		echo "postgres:  stopped"
		rc=1
	fi
	if pid="$(mc_pid)" && mc_answers; then
		echo "memcached: running on 127.0.0.1:$MC_PORT (pid $pid)"
	else
		echo "memcached: stopped"
		rc=1
	fi
	return $rc
}

print_env() {
	echo "export DATABASE_URL='$(pg_url "$PG_DB")'"
	echo "export MEMCACHED_ADDR='127.0.0.1:$MC_PORT'"
	echo "# to run the tests against these servers instead of throwaway ones:"
	echo "export CACHEDREPO_TEST_DATABASE_URL='$(pg_url postgres)'"
	echo "export CACHEDREPO_TEST_MEMCACHED='127.0.0.1:$MC_PORT'"
}

case "${1:-}" in
start)
	mkdir -p "$STATE_DIR"
	chmod 755 "$STATE_DIR"
	start_pg
	start_mc
	;;
stop)
	stop_mc
	stop_pg
	;;
status) status ;;
env) print_env ;;
reset)
	stop_mc
	stop_pg
	rm -rf "$STATE_DIR"
	say "removed $STATE_DIR"
	;;
*)
	echo "usage: $0 start|stop|status|env|reset" >&2
	exit 2
	;;
esac
