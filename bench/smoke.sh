#!/usr/bin/env bash
# CI smoke of the benchmark command (about 1-2 minutes): every workload against every contender,
# briefly, checking only that each served it correctly (pdlb-bench validates every response; wrk
# must see no errors). No performance figure is asserted. Exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
status=0
"$here/run.sh" --smoke --results "$here/results/smoke.md" "$@" || status=$?
echo "bench smoke: $([ $status -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
exit $status
