#!/usr/bin/env bash
# Alternating benchmark ratios: each benchmark's raw and store rows run in
# turn (raw, store, raw, store, ...), one `go test -count 1` run each, so the
# machine's drift does not enter the ratio (-count would repeat a row back
# to back). Prints, per benchmark, the median ns/op of each row and the
# median of the per-pair ratios store/raw (below 1: the store is faster).
#
# usage: scripts/bench-ratio.sh [pairs] [benchmark ...]
#   pairs       default 5
#   benchmark   e.g. BenchmarkGetHit or BenchmarkGetHitParallel/256; default: all below
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pairs="${1:-5}"
shift || true
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
	benches=(BenchmarkGetHit BenchmarkGetManyHit BenchmarkGetMiss BenchmarkGetHitNear BenchmarkGetManyNear BenchmarkGetManyMiss
		BenchmarkGetHitParallel/1 BenchmarkGetHitParallel/32 BenchmarkGetHitParallel/256)
fi

bin="$(mktemp -d)/repo.test"
trap 'rm -rf "$(dirname "$bin")"' EXIT
go test -c -o "$bin" ./repo
cd repo # the package directory, as go test runs it

# nsop BENCH ROW: one run of one row, its ns/op.
nsop() {
	local pattern
	pattern="^$(echo "$1" | sed 's|/|$/^|g')\$/^$2\$"
	"$bin" -test.run '^$' -test.bench "$pattern" -test.count 1 -test.benchmem 2>&1 |
		awk -v row="/$2" '$1 ~ row"(-[0-9]+)?$" { for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op" && !done) { print $i; done = 1 } }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2] + v[NR/2+1]) / 2 }'; }

for b in "${benches[@]}"; do
	raws=() stores=() ratios=()
	for ((i = 0; i < pairs; i++)); do
		r="$(nsop "$b" raw)"
		s="$(nsop "$b" store)"
		if [ -z "$r" ] || [ -z "$s" ]; then
			echo "bench-ratio: $b: no ns/op (raw '$r', store '$s')" >&2
			exit 1
		fi
		raws+=("$r") stores+=("$s") ratios+=("$(awk -v s="$s" -v r="$r" 'BEGIN { printf "%.3f", s / r }')")
	done
	printf 'bench-ratio: %s pairs=%d raw_ns=%s store_ns=%s store/raw=%s (each pair: %s)\n' "$b" "$pairs" \
		"$(printf '%s\n' "${raws[@]}" | median)" "$(printf '%s\n' "${stores[@]}" | median)" \
		"$(printf '%s\n' "${ratios[@]}" | median)" "${ratios[*]}"
done
