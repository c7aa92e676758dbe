#!/usr/bin/env bash
# Can one pdlb-sim decode worker hold thousands of simulated streams and keep its step-time model?
#
# Starts a prefill and a decode pdlb-sim, opens STREAMS concurrent streaming /generate requests on
# the decode (each waits for its room), runs the matching prefill requests, reads every stream to
# its end, then compares the decode's measured step time with its model (GET /sim/stats).
# Passes when the measured step time stays within 10% of the model.
#
# Usage: bench/sim_capacity.sh [BUILD_DIR]
#   env: STREAMS (2000), TOKENS per stream (256), ROUTE (generate | completions),
#        STEP_BASE_MS (10), STEP_PER_REQ_MS (0.03), the simulator defaults
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/../build}"
sim="$build/pdlb-sim"
[[ -x "$sim" ]] || sim="$build/src/sim/pdlb-sim"
[[ -x "$sim" ]] || { echo "pdlb-sim not found under $build" >&2; exit 2; }

STREAMS="${STREAMS:-2000}"
TOKENS="${TOKENS:-256}"
ROUTE="${ROUTE:-generate}"
STEP_BASE_MS="${STEP_BASE_MS:-10}"
STEP_PER_REQ_MS="${STEP_PER_REQ_MS:-0.03}"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a worker in the background and waits for its ready file; sets PORT and BOOTSTRAP.
. "$here/../scripts/ready.sh"
start_sim() {
  local name="$1"; shift
  "$sim" "$@" --port 0 --ready-file "$work/$name.ready" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=("$!")
  wait_ready "$work/$name.ready" "$!" 20 || { echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
  PORT="$(ready_field "$work/$name.ready" port)"
  BOOTSTRAP="$(ready_field "$work/$name.ready" bootstrap_port 0)"
}

start_sim prefill --role prefill --bootstrap-port 0 --prefill-tokens-per-s 0
p_port="$PORT"; p_boot="$BOOTSTRAP"
start_sim decode --role decode --max-running-requests "$STREAMS" \
  --step-base-ms "$STEP_BASE_MS" --step-per-req-ms "$STEP_PER_REQ_MS"
d_port="$PORT"
echo "prefill http=$p_port bootstrap=$p_boot, decode http=$d_port; $STREAMS streams x $TOKENS tokens on /$ROUTE"

python3 - "$p_port" "$p_boot" "$d_port" "$STREAMS" "$TOKENS" "$ROUTE" <<'EOF'
import asyncio, json, sys, time

p_port, p_boot, d_port, streams, tokens = (int(x) for x in sys.argv[1:6])
route = sys.argv[6]

def body(i, stream):
    b = {"bootstrap_host": "127.0.0.1", "bootstrap_port": p_boot, "bootstrap_room": 10_000 + i,
         "stream": stream}
    if route == "generate":
        b.update({"text": f"capacity prompt {i % 50}", "sampling_params": {"max_new_tokens": tokens}})
        path = "/generate"
    else:
        b.update({"prompt": f"capacity prompt {i % 50}", "max_tokens": tokens})
        path = "/v1/completions"
    return path, json.dumps(b).encode()

def request(path, payload, method="POST"):
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload

async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)

async def get(port, path):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(request(path, b"", "GET"))
    head, data = await read_response(r)
    w.close()
    return json.loads(data)

async def one_stream(i, results):
    path, payload = body(i, True)
    r, w = await asyncio.open_connection("127.0.0.1", d_port)
    w.write(request(path, payload))
    await w.drain()
    events, tail = 0, b""
    while True:
        chunk = await r.read(1 << 16)
        if not chunk:
            break
        events += chunk.count(b"data: ")
        tail = (tail + chunk)[-64:]
        if b"data: [DONE]" in tail:
            break
    w.close()
    results.append((events, b"data: [DONE]" in tail))

async def prefill_worker(queue):
    r, w = await asyncio.open_connection("127.0.0.1", p_port)
    while True:
        i = await queue.get()
        if i is None:
            break
        path, payload = body(i, False)
        w.write(request(path, payload))
        head, _ = await read_response(r)
        assert b" 200 " in head.split(b"\r\n")[0], head
    w.close()

async def main():
    results = []
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one_stream(i, results)) for i in range(streams)]
    await asyncio.sleep(0)
    queue = asyncio.Queue()
    for i in range(streams):
        queue.put_nowait(i)
    workers = [asyncio.create_task(prefill_worker(queue)) for _ in range(32)]
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    peak = await get(d_port, f"/sim/wait?min_running={streams}&timeout_ms=30000")
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    s = await get(d_port, "/sim/stats")
    ok = sum(1 for e, done in results if done)
    events = sum(e for e, _ in results)
    ratio = s["step_time_ratio"]
    print(f"streams completed: {ok}/{streams}, events {events}, wall {elapsed:.1f}s")
    print(f"all {streams} running at once: {'yes' if peak['running'] >= streams else 'no'} "
          f"(running={peak['running']})")
    print(f"decode steps measured: {s['measured_steps']}; avg model step {s['avg_model_step_ms']:.3f} ms, "
          f"avg measured step {s['avg_measured_step_ms']:.3f} ms, ratio {ratio:.3f}, "
          f"worst single step {s['max_step_ratio']:.2f}x")
    cpu = s["avg_cpu_step_ms"]
    print(f"simulator CPU per step {cpu:.3f} ms = {100 * cpu / max(s['avg_model_step_ms'], 1e-9):.0f}% "
          f"of the model step (below 100%: it keeps up when it has a core to itself)")
    print(f"generated tokens {s['generated_tokens']}, finished {s['finished']}, aborted {s['aborted']}, "
          f"failed {s['failed']}")
    verdict = ok == streams and ratio <= 1.10
    print("RESULT:", "PASS" if verdict else "FAIL", f"(measured/model = {ratio:.3f}, limit 1.10)")
    sys.exit(0 if verdict else 1)

asyncio.run(main())
EOF
