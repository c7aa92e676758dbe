#!/usr/bin/env bash
# Runs every libFuzzer target for a while, each from its seed corpus in tests/fuzz/corpus.
#   scripts/fuzz.sh [BUILD_DIR] [SECONDS_PER_TARGET]     (defaults: build-fuzz 30)
#   PDLB_FUZZ_TARGETS="fuzz_sse fuzz_rewrite" scripts/fuzz.sh ...   runs only those targets
# Build first:  cmake --preset fuzz   (CMakePresets.json: clang-14, build-fuzz/)
#               ninja -C build-fuzz pdlb_fuzz
# New inputs go to a scratch directory, not the source tree. A finding stops the run (exit 1) and
# leaves a crash-* file in the scratch directory, whose path is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-fuzz}
secs=${2:-30}
scratch=$(mktemp -d /tmp/pdlb-fuzz.XXXXXX)
status=0
for target in ${PDLB_FUZZ_TARGETS:-fuzz_json_scan fuzz_rewrite fuzz_sse fuzz_logprob_merge fuzz_stream_relay fuzz_http_session}; do
  bin=$(find "$dir" -name "$target" -type f -perm -u+x | head -1)
  if [ -z "$bin" ]; then
    echo "fuzz: $target not built in $dir" >&2
    exit 1
  fi
  mkdir -p "$scratch/$target"
  echo "=== fuzz $target for ${secs}s"
  if ! (cd "$scratch" && "$OLDPWD/$bin" -max_total_time="$secs" -max_len=65536 -print_final_stats=1 \
        "$scratch/$target" "$OLDPWD/tests/fuzz/corpus/$target" 2>&1 | tail -12); then
    status=1
  fi
  if ls "$scratch"/crash-* "$scratch"/leak-* "$scratch"/timeout-* >/dev/null 2>&1; then
    echo "fuzz: $target found a problem; inputs kept in $scratch" >&2
    status=1
  fi
done
[ $status -eq 0 ] && rm -rf "$scratch"
exit $status
