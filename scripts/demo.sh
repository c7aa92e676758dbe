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

# Waits for a line matching $2 in file $1 (the programs print their ports when ready).
wait_line() {
  for _ in $(seq 1 200); do
    if grep -qE "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "demo: timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2
  exit 1
}

build/pdlb-sim --role prefill --port 0 --bootstrap-port 0 >"$tmp/prefill.log" 2>&1 &
pids+=($!)
build/pdlb-sim --role decode --port 0 >"$tmp/decode.log" 2>&1 &
pids+=($!)
wait_line "$tmp/prefill.log" 'pdlb-sim ready'
wait_line "$tmp/decode.log" 'pdlb-sim ready'
prefill_port=$(grep -oE 'ready role=prefill http=[^ ]+:[0-9]+' "$tmp/prefill.log" | grep -oE '[0-9]+$')
bootstrap_port=$(grep -oE 'bootstrap=[0-9]+' "$tmp/prefill.log" | head -1 | cut -d= -f2)
decode_port=$(grep -oE 'ready role=decode http=[^ ]+:[0-9]+' "$tmp/decode.log" | grep -oE '[0-9]+$')

build/pdlb --host 127.0.0.1 --port "${PDLB_PORT:-8000}" \
  --prefill "http://127.0.0.1:$prefill_port" --prefill-bootstrap-ports "$bootstrap_port" \
  --decode "http://127.0.0.1:$decode_port" >"$tmp/pdlb.log" 2>&1 &
pids+=($!)
wait_line "$tmp/pdlb.log" 'listening on'
port=$(grep -oE 'listening on http://[^ ]+:[0-9]+' "$tmp/pdlb.log" | grep -oE '[0-9]+$')

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
