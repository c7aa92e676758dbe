#!/usr/bin/env python3
"""CPU time per streamed event of each process in the latency workload.

Starts a pdlb-sim prefill and decode (decode step --step-ms, no per-request cost), optionally a relay
in front of the decode (pdlb, or nginx with proxy_buffering off: bench/nginx/relay.conf.in), and runs pdlb-bench in closed loop:
--streams concurrent streams x --tokens events, --per-slot requests per stream slot. For every process
it reads utime+stime (/proc/PID/stat; the bench's own from wait4) before and after each run and divides
by the token events the bench received. Medians over --runs runs.

    bench/event_cpu.py --via direct --streams 512 --runs 3
    bench/event_cpu.py --via pdlb --sim /tmp/old/pdlb-sim --bench /tmp/old/pdlb-bench   # compare builds

It prints one line per run and a summary (microseconds of CPU per event), and with --json one JSON
object on the last line.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from run import Processes, start_nginx_relay  # bench/run.py, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = os.sysconf("SC_CLK_TCK")

def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def main():
    build = os.environ.get("PDLB_BUILD_DIR", os.path.join(ROOT, "build"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--via", choices=["direct", "pdlb", "nginx"], default="direct")
    ap.add_argument("--streams", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=30)
    ap.add_argument("--per-slot", type=int, default=4, help="requests per stream slot")
    ap.add_argument("--step-ms", type=float, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stamp", action="store_true", help="start the decode sim with --stamp-events")
    ap.add_argument("--sim", default=os.path.join(build, "pdlb-sim"))
    ap.add_argument("--bench", default=os.path.join(build, "pdlb-bench"))
    ap.add_argument("--pdlb", default=os.path.join(build, "pdlb"))
    ap.add_argument("--pdlb-threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="pdlb-event-cpu.")
    os.chmod(tmp, 0o755)
    procs = Processes(tmp)
    start = procs.start

    try:
        pre = procs.start_ready("prefill", [a.sim, "--role", "prefill", "--port", "0", "--bootstrap-port", "0",
                                            "--log-level", "warn"])
        pre_port, boot = pre.port, pre.bootstrap
        dec = procs.start_ready("decode", [a.sim, "--role", "decode", "--port", "0", "--step-base-ms", str(a.step_ms),
                                           "--step-per-req-ms", "0", "--max-running-requests", "16384",
                                           "--log-level", "warn"] + (["--stamp-events"] if a.stamp else []))
        dec_port = dec.port
        watched = {"prefill": pre, "decode": dec}
        pre_url, dec_url = f"http://127.0.0.1:{pre_port}", f"http://127.0.0.1:{dec_port}"
        if a.via == "pdlb":
            lb = procs.start_ready("pdlb", [a.pdlb, "--host", "127.0.0.1", "--port", "0", "--prefill", pre_url,
                                            "--prefill-bootstrap-ports", str(boot), "--decode", dec_url,
                                            "--log-interval", "0", "--threads", str(a.pdlb_threads)])
            port = lb.port
            target = ["--url", f"http://127.0.0.1:{port}"]
            watched["pdlb"] = lb
        else:
            decode = dec_url
            if a.via == "nginx":
                ng = start_nginx_relay(procs, tmp, "nginx", 1, dec_port)
                port = ng.port
                # CPU is counted for nginx's worker process, which the master forks after listening.
                kids = []
                for _ in range(200):
                    kids = subprocess.run(["pgrep", "-P", str(ng.pid)], capture_output=True,
                                          text=True).stdout.split()
                    if kids:
                        break
                    time.sleep(0.01)
                if not kids:
                    raise SystemExit("nginx relay: no worker process")
                ng_worker = type("W", (), {"pid": int(kids[0])})()
                watched["nginx"] = ng_worker
                decode = f"http://127.0.0.1:{port}"
            target = ["--direct-pd", "--prefill", pre_url, "--bootstrap-port", str(boot), "--decode", decode]
        load = ["--stream", "--concurrency", str(a.streams), "--requests", str(a.streams * a.per_slot),
                "--output-tokens", str(a.tokens), "--timeout", "120", "--json"]
        per_event = {k: [] for k in list(watched) + ["bench"]}
        runs = []
        for run in range(a.runs):
            before = {k: cpu_s(p.pid) for k, p in watched.items()}
            t0 = time.time()
            b = subprocess.Popen([a.bench] + target + load, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            # The bench's output is small (one JSON line); wait4 gives its own CPU time.
            _, status, ru = os.wait4(b.pid, 0)
            out = b.stdout.read().decode()
            err = b.stderr.read().decode()
            b.returncode = os.waitstatus_to_exitcode(status)
            wall = time.time() - t0
            after = {k: cpu_s(p.pid) for k, p in watched.items()}
            try:
                j = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise SystemExit(f"pdlb-bench failed ({b.returncode}): {err[-500:]}")
            events = j["output_tokens"]
            line = {"run": run + 1, "events": events, "failed": j["failed"], "wall_s": round(wall, 2),
                    "load": os.getloadavg()[0]}
            for k in watched:
                us = (after[k] - before[k]) / events * 1e6
                per_event[k].append(us)
                line[k + "_us"] = round(us, 2)
            us = (ru.ru_utime + ru.ru_stime) / events * 1e6
            per_event["bench"].append(us)
            line["bench_us"] = round(us, 2)
            for key in ("p99_itl_ms", "p99_delay_ms", "p99_event_latency_ms"):
                if key in j:
                    line[key] = round(j[key], 2)
            runs.append(line)
            print(json.dumps(line), file=sys.stderr, flush=True)
        summary = {k + "_us_per_event": round(statistics.median(v), 2) for k, v in per_event.items()}
        summary.update(via=a.via, streams=a.streams, tokens=a.tokens, runs=runs)
        if a.json:
            print(json.dumps(summary))
        else:
            print(f"via {a.via}, {a.streams} streams x {a.tokens} events, step {a.step_ms:g} ms, "
                  f"median of {a.runs}: CPU us per event: " +
                  ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in per_event.items()))
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
