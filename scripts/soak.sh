#!/usr/bin/env bash
# Soak test: drives mixed requests (default 1,000,000) through pdlb in front of 2 prefill + 2 decode
# pdlb-sim workers, with faults injected now and then, and checks that every request got a whole
# answer or a clear error, that pdlb's RSS and open fds stay flat (within 10% of their value after
# warm-up), that no worker keeps a leg, and that pdlb's log shows no crash. Exit 0 only if all hold.
#
#   scripts/soak.sh [--build DIR] [--requests N] [soak.py options...]
#   scripts/soak.sh --requests 20000                  # a smoke run (~20 s)
#   scripts/soak.sh --build build-soak                # the full million (~13 min on 2 cores)
#
# Build (own directory, so a rebuild of build/ does not change the binaries under test):
#   cmake -S . -B build-soak -G Ninja -DCMAKE_BUILD_TYPE=Release -DPDLB_BUILD_TESTS=OFF
#   ninja -C build-soak pdlb pdlb-sim
# Options (scripts/soak.py --help): --clients P, --concurrency C (connections per client process),
# --fault-interval S, --restarts R, --no-faults, --seed S, --workdir DIR, --json-out FILE, ...
# Everything listens on 127.0.0.1 only; every process started is stopped on exit (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${PDLB_BUILD_DIR:-build}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --build=*) build=${1#--build=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
python3 scripts/soak.py --bin "$build" "${args[@]}" &
pid=$!
# soak.py stops its children in a finally block; its children also die with it (PR_SET_PDEATHSIG).
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 130' INT TERM
trap 'kill -TERM "$pid" 2>/dev/null || true' EXIT
wait "$pid"
