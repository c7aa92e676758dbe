#!/usr/bin/env bash
# Quick start: installs what is missing, builds, starts one simulated prefill worker, one simulated
# decode worker and pdlb in front of them, sends a request and a streamed request through pdlb,
# then stops everything. Pass --keep to leave them running (Ctrl-C stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=${1:-}

./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target pdlb pdlb-sim

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

. scripts/ready.sh
# Waits for $1's ready file; on failure shows the program's log $2.
ready_or_log() {
  wait_ready "$1" "$3" || { echo "demo: not ready; $2:" >&2; cat "$2" >&2; exit 1; }
}

build/pdlb-sim --role prefill --port 0 --bootstrap-port 0 --ready-file "$tmp/prefill.ready" >"$tmp/prefill.log" 2>&1 &
pids+=($!)
ready_or_log "$tmp/prefill.ready" "$tmp/prefill.log" "$!"
build/pdlb-sim --role decode --port 0 --ready-file "$tmp/decode.ready" >"$tmp/decode.log" 2>&1 &
pids+=($!)
ready_or_log "$tmp/decode.ready" "$tmp/decode.log" "$!"
prefill_port=$(ready_field "$tmp/prefill.ready" port)
bootstrap_port=$(ready_field "$tmp/prefill.ready" bootstrap_port)
decode_port=$(ready_field "$tmp/decode.ready" port)

build/pdlb --host 127.0.0.1 --port "${PDLB_PORT:-8000}" \
  --prefill "http://127.0.0.1:$prefill_port" --prefill-bootstrap-ports "$bootstrap_port" \
  --decode "http://127.0.0.1:$decode_port" --ready-file "$tmp/pdlb.ready" >"$tmp/pdlb.log" 2>&1 &
pids+=($!)
ready_or_log "$tmp/pdlb.ready" "$tmp/pdlb.log" "$!"
port=$(ready_field "$tmp/pdlb.ready" port)

echo "== pdlb on port $port, prefill :$prefill_port (bootstrap :$bootstrap_port), decode :$decode_port"
echo "== POST /generate"
curl -sS "http://127.0.0.1:$port/generate" -H 'Content-Type: application/json' \
  -d '{"text": "The capital of France is", "sampling_params": {"max_new_tokens": 8}}'
echo
echo "== POST /v1/chat/completions (stream)"
curl -sS -N "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "sim", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, "stream": true}'
echo "== pdlb log"
cat "$tmp/pdlb.log"
if [ "$keep" = --keep ]; then
  echo "== running; Ctrl-C to stop"
  wait
fi
