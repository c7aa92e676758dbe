"""The three measurements of the seed's method, driven through pdlb: the prefill test, the decode
test (/slow_down, fill, release, read the decode logs) and the end-to-end verify.

Nothing here knows the simulator's settings: it measures whatever nodes sit behind the pdlb.
"""
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field

from pdlb_ratio import logparse
from pdlb_ratio.procs import ToolError, http_json

SEED = 14  # pdlb-bench --seed: repeatable Poisson arrivals


@dataclass
class Settings:
    bench: str  # pdlb-bench binary
    lb: str  # pdlb URL
    input_len: int
    output_len: int
    ttft_slo_ms: float
    tpot_slo_ms: float
    percentile: int  # 50, 90 or 99: which percentile must meet the SLOs
    window_s: float  # seconds of load per measured rate
    prefill_concurrency: int
    concurrency: int  # decode test: running requests per decode node
    out_dir: str
    admin_key: str | None = None
    log = print


def run_bench(s, name, args, samples=False, timeout=None):
    """pdlb-bench against pdlb with --json; returns its JSON (raises on a crash, not on failures)."""
    argv = [s.bench, "--url", s.lb, "--route", "generate", "--stream", "--json", "--seed", str(SEED),
            "--input-tokens", str(s.input_len), "--timeout", "3600", *args]
    if samples:
        argv.append("--samples")
    path = os.path.join(s.out_dir, name + ".json")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"pdlb-bench ({name}) did not finish in {timeout:.0f} s") from None
    if done.returncode not in (0, 2):
        raise ToolError(f"pdlb-bench ({name}) failed: {done.stderr.strip() or done.stdout.strip()}")
    result = json.loads(done.stdout)
    with open(path, "w") as fh:
        json.dump(result, fh)
    return result


def pct(result, what, p):
    return result.get(f"p{p}_{what}_ms" if p != 50 else f"median_{what}_ms", 0.0)


def window_rates(result):
    """Offered and achieved rates of an open-loop run, from its samples (pdlb-bench --samples).

    Both are taken between the 10th and the 90th percentile events, so the start (an empty system)
    and the drain after the last send do not count: offered from the send times, achieved from the
    completion times (send + E2E). A system that keeps up completes requests as fast as they come;
    one that falls behind completes them at its own, lower, rate.
    """
    sm = result.get("samples_ms", {})
    sends = sorted(sm.get("send", []))
    ends = sorted(t + e for t, e in zip(sm.get("send", []), sm.get("e2e", [])))

    def rate(times):
        if len(times) < 10:
            return 0.0
        lo, hi = len(times) // 10, len(times) - 1 - len(times) // 10
        span = (times[hi] - times[lo]) / 1000.0
        return (hi - lo) / span if span > 0 else 0.0

    return rate(sends), rate(ends)


# ------------------------------------------------------------------------------------------------
# Prefill test (seed): output length 1, so each request is a prefill plus the KV handshake.


@dataclass
class PrefillPoint:
    rate: float
    offered: float
    achieved: float
    ttft_p: float
    ttft_mean: float
    failed: int
    ok: bool


@dataclass
class PrefillResult:
    nodes: int
    saturation_rps: float
    points: list = field(default_factory=list)
    capacity_rps: float = 0.0  # all nodes: the highest rate that met the TTFT SLO
    per_node_rps: float = 0.0


def prefill_test(s, nodes):
    s.log(f"prefill test: saturation with {s.prefill_concurrency} requests in flight, output length 1")
    # The node is busy from the first request to the last, so a few more requests than the ones in
    # flight measure its rate; more would only make a slow node's run long.
    sat_n = s.prefill_concurrency + 32
    sat = run_bench(s, "prefill-saturation",
                    ["--concurrency", str(s.prefill_concurrency), "--requests", str(sat_n),
                     "--output-tokens", "1"])
    if sat.get("completed", 0) == 0:
        raise ToolError(f"prefill saturation run: no request completed ({sat.get('errors')})")
    x = sat["request_throughput"]
    s.log(f"  saturation: {x:.2f} req/s ({sat['completed']} requests, TTFT p{s.percentile} "
          f"{pct(sat, 'ttft', s.percentile):.0f} ms)")
    res = PrefillResult(nodes, x)

    def measure(rate):
        n = max(10, int(math.ceil(rate * s.window_s)))
        r = run_bench(s, f"prefill-rate-{rate:.3f}",
                      ["--request-rate", f"{rate:.4f}", "--exact-rate", "--requests", str(n), "--output-tokens", "1"],
                      samples=True)
        offered, achieved = window_rates(r)
        tp = pct(r, "ttft", s.percentile)
        ok = r.get("failed", 0) == 0 and tp <= s.ttft_slo_ms
        pt = PrefillPoint(rate, offered, achieved, tp, r.get("mean_ttft_ms", 0.0), r.get("failed", 0), ok)
        res.points.append(pt)
        s.log(f"  rate {rate:6.2f} req/s: TTFT p{s.percentile} {tp:7.0f} ms (SLO {s.ttft_slo_ms:.0f}), "
              f"failed {pt.failed}: {'within' if ok else 'over'} the SLO")
        return ok

    # From the saturation rate down, stop at the first rate within the SLO (TTFT grows with the
    # rate), then halve the gap to the lowest rate that missed it once.
    best, lowest_fail = 0.0, None
    for frac in (1.0, 0.95, 0.9, 0.8, 0.7, 0.5):
        rate = x * frac
        if measure(rate):
            best = rate
            break
        lowest_fail = rate
    if best == 0.0:
        raise ToolError(f"prefill test: even {x * 0.5:.2f} req/s misses the TTFT SLO of "
                        f"{s.ttft_slo_ms:.0f} ms; raise --ttft-slo or check the nodes")
    if lowest_fail is not None and lowest_fail - best > 0.02 * x:
        mid = (best + lowest_fail) / 2
        if measure(mid):
            best = mid
    # The curve for the report: two lighter loads, if the search did not measure three rates.
    for frac in (0.75, 0.5):
        if len(res.points) < 3:
            measure(best * frac)
    res.capacity_rps = best
    res.per_node_rps = best / nodes
    s.log(f"  prefill capacity within the SLO: {best:.2f} req/s, {res.per_node_rps:.2f} per node")
    return res


# ------------------------------------------------------------------------------------------------
# Decode test (seed, SGLang issue 6017): slow the decode nodes down, fill them, release, read logs.


@dataclass
class DecodeResult:
    nodes: int
    concurrency: int
    per_node_tok_s: list
    per_node_rps: float
    tpot_ms: float
    fill_s: float
    timeline: list  # (seconds from release, node index, last_gen_throughput, running)
    log_results: list
    warnings: list
    within_slo: bool  # TPOT at this concurrency meets --tpot-slo


def node_holding(url):
    """Requests a decode node holds (their KV received): running + queued.

    pdlb-sim reports them apart in /get_server_info sim_stats; SGLang's /get_load gives num_reqs.
    """
    st, info = http_json("GET", url + "/get_server_info")
    if st == 200 and isinstance(info, dict) and isinstance(info.get("sim_stats"), dict):
        ss = info["sim_stats"]
        return int(ss.get("running", 0)) + int(ss.get("queued", 0))
    st, load = http_json("GET", url + "/get_load")
    if st != 200 or not isinstance(load, list):
        raise ToolError(f"{url}/get_load answered {st}: {load}")
    return sum(int(x.get("num_reqs", 0)) for x in load)


def node_state(url):
    """(last_gen_throughput, requests on the node) from /get_server_info and /get_load."""
    st, info = http_json("GET", url + "/get_server_info")
    thr = 0.0
    if st == 200 and isinstance(info, dict):
        states = info.get("internal_states") or [{}]
        thr = float(sum(x.get("last_gen_throughput", 0.0) or 0.0 for x in states))
    st, load = http_json("GET", url + "/get_load")
    reqs = sum(int(x.get("num_reqs", 0)) for x in load) if st == 200 and isinstance(load, list) else -1
    return thr, reqs


def slow_down(s, seconds):
    headers = {"Authorization": f"Bearer {s.admin_key}"} if s.admin_key else None
    st, body = http_json("POST", s.lb + "/slow_down", {"forward_sleep_time": seconds}, headers=headers)
    if st != 200:
        raise ToolError(f"POST {s.lb}/slow_down answered {st}: {body}")
    return body


def decode_test(s, decode_urls, decode_logs, cards=1, fill_timeout=600.0, sleep_s=90.0):
    c = s.concurrency
    total = c * len(decode_urls)
    s.log(f"decode test: /slow_down {sleep_s:g} s through pdlb, fill {len(decode_urls)} decode node(s) "
          f"to {c} requests each, release")
    # Only what the logs get from now on counts: a node's log may hold earlier experiments.
    offsets = {i: os.path.getsize(p) for i, p in enumerate(decode_logs) if p and os.path.exists(p)}
    slow_down(s, sleep_s)
    argv = [s.bench, "--url", s.lb, "--route", "generate", "--stream", "--json", "--seed", str(SEED),
            "--input-tokens", str(s.input_len), "--output-tokens", str(s.output_len),
            "--concurrency", str(total), "--requests", str(total), "--timeout", "3600"]
    bench_out = open(os.path.join(s.out_dir, "decode-fill.json"), "w")
    bench = subprocess.Popen(argv, stdout=bench_out, stderr=subprocess.PIPE, text=True)
    released = False
    try:
        t0 = time.monotonic()
        filling = []  # (monotonic time, node, gen throughput, requests) while the nodes fill
        while True:
            held = [node_holding(u) for u in decode_urls]
            for i, u in enumerate(decode_urls):
                filling.append((time.monotonic(), i, *node_state(u)))
            if all(h >= c for h in held):
                break
            if bench.poll() is not None:
                raise ToolError(f"pdlb-bench ended while filling (status {bench.returncode}): "
                                f"{bench.stderr.read().strip()}")
            if time.monotonic() - t0 > fill_timeout:
                raise ToolError(f"decode nodes hold {held} after {fill_timeout:.0f} s, not {c} each")
            time.sleep(0.05)
        fill_s = time.monotonic() - t0
        s.log(f"  filled in {fill_s:.1f} s: {held} requests held; releasing")
        slow_down(s, None)
        released = True
        t_rel = time.monotonic()
        timeline = [(t - t_rel, i, thr, reqs) for (t, i, thr, reqs) in filling]
        while True:
            now = time.monotonic() - t_rel
            for i, u in enumerate(decode_urls):
                thr, reqs = node_state(u)
                timeline.append((now, i, thr, reqs))
            if bench.poll() is not None:
                break  # the last readings, taken after every request ended, show the drop
            time.sleep(0.1)
            if now > fill_timeout:
                raise ToolError("the decode nodes did not finish the filled requests in time")
        if bench.returncode not in (0, 2):
            raise ToolError(f"pdlb-bench (decode fill) failed: {bench.stderr.read().strip()}")
    finally:
        if not released:
            try:
                slow_down(s, None)
            except ToolError:
                pass
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        bench_out.close()
    with open(os.path.join(s.out_dir, "decode-fill.json")) as fh:
        fill_result = json.load(fh)
    if fill_result.get("failed", 0):
        raise ToolError(f"decode test: {fill_result['failed']} requests failed: {fill_result.get('errors')}")

    per_node, logs, warnings = [], [], []
    for i, u in enumerate(decode_urls):
        log = decode_logs[i] if i < len(decode_logs) else None
        if log:
            r = logparse.analyse(logparse.parse_files([log], {0: offsets.get(i, 0)}), c, cards)
            logs.append(r)
            warnings += r.warnings
            per_node.append(r.throughput)
            s.log(f"  {u}: {r.throughput:.1f} token/s at {c} running (log {log}: "
                  f"{len(r.windows[0].lines)} window lines), TPOT {r.tpot_ms:.1f} ms")
        else:
            # No log: the node's own reported gen throughput while it held c running requests.
            vals = [thr for (t, j, thr, reqs) in timeline if j == i and t > 0 and reqs >= c and thr > 0]
            if len(vals) < 2:
                raise ToolError(f"{u}: too few readings at {c} running requests; give --decode-log")
            per_node.append(sum(vals[1:]) / len(vals[1:]))
            s.log(f"  {u}: {per_node[-1]:.1f} token/s at {c} running (reported gen throughput)")
    mean_tok = sum(per_node) / len(per_node)
    tpot = 1000.0 * c / mean_tok
    rps = mean_tok / s.output_len
    within_slo = tpot <= s.tpot_slo_ms
    if not within_slo:
        warnings.append(f"TPOT {tpot:.1f} ms at {c} running requests is over the SLO "
                        f"({s.tpot_slo_ms:.0f} ms): this is no capacity within the SLO; measure again "
                        f"with a lower --concurrency")
    s.log(f"  decode capacity: {rps:.2f} req/s per node ({mean_tok:.1f} token/s / {s.output_len} "
          f"tokens), TPOT {tpot:.1f} ms (SLO {s.tpot_slo_ms:.0f})")
    for w in warnings:
        s.log(f"  warning: {w}")
    return DecodeResult(len(decode_urls), c, per_node, rps, tpot, fill_s, timeline, logs, warnings, within_slo)


# ------------------------------------------------------------------------------------------------
# Verify (seed's end-to-end test): open-loop load at the target rate through pdlb.


@dataclass
class VerifyResult:
    target_rps: float
    offered_rps: float
    achieved_rps: float
    completed: int
    failed: int
    ttft: dict
    tpot: dict
    passed: bool
    reasons: list
    samples: dict
    warnings: list


def verify(s, target_rps, max_concurrency=None):
    n = max(20, int(math.ceil(target_rps * s.window_s)))
    s.log(f"verify: {n} requests at {target_rps:.2f} req/s (Poisson) through pdlb, input "
          f"{s.input_len}, output {s.output_len}")
    args = ["--request-rate", f"{target_rps:.4f}", "--exact-rate", "--requests", str(n), "--output-tokens", str(s.output_len)]
    r = run_bench(s, "verify", args, samples=True)
    offered, achieved = window_rates(r)
    p = s.percentile
    ttft = {"mean": r.get("mean_ttft_ms", 0.0), "p50": r.get("median_ttft_ms", 0.0),
            "p90": r.get("p90_ttft_ms", 0.0), "p99": r.get("p99_ttft_ms", 0.0)}
    tpot = {"mean": r.get("mean_tpot_ms", 0.0), "p50": r.get("median_tpot_ms", 0.0),
            "p90": r.get("p90_tpot_ms", 0.0), "p99": r.get("p99_tpot_ms", 0.0)}
    key = "p50" if p == 50 else f"p{p}"
    reasons = []
    if r.get("failed", 0):
        reasons.append(f"{r['failed']} requests failed: {r.get('errors')}")
    if ttft[key] > s.ttft_slo_ms:
        reasons.append(f"TTFT {key} {ttft[key]:.0f} ms > SLO {s.ttft_slo_ms:.0f} ms")
    if tpot[key] > s.tpot_slo_ms:
        reasons.append(f"TPOT {key} {tpot[key]:.1f} ms > SLO {s.tpot_slo_ms:.0f} ms")
    warnings = []
    if offered > 0 and achieved < 0.9 * offered:
        # Not a failure by itself (the SLOs decide, as in the prefill test), but worth knowing: the
        # cluster ran at its limit, and a longer run would show the latencies growing.
        warnings.append(f"achieved {achieved:.2f} req/s < 90 % of offered {offered:.2f} req/s: a backlog "
                        f"grew during the run; the cluster is at its limit at this rate")
    passed = not reasons
    s.log(f"  target {target_rps:.2f} req/s, offered {offered:.2f}, achieved {achieved:.2f}; "
          f"TTFT {key} {ttft[key]:.0f} ms (SLO {s.ttft_slo_ms:.0f}), TPOT {key} {tpot[key]:.1f} ms "
          f"(SLO {s.tpot_slo_ms:.0f}): {'PASS' if passed else 'FAIL'}")
    for why in reasons:
        s.log(f"  FAIL: {why}")
    for w in warnings:
        s.log(f"  warning: {w}")
    return VerifyResult(target_rps, offered, achieved, r.get("completed", 0), r.get("failed", 0),
                        ttft, tpot, passed, reasons, r.get("samples_ms", {}), warnings)
