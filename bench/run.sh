#!/usr/bin/env bash
# The benchmark command: installs what is missing, builds Release, starts stub workers, pdlb-sim,
# nginx, minilb and pdlb on 127.0.0.1, runs every workload against every contender, prints one table
# and writes bench/results/latest.md. See docs/benchmarks.md.
#   bench/run.sh [--quick] [--runs N] [--duration S] [--only small,large,sse,logprob,logprob4k,latency,streams]
#                [--latency-streams 256,512,1024]
# Environment: PDLB_BUILD_DIR (default build), PDLB_BENCH_SKIP_SETUP=1 to skip scripts/setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${PDLB_BUILD_DIR:-build}
case "$build" in /*) ;; *) build="$root/$build" ;; esac

if [ "${PDLB_BENCH_SKIP_SETUP:-0}" != 1 ]; then
  ./scripts/setup.sh
fi
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
if [ "$type" != Release ]; then
  echo "bench: warning: $build is a '$type' build; figures are meant for Release" >&2
fi
cmake --build "$build" --target pdlb pdlb-sim pdlb-bench -j "$(nproc)"
# A process may hold 20,000 files here; the 5,000-stream workload needs about 15,000 in pdlb.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec /usr/bin/python3 "$root/bench/run.py" --build-dir "$build" "$@"
