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

# Builds one of CMakePresets.json's configurations in its directory (build, build-asan, ...).
configure_and_build() {
  local preset=$1 dir=$2
  echo "=== build $dir (preset $preset)"
  cmake --preset "$preset" >/dev/null
  cmake --build "$dir" -j "$jobs" ${targets:+--target $targets}
}
# What a sanitizer suite needs (the presets build with -O1 -g1: quick, with usable traces).
sanitizer_targets="pdlb pdlb-sim pdlb-bench pdlb_unit_tests pdlb_sim_tests pdlb_integration_tests pdlb_bench_tests"

run_suite() {
  local dir=$1
  echo "=== test $dir"
  ctest --test-dir "$dir" --output-on-failure -j "${suite_jobs:-$jobs}" --timeout 600
}

configure_and_build release build
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

targets=$sanitizer_targets configure_and_build asan build-asan
# Sanitized processes are several times slower: one test at a time keeps timing-bound tests honest.
suite_jobs=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 run_suite build-asan

targets=$sanitizer_targets configure_and_build tsan build-tsan
suite_jobs=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 run_suite build-tsan

# Line coverage of the whole suite, with per-directory floors (scripts/coverage.sh, docs/testing.md).
coverage_start=$(date +%s)
./scripts/coverage.sh build-coverage
echo "=== coverage job: $(( $(date +%s) - coverage_start )) s"

targets=pdlb_fuzz configure_and_build fuzz build-fuzz
./scripts/fuzz.sh build-fuzz "${PDLB_FUZZ_SECONDS:-30}"

# Last, so that CI reads ctest's closing line: the Release suite once more (~1 min; pdlb-ratio's
# simulated experiments, ~5 min and already run above, are left out of this second pass).
echo "=== test build (again, without the pdlb_ratio label)"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600 -LE pdlb_ratio
echo "=== all suites passed"
