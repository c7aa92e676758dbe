#!/usr/bin/env bash
# Line coverage of pdlb, pdlb-sim and pdlb-bench under the whole test suite (see docs/testing.md):
# a gcc --coverage build, every test, a per-file table from gcovr, and the per-directory floors of
# scripts/coverage_floors.py (CI fails below them).
#   scripts/coverage.sh [BUILD_DIR]     default build-coverage
# Needs gcovr (Debian package; scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-coverage}
jobs=$(nproc)

echo "=== build $dir (--coverage)"
# -O1 as in the sanitizer builds: -O0 makes the timing-bound tests slow, and line counts stay usable.
cmake --preset coverage -B "$dir" >/dev/null  # CMakePresets.json; -B: the directory asked for
cmake --build "$dir" -j "$jobs"

# Counts from an earlier run would add up with this one's.
find "$dir" -name '*.gcda' -delete
echo "=== test $dir"
ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 600

echo "=== coverage (lines) of src/"
# Only the project's own code: src/ (tests, Boost and other headers are left out); asio_impl.cpp
# only compiles Asio and Beast.
# --gcov-ignore-parse-errors: a gcov line gcovr 5.2 cannot read would otherwise stop the report (and
# with -j, hang it); the build's atomic counters (CMakeLists.txt) remove the known cause.
gcovr --root . --filter 'src/' --exclude 'src/asio_impl\.cpp' -j "$jobs" --gcov-ignore-parse-errors \
  --txt - --json-summary "$dir/coverage.json" --print-summary "$dir"
python3 scripts/coverage_floors.py "$dir/coverage.json"
