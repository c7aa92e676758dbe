#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test.
#   scripts/test.sh          the whole suite: Release, bench smoke, the .deb (as root), then ASan+UBSan,
#                            then TSan, then coverage with its floors (docs/testing.md), then a fuzz smoke
#   scripts/test.sh quick    the Release suite only (for development)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
jobs=$(nproc)

./scripts/setup.sh

configure_and_build() {
  local dir=$1; shift
  echo "=== build $dir ($*)"
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  cmake --build "$dir" -j "$jobs" ${targets:+--target $targets}
}
# What a sanitizer suite needs; -O1 -g1 keeps those builds quick with usable traces.
sanitizer_targets="pdlb pdlb-sim pdlb-bench pdlb_unit_tests pdlb_sim_tests pdlb_integration_tests pdlb_bench_tests"
sanitizer_flags=(-DCMAKE_BUILD_TYPE=None "-DCMAKE_CXX_FLAGS=-O1 -g1 -DNDEBUG")

run_suite() {
  local dir=$1
  echo "=== test $dir"
  ctest --test-dir "$dir" --output-on-failure -j "${suite_jobs:-$jobs}" --timeout 600
}

configure_and_build build -DCMAKE_BUILD_TYPE=Release
# ctest does not print why a test skipped: say it once for the minilb comparison (and the bench).
if [ -z "${PDLB_MINILB:-}" ] && [ ! -e ../shared/anchors/minilb/run-minilb ]; then
  echo "minilb comparison: skipped (set PDLB_MINILB to the seed's run-minilb, or put shared/ beside this checkout)"
fi
run_suite build

if [ "$mode" = quick ]; then
  exit 0
fi

echo "=== benchmark smoke (correctness of every contender, no performance assertion)"
PDLB_BUILD_DIR=build ./bench/smoke.sh

echo "=== package: build the .deb, install it, check it, remove it"
if [ "$(id -u)" -ne 0 ]; then
  echo "package test: skipped (installing a .deb needs root; CI runs as root)"
else
  ./scripts/package.sh
  ./scripts/package_test.sh
fi

targets=$sanitizer_targets configure_and_build build-asan "${sanitizer_flags[@]}" -DPDLB_SANITIZE=address,undefined
# Sanitized processes are several times slower: one test at a time keeps timing-bound tests honest.
suite_jobs=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 run_suite build-asan

targets=$sanitizer_targets configure_and_build build-tsan "${sanitizer_flags[@]}" -DPDLB_SANITIZE=thread
suite_jobs=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 run_suite build-tsan

# Line coverage of the whole suite, with per-directory floors (scripts/coverage.sh, docs/testing.md).
coverage_start=$(date +%s)
./scripts/coverage.sh build-coverage
echo "=== coverage job: $(( $(date +%s) - coverage_start )) s"

echo "=== build build-fuzz"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DPDLB_FUZZ=ON -DPDLB_BUILD_TESTS=OFF >/dev/null
cmake --build build-fuzz -j "$jobs" --target pdlb_fuzz
./scripts/fuzz.sh build-fuzz "${PDLB_FUZZ_SECONDS:-30}"

# Last, so that CI reads ctest's closing line: the Release suite once more (~1 min; pdlb-ratio's
# simulated experiments, ~5 min and already run above, are left out of this second pass).
echo "=== test build (again, without the pdlb_ratio label)"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600 -LE pdlb_ratio
echo "=== all suites passed"
