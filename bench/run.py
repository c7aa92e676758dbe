#!/usr/bin/env python3
"""Side-by-side benchmark of pdlb against direct-to-worker, nginx and the seed's minilb.

Run it through bench/run.sh (which installs packages and builds first); see docs/benchmarks.md.
Everything listens on 127.0.0.1 only, and everything started here is stopped on exit.
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The seed's minilb, to compare with: $PDLB_MINILB, or ../shared/anchors/minilb beside the checkout.
# Without it the minilb column is left out (a clone on its own has no ../shared).
MINILB = os.environ.get("PDLB_MINILB") or os.path.normpath(
    os.path.join(ROOT, "..", "shared", "anchors", "minilb", "run-minilb"))

# Throughput workloads: wrk against stub workers. "pair" names the stub prefill/decode servers.
THROUGHPUT = [
    dict(name="small", title="small /generate JSON, 64 conns", conns=64, pair=("json", "json"),
         proxy="json", bench=["--output-tokens", "16"],
         targets=dict(minilb=30, nginx=0.4)),
    dict(name="large", title="8k-token input_ids body (51 KB), 64 conns", conns=64, pair=("json", "json"),
         proxy="json", bench=["--input-tokens", "8192", "--output-tokens", "16"],
         targets=dict(minilb=30, nginx=0.4)),
    dict(name="sse", title="SSE stream of 1,000 events (114 KB), 32 conns", conns=32, pair=("json", "sse"),
         proxy="sse", bench=["--stream", "--output-tokens", "1000"],
         targets=dict(minilb=50, nginx=0.5)),
    dict(name="logprob", title="stream + return_logprob, 8k input logprobs merged into each of 16 events, 32 conns",
         conns=32, pair=("lp8k", "lpdecode"), proxy=None,
         bench=["--stream", "--return-logprob", "--input-tokens", "8192", "--output-tokens", "16"],
         targets=dict(minilb=20)),
    dict(name="logprob4k", title="as logprob, 4k input logprobs (the largest minilb can relay), 32 conns",
         conns=32, pair=("lp4k", "lpdecode"), proxy=None,
         bench=["--stream", "--return-logprob", "--input-tokens", "4096", "--output-tokens", "16"],
         targets=dict(minilb=20)),
]
THROUGHPUT_NAMES = [w["name"] for w in THROUGHPUT]
LATENCY_NAMES = ["latency", "streams"]
ALL_NAMES = THROUGHPUT_NAMES + LATENCY_NAMES

# minilb reads the prefill stream line by line with aiohttp, whose line limit is 128 KB: an event
# carrying 8k input logprobs (~190 KB) makes it abort the stream (aiohttp LineTooLong).
EXPECTED_FAILURES = {
    ("logprob", "minilb"): "aborts the stream: aiohttp LineTooLong on the 190 KB prefill event (line limit 128 KB)",
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_port(port, timeout=30.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_ready(path, proc, timeout=30.0):
    """Waits for the --ready-file of pdlb or pdlb-sim and returns what it says ({"host", "port"}, and
    "bootstrap_port" from a prefill pdlb-sim). The programs write it beside and rename it, so it is
    complete once it exists; the 20 ms wait between looks is the only polling."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before it was ready")
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args[0]} not ready after {timeout}s (no {path})")


def start_nginx_relay(procs, tmp, name, workers, decode_port):
    """nginx as a single-hop relay in front of a decode sim (bench/nginx/relay.conf.in), started with
    `procs` (a Processes) in `tmp`; the returned process has .port, the relay's port."""
    port = free_ports(1)[0]
    os.makedirs(os.path.join(tmp, "tmp"), exist_ok=True)
    with open(os.path.join(HERE, "nginx", "relay.conf.in")) as f:
        conf = f.read()
    for k, v in {"@DIR@": tmp, "@WORKERS@": workers, "@PORT_DECODE@": decode_port, "@PORT_RELAY@": port}.items():
        conf = conf.replace(k, str(v))
    path = os.path.join(tmp, name + ".conf")
    with open(path, "w") as f:
        f.write(conf)
    p = procs.start(name, ["nginx", "-p", tmp, "-c", path, "-e", os.path.join(tmp, name + "-error.log")])
    wait_port(port, proc=p)
    p.port = port
    return p


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """preexec_fn: the child gets SIGKILL when the process that started it dies, even by SIGKILL,
    so that no worker or proxy outlives a killed benchmark or soak."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Processes:
    """Everything a script starts (bench/run.py, bench/event_cpu.py, scripts/soak.py), each in its own
    process group and killed with its parent, stopped in reverse order."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, argv, env=None, log=None, err_log=None):
        """Starts `argv`; its output is appended to `log` (default: NAME.log in the log directory),
        its standard error to `err_log` if given, else to the same file."""
        path = log or os.path.join(self.logdir, name + ".log")
        out = open(path, "ab")
        err = open(err_log, "ab") if err_log and err_log != path else subprocess.STDOUT
        try:
            p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env, preexec_fn=die_with_parent)
        finally:
            out.close()
            if err is not subprocess.STDOUT:
                err.close()
        p.log_path = path
        p.name = name
        self.procs.append(p)
        return p

    def start_ready(self, name, argv, timeout=30.0):
        """Starts pdlb or pdlb-sim with --ready-file and waits for it; the process gets .port (and
        .bootstrap for a prefill worker)."""
        path = os.path.join(self.logdir, name + ".ready")
        p = self.start(name, list(argv) + ["--ready-file", path])
        ready = wait_ready(path, p, timeout)
        p.port = ready["port"]
        p.bootstrap = ready.get("bootstrap_port")
        return p

    def stop(self, p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


def vm_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) / 1024.0  # MB
    return out


def group_cpu_seconds(pgid):
    """(user, system) CPU seconds used so far by the live processes of process group `pgid` (a
    contender started by Processes: pdlb, or nginx or minilb with their workers)."""
    user = system = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(12) stime(13)
            user += int(fields[11])
            system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def parse_wrk(text):
    r = {"rps": 0.0, "p50_ms": None, "errors": 0, "requests": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if m:
        v = float(m.group(1))
        r["p50_ms"] = v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        r["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
    return r


def fmt_rate(v):
    if v is None:
        return "-"
    if v >= 10000:
        return f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build_dir)
        self.pdlb = self.binary("pdlb", "")
        self.sim = self.binary("pdlb-sim", "src/sim")
        self.bench = self.binary("pdlb-bench", "src/bench")
        # --baseline: a second pdlb binary (e.g. the previous commit's), run beside this one as the
        # contender "pdlb-base", alternating with it in every run, for a same-run A/B.
        self.baseline = os.path.abspath(args.baseline) if args.baseline else None
        for b in (self.pdlb, self.sim, self.bench) + ((self.baseline,) if self.baseline else ()):
            if not os.access(b, os.X_OK):
                raise SystemExit(f"missing {b}: build first (bench/run.sh does)")
        self.tmp = tempfile.mkdtemp(prefix="pdlb-bench.")
        # nginx workers run as an unprivileged user and must read the payload files.
        os.chmod(self.tmp, 0o755)
        self.logdir = os.path.join(self.tmp, "logs")
        os.makedirs(self.logdir)
        os.makedirs(os.path.join(self.tmp, "tmp"))
        self.procs = Processes(self.logdir)
        self.failures = []  # things that make the run (and the smoke) fail
        self.results = {}   # (workload, contender) -> list of per-run dicts
        self.validation = {}  # (workload, contender) -> "ok" | reason
        self.extra = {}

    def binary(self, name, subdir):
        # Executables land in the build dir's top level; older trees put them beside their sources.
        for path in (os.path.join(self.build, name), os.path.join(self.build, subdir, name)):
            if os.access(path, os.X_OK):
                return path
        return os.path.join(self.build, name)

    # ---------------------------------------------------------------- set-up

    def bench_json(self, argv, timeout):
        cmd = [self.bench, "--json"] + argv
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        try:
            j = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"pdlb-bench gave no result (exit {p.returncode}): {p.stderr[-500:]}")
        j["_exit"] = p.returncode
        j["_stderr"] = p.stderr[-2000:]
        return j

    def start_stubs(self):
        a = self.args
        payload = os.path.join(self.tmp, "payload")
        subprocess.run([sys.executable, os.path.join(HERE, "gen_stubs.py"), payload,
                        "--sse-events", "1000", "--lp-input", "8192", "--lp4k-input", "4096",
                        "--lp-events", "16"], check=True)
        ports = free_ports(7)
        self.stub_port = dict(json=ports[0], sse=ports[1], lp8k=ports[2], lp4k=ports[3], lpdecode=ports[4])
        self.proxy_port = dict(json=ports[5], sse=ports[6])
        with open(os.path.join(payload, "small.json")) as f:
            small = f.read()
        fields = {
            "@DIR@": self.tmp, "@PORT_JSON@": self.stub_port["json"], "@PORT_SSE@": self.stub_port["sse"],
            "@PORT_LP_PREFILL@": self.stub_port["lp8k"], "@PORT_LP4K_PREFILL@": self.stub_port["lp4k"],
            "@PORT_LP_DECODE@": self.stub_port["lpdecode"], "@SSE_EVENTS@": 1000, "@SMALL_JSON@": small,
            "@PROXY_JSON@": self.proxy_port["json"], "@PROXY_SSE@": self.proxy_port["sse"],
        }
        for name, workers in (("stubs", a.stub_workers), ("proxy", a.nginx_workers)):
            with open(os.path.join(HERE, "nginx", name + ".conf.in")) as f:
                conf = f.read()
            for k, v in dict(fields, **{"@WORKERS@": workers}).items():
                conf = conf.replace(k, str(v))
            path = os.path.join(self.tmp, name + ".conf")
            with open(path, "w") as f:
                f.write(conf)
            p = self.procs.start("nginx-" + name, ["nginx", "-p", self.tmp, "-c", path, "-e",
                                                   os.path.join(self.tmp, name + "-error.log")])
            for port in (self.stub_port.values() if name == "stubs" else self.proxy_port.values()):
                wait_port(port, proc=p)
        log(f"nginx stubs on {self.stub_port}, nginx proxy ({a.nginx_workers} worker) on {self.proxy_port}")

    def start_pdlb(self, name, prefill, bootstrap, decode, extra=(), binary=None):
        args = ["--host", "127.0.0.1", "--prefill", prefill, "--prefill-bootstrap-ports", str(bootstrap),
                "--decode", decode, "--log-interval", "0", "--threads", str(self.args.pdlb_threads), *extra]
        if binary and binary != self.pdlb:
            # A --baseline binary may predate --ready-file: give it a free port and wait for it.
            port = free_ports(1)[0]
            p = self.procs.start(name, [binary, "--port", str(port), *args])
            wait_port(port, proc=p)
            p.port = port
            return p
        return self.procs.start_ready(name, [self.pdlb, "--port", "0", *args])

    def start_minilb(self, name, prefill, bootstrap, decode):
        port = free_ports(1)[0]
        p = self.procs.start(name, [MINILB, "--host", "127.0.0.1", "--port", str(port), "--prefill", prefill,
                                    "--prefill-bootstrap-ports", str(bootstrap), "--decode", decode])
        wait_port(port, timeout=60, proc=p)
        p.port = port
        return p

    def start_sims(self, tag, step_ms, max_running, stamp=False):
        pre = self.procs.start_ready(f"sim-prefill-{tag}", [self.sim, "--role", "prefill", "--port", "0",
                                                            "--bootstrap-port", "0", "--log-level", "warn"])
        dec = self.procs.start_ready(f"sim-decode-{tag}", [self.sim, "--role", "decode", "--port", "0",
                                                           "--step-base-ms", str(step_ms), "--step-per-req-ms", "0",
                                                           "--max-running-requests", str(max_running),
                                                           "--log-level", "warn"] + (["--stamp-events"] if stamp else []))
        return pre, dec

    def start_relay(self, name, decode_port):
        return start_nginx_relay(self.procs, self.tmp, name, self.args.nginx_workers, decode_port)

    def start_throughput_contenders(self, names):
        url = lambda k: f"http://127.0.0.1:{self.stub_port[k]}"
        self.urls = {}
        self.pgids = {}  # (pair, contender) -> process group, for its CPU time per request
        pairs = sorted({w["pair"] for w in THROUGHPUT if w["name"] in names})
        for pair in pairs:
            tag = "-".join(pair)
            if "pdlb" in self.args.contenders:
                p = self.start_pdlb("pdlb-" + tag, url(pair[0]), 8998, url(pair[1]))
                self.urls[(pair, "pdlb")] = f"http://127.0.0.1:{p.port}"
                self.pgids[(pair, "pdlb")] = p.pid
            if "pdlb-base" in self.args.contenders:
                p = self.start_pdlb("pdlb-base-" + tag, url(pair[0]), 8998, url(pair[1]), binary=self.baseline)
                self.urls[(pair, "pdlb-base")] = f"http://127.0.0.1:{p.port}"
                self.pgids[(pair, "pdlb-base")] = p.pid
            if "minilb" in self.args.contenders:
                p = self.start_minilb("minilb-" + tag, url(pair[0]), 8998, url(pair[1]))
                self.urls[(pair, "minilb")] = f"http://127.0.0.1:{p.port}"
        log(f"contenders up: {sorted(set(c for _, c in self.urls))}")

    # ---------------------------------------------------------------- throughput

    def contender_url(self, w, c):
        if c == "direct":
            return None if w["proxy"] is None else f"http://127.0.0.1:{self.stub_port[w['pair'][1]]}"
        if c == "nginx":
            return None if w["proxy"] is None else f"http://127.0.0.1:{self.proxy_port[w['proxy']]}"
        return self.urls.get((w["pair"], c))

    def validate(self, w, c, url):
        """Every contender must answer the workload correctly (pdlb-bench checks each response)."""
        n = self.args.validate_requests
        j = self.bench_json(["--url", url, "--concurrency", str(min(8, n)), "--requests", str(n),
                             "--timeout", "60"] + w["bench"], timeout=600)
        ok = j["_exit"] == 0 and j["failed"] == 0 and j["completed"] == n
        reason = "ok" if ok else f"{j['failed']} of {n} failed: {json.dumps(j['errors'])[:300]}"
        self.validation[(w["name"], c)] = reason
        expected = EXPECTED_FAILURES.get((w["name"], c))
        if not ok and not expected:
            self.failures.append(f"{w['name']}/{c}: invalid responses: {reason}")
        if ok and expected:
            log(f"note: {w['name']}/{c} passed although expected to fail ({expected})")
        log(f"validate {w['name']:<9} {c:<7} {reason}")
        return ok

    def wrk(self, w, c, url, body_path):
        a = self.args
        cmd = ["wrk", "-t1", f"-c{w['conns']}", f"-d{a.duration:g}s", "--timeout", "30s", "--latency",
               "-s", os.path.join(HERE, "post.lua"), url + "/generate"]
        pgid = getattr(self, "pgids", {}).get((w["pair"], c))
        cpu_before = group_cpu_seconds(pgid) if pgid else None
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, WRK_BODY=body_path),
                           timeout=a.duration + 120)
        r = parse_wrk(p.stdout)
        r["raw"] = p.stdout
        if pgid and r["requests"]:
            # CPU time per request: steadier than throughput on a shared machine (a contender that
            # waits for the CPU loses throughput, not CPU time). Clock ticks: 10 ms resolution.
            cpu_after = group_cpu_seconds(pgid)
            r["cpu_user_us_per_req"] = (cpu_after[0] - cpu_before[0]) * 1e6 / r["requests"]
            r["cpu_sys_us_per_req"] = (cpu_after[1] - cpu_before[1]) * 1e6 / r["requests"]
            r["cpu_us_per_req"] = r["cpu_user_us_per_req"] + r["cpu_sys_us_per_req"]
        if p.returncode != 0 or "Requests/sec" not in p.stdout:
            self.failures.append(f"{w['name']}/{c}: wrk failed ({p.returncode}): {p.stderr[-300:]}")
        elif r["requests"] == 0:
            # A slow contender may finish nothing in a short (smoke) run; validation already showed
            # that it answers correctly, so this is not an error, only no figure.
            log(f"note: {w['name']}/{c}: no response completed in {a.duration:g} s")
            r["rps"] = None
        elif r["errors"]:
            self.failures.append(f"{w['name']}/{c}: wrk saw {r['errors']} errors")
        return r

    def run_throughput(self, names):
        a = self.args
        bodies = {}
        for w in THROUGHPUT:
            if w["name"] not in names:
                continue
            path = os.path.join(self.tmp, f"body-{w['name']}.json")
            with open(path, "w") as f:
                f.write(subprocess.run([self.bench, "--print-body"] + w["bench"], capture_output=True,
                                       text=True, check=True).stdout)
            bodies[w["name"]] = path
        for w in THROUGHPUT:
            if w["name"] not in names:
                continue
            valid = {}
            for c in a.contenders:
                url = self.contender_url(w, c)
                if url is None:
                    continue
                valid[c] = self.validate(w, c, url)
            for run in range(a.runs):
                # Every other run in reverse order, so that none always runs first (a warm cache or
                # a quieter moment after a pause would favour it).
                for c in (a.contenders if run % 2 == 0 else list(reversed(a.contenders))):
                    url = self.contender_url(w, c)
                    if url is None or not valid.get(c):
                        continue
                    r = self.wrk(w, c, url, bodies[w["name"]])
                    self.results.setdefault((w["name"], c), []).append(r)
                    log(f"run {run + 1}/{a.runs} {w['name']:<9} {c:<7} {fmt_rate(r['rps']):>7} req/s  "
                        f"p50 {fmt_ms(r['p50_ms'])} ms  errors {r['errors']}")

    # ---------------------------------------------------------------- latency

    def run_latency(self):
        """Streams at one event per 20 ms: what a proxy adds to each event's one-way latency.

        The decode sim stamps every event with its write time (--stamp-events: meta_info.sim_write_ns,
        CLOCK_MONOTONIC ns); pdlb-bench subtracts it from the time its read of the event completed.
        Contenders: direct (pdlb-bench --direct-pd: no proxy hop), nginx (the same, with the decode
        half through an nginx relay: one best-in-class hop) and pdlb (both halves through it).
        """
        a = self.args
        pre, dec = self.start_sims("latency", 20, 8192, stamp=True)
        prefill_url = f"http://127.0.0.1:{pre.port}"
        started = []
        contenders = {"direct": ["--direct-pd", "--prefill", prefill_url, "--bootstrap-port", str(pre.bootstrap),
                                 "--decode", f"http://127.0.0.1:{dec.port}"]}
        if "nginx" in a.contenders:
            relay = self.start_relay("nginx-relay", dec.port)
            started.append(relay)
            contenders["nginx"] = ["--direct-pd", "--prefill", prefill_url, "--bootstrap-port", str(pre.bootstrap),
                                   "--decode", f"http://127.0.0.1:{relay.port}"]
        if "pdlb" in a.contenders:
            lb = self.start_pdlb("pdlb-latency", prefill_url, pre.bootstrap, f"http://127.0.0.1:{dec.port}")
            started.append(lb)
            contenders["pdlb"] = ["--url", f"http://127.0.0.1:{lb.port}"]
        for n in a.latency_streams:
            load = ["--stream", "--concurrency", str(n), "--requests", str(n * 2),
                    "--output-tokens", str(a.latency_tokens), "--timeout", "120"]
            for run in range(a.runs):
                for c, target in contenders.items():
                    j = self.bench_json(target + load, timeout=900)
                    self.results.setdefault((f"latency{n}", c), []).append(j)
                    if j["_exit"] != 0 or j["failed"]:
                        self.failures.append(f"latency{n}/{c}: {j['failed']} failed: {json.dumps(j['errors'])[:300]}")
                    elif not j.get("event_latency_samples"):
                        self.failures.append(f"latency{n}/{c}: no event carried sim_write_ns (pdlb-sim --stamp-events)")
                    log(f"run {run + 1}/{a.runs} latency {n:>4} streams {c:<7} ok {j['completed']} failed {j['failed']}  "
                        f"event p50/p99 {j.get('median_event_latency_ms', 0):.3f}/{j.get('p99_event_latency_ms', 0):.3f} ms  "
                        f"ITL p50/p99 {j['median_itl_ms']:.2f}/{j['p99_itl_ms']:.2f} ms  "
                        f"delay p99 {j['p99_delay_ms']:.2f} ms  jitter p99 {j['p99_jitter_ms']:.2f} ms  "
                        f"TTFT p99 {j['p99_ttft_ms']:.1f} ms")
        for p in reversed(started + [dec, pre]):
            self.procs.stop(p)

    def run_streams(self):
        """5,000 concurrent open streams through one fresh pdlb: all served whole, and its peak RSS.

        With --baseline, the baseline binary gets the same load in each run, each in a fresh process.
        """
        a = self.args
        pre, dec = self.start_sims("streams", a.streams_step_ms, 16384)
        binaries = [("pdlb", self.pdlb)] + ([("pdlb-base", self.baseline)] if self.baseline else [])
        for run in range(a.runs):
            for name, binary in binaries:
                lb = self.start_pdlb(f"{name}-streams-{run}", f"http://127.0.0.1:{pre.port}", pre.bootstrap,
                                     f"http://127.0.0.1:{dec.port}", binary=binary)
                before = vm_status(lb.pid)
                j = self.bench_json(["--url", f"http://127.0.0.1:{lb.port}", "--stream", "--concurrency",
                                     str(a.streams), "--requests", str(a.streams), "--output-tokens",
                                     str(a.streams_tokens), "--timeout", "120", "--connect-timeout", "60"], timeout=900)
                vm = vm_status(lb.pid)
                j["vm_hwm_mb"], j["vm_rss_mb"], j["vm_rss_before_mb"] = vm["VmHWM"], vm["VmRSS"], before["VmRSS"]
                self.results.setdefault(("streams", name), []).append(j)
                if j["_exit"] != 0 or j["failed"] or j["completed"] != a.streams:
                    self.failures.append(f"streams/{name}: {j['completed']} of {a.streams} whole, "
                                         f"{json.dumps(j['errors'])[:300]}")
                log(f"run {run + 1}/{a.runs} streams   {name:<9} ok {j['completed']}/{a.streams} "
                    f"peak in flight {j.get('peak_in_flight')}  VmHWM {vm['VmHWM']:.1f} MB  "
                    f"E2E p50 {j['median_e2e_ms']:.0f} ms")
                self.procs.stop(lb)
        for p in (dec, pre):
            self.procs.stop(p)

    def ab_table(self, names):
        """pdlb against --baseline, workload by workload: medians, and the median of per-run ratios."""
        rows = ["| workload | pdlb | pdlb-base | pdlb / base (median of runs) | CPU µs per request, pdlb / base "
                "(medians) |", "|---|---|---|---|---|"]
        for w in THROUGHPUT:
            new, old = self.results.get((w["name"], "pdlb"), []), self.results.get((w["name"], "pdlb-base"), [])
            if w["name"] not in names or not new or not old:
                continue
            ratios = [n["rps"] / o["rps"] for n, o in zip(new, old) if n.get("rps") and o.get("rps")]
            cpu_new = [r["cpu_us_per_req"] for r in new if r.get("cpu_us_per_req")]
            cpu_old = [r["cpu_us_per_req"] for r in old if r.get("cpu_us_per_req")]
            cpu = f"{median(cpu_new):.1f} / {median(cpu_old):.1f}" if cpu_new and cpu_old else "-"
            rows.append(f"| {w['title']} | {fmt_rate(median([r['rps'] for r in new]))} req/s | "
                        f"{fmt_rate(median([r['rps'] for r in old]))} req/s | "
                        f"{median(ratios):.3f}x | {cpu} |" if ratios else f"| {w['title']} | - | - | - | - |")
        new, old = self.results.get(("streams", "pdlb"), []), self.results.get(("streams", "pdlb-base"), [])
        if new and old:
            rows.append(f"| {self.args.streams} open streams, VmHWM (worst run) | {max(r['vm_hwm_mb'] for r in new):.0f} MB | "
                        f"{max(r['vm_hwm_mb'] for r in old):.0f} MB | "
                        f"{max(r['vm_hwm_mb'] for r in new) / max(r['vm_hwm_mb'] for r in old):.3f}x | - |")
        return "\n".join(rows)

    # ---------------------------------------------------------------- report

    def table(self, names):
        a = self.args
        cols = ["workload", "direct", f"nginx ({a.nginx_workers} worker)", "minilb",
                f"pdlb ({a.pdlb_threads} thread)", "pdlb / minilb", "pdlb / nginx", "target", "met"]
        rows = []
        for w in THROUGHPUT:
            if w["name"] not in names:
                continue
            cells = [w["title"]]
            med = {}
            for c in ("direct", "nginx", "minilb", "pdlb"):
                runs = self.results.get((w["name"], c))
                v = self.validation.get((w["name"], c))
                if runs and median([r["rps"] for r in runs]) is None:
                    cells.append(f"no response completed in {a.duration:g} s")
                elif runs:
                    med[c] = median([r["rps"] for r in runs])
                    cells.append(f"{fmt_rate(med[c])} req/s, p50 {fmt_ms(median([r['p50_ms'] for r in runs]))} ms")
                elif v is not None and v != "ok":
                    cells.append("fails" + (f" ({EXPECTED_FAILURES[(w['name'], c)]})"
                                            if (w["name"], c) in EXPECTED_FAILURES else f": {v[:80]}"))
                else:
                    cells.append("-")
            met = []
            for ref in ("minilb", "nginx"):
                ratios = []
                for i in range(a.runs):
                    try:
                        ratios.append(self.results[(w["name"], "pdlb")][i]["rps"] /
                                      self.results[(w["name"], ref)][i]["rps"])
                    except (KeyError, IndexError, ZeroDivisionError, TypeError):
                        pass
                r = median(ratios)
                cells.append(f"{r:.2f}x" if r is not None else "-")
                t = w["targets"].get(ref)
                if t is not None and r is not None:
                    met.append(r >= t)
            cells.append(", ".join(f">= {v}x {k}" for k, v in w["targets"].items()))
            cells.append("yes" if met and all(met) else "no" if met else "n/a")
            rows.append(cells)
        for n in (a.latency_streams if "latency" in names else []):
            runs = {c: self.results.get((f"latency{n}", c), []) for c in ("direct", "nginx", "pdlb")}
            d = runs["direct"]
            if not d or not (runs["nginx"] or runs["pdlb"]):
                continue

            def added(c, key="p99_event_latency_ms", ref="direct"):
                """Median over runs of (contender - reference) in the same run."""
                return median([cj.get(key) - rj.get(key) for cj, rj in zip(runs[c], runs[ref])
                               if cj.get(key) is not None and rj.get(key) is not None])

            def lat(c):
                m = lambda k: median([r.get(k) for r in runs[c]])
                cell = (f"event p50/p99 {m('median_event_latency_ms'):.2f}/{m('p99_event_latency_ms'):.2f} ms"
                        if m("p99_event_latency_ms") is not None else "no event latency")
                if c != "direct" and added(c) is not None:
                    cell += f" (p99 {added(c):+.2f} ms over direct)"
                return (cell + f"; ITL p50/p99 {m('median_itl_ms'):.1f}/{m('p99_itl_ms'):.1f} ms, "
                        f"delay p99 {m('p99_delay_ms'):.1f} ms, jitter p99 {m('p99_jitter_ms'):.1f} ms")

            pdlb_added = added("pdlb") if runs["pdlb"] else None
            vs_nginx = added("pdlb", ref="nginx") if runs["pdlb"] and runs["nginx"] else None
            rows.append([f"added latency per event, {n} streams x {a.latency_tokens} events at 1 per 20 ms "
                         f"(pdlb-sim)", "direct PD: " + lat("direct"),
                         lat("nginx") if runs["nginx"] else "-", "-",
                         lat("pdlb") if runs["pdlb"] else "-", "-",
                         f"p99 event latency {vs_nginx:+.2f} ms" if vs_nginx is not None else "-",
                         "p99 event latency <= 1 ms over direct",
                         "n/a" if pdlb_added is None else
                         f"{'yes' if pdlb_added <= 1.0 else 'no'} ({pdlb_added:+.2f} ms)"])
        if "streams" in names and ("streams", "pdlb") in self.results:
            s = self.results[("streams", "pdlb")]
            whole = min(r["completed"] for r in s)
            hwm = max(r["vm_hwm_mb"] for r in s)
            rows.append([f"{a.streams} concurrent open streams", "-", "-", "-",
                         f"{whole}/{a.streams} whole (worst run), peak in flight "
                         f"{min(r.get('peak_in_flight', 0) for r in s)}, VmHWM {hwm:.0f} MB",
                         "-", "-", "all whole; RSS <= 150 MB",
                         "yes" if whole == a.streams and hwm <= 150 else "no"])
        if "minilb" not in a.contenders:
            # Without minilb (not found, or not asked for) its two columns would only hold dashes.
            drop = {cols.index("minilb"), cols.index("pdlb / minilb")}
            cols = [c for i, c in enumerate(cols) if i not in drop]
            rows = [[c for i, c in enumerate(r) if i not in drop] for r in rows]
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(out)

    def machine(self):
        cpu = "unknown"
        try:
            with open("/proc/cpuinfo") as f:
                m = re.search(r"model name\s*:\s*(.*)", f.read())
                cpu = m.group(1) if m else cpu
        except OSError:
            pass
        nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        return (f"nproc {os.cpu_count()}, {cpu}, Linux {platform.release()}, {nginx_v}, "
                f"{wrk_v[0] if wrk_v else 'wrk'}, pdlb commit {commit}")


def main():
    ap = argparse.ArgumentParser(description="pdlb side-by-side benchmark (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="1 run, 3 s per measurement, smaller latency loads")
    ap.add_argument("--smoke", action="store_true",
                    help="CI smoke: every contender and workload exercised briefly; checks correctness only")
    ap.add_argument("--runs", type=int, help="measurements per workload and contender (default 3)")
    ap.add_argument("--duration", type=float, help="seconds per wrk measurement (default 10)")
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(ALL_NAMES))
    ap.add_argument("--contenders", default="direct,nginx,minilb,pdlb")
    ap.add_argument("--nginx-workers", default="1", help="worker_processes of the nginx proxy (1 or auto)")
    ap.add_argument("--stub-workers", default="auto", help="worker_processes of the nginx stub workers")
    ap.add_argument("--pdlb-threads", type=int, default=1)
    ap.add_argument("--latency-streams", dest="latency_streams_opt",
                    help="comma-separated concurrent stream counts of the latency workload (default 256,1024)")
    ap.add_argument("--build-dir", default=os.environ.get("PDLB_BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--results", default=os.path.join(HERE, "results", "latest.md"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--baseline", help="another pdlb binary to run beside this one (contender pdlb-base), "
                                       "alternating in every run: a same-run A/B")
    a = ap.parse_args()

    a.runs = a.runs or (1 if a.quick or a.smoke else 3)
    a.duration = a.duration or (1 if a.smoke else 3 if a.quick else 10)
    a.validate_requests = 16 if a.smoke else 32
    a.latency_streams, a.latency_tokens = ([64], 10) if a.smoke else ([256, 1024], 30)
    if a.latency_streams_opt:
        try:
            a.latency_streams = [int(x) for x in a.latency_streams_opt.split(",") if x.strip()]
        except ValueError:
            raise SystemExit(f"--latency-streams: comma-separated integers, not {a.latency_streams_opt!r}")
        if not a.latency_streams or min(a.latency_streams) < 1:
            raise SystemExit("--latency-streams: give at least one count >= 1")
    a.streams, a.streams_tokens, a.streams_step_ms = (500, 5, 100) if a.smoke else (5000, 20, 200)
    a.contenders = [c for c in a.contenders.split(",") if c]
    if a.baseline and "pdlb-base" not in a.contenders:
        a.contenders.append("pdlb-base")
    if "minilb" in a.contenders and not os.access(MINILB, os.X_OK):
        log(f"minilb left out: {MINILB} not found (set PDLB_MINILB to the seed's run-minilb to compare with it)")
        a.contenders.remove("minilb")
    names = a.only.split(",") if a.only else ALL_NAMES
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {ALL_NAMES}")
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: run scripts/setup.sh")

    b = Bench(a)
    stopping = {"sig": None}

    def on_signal(sig, _frame):
        stopping["sig"] = sig
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    try:
        tnames = [n for n in names if n in THROUGHPUT_NAMES]
        if tnames:
            b.start_stubs()
            b.start_throughput_contenders(tnames)
            b.run_throughput(tnames)
            b.procs.stop_all()
        if "latency" in names and ("pdlb" in a.contenders or "nginx" in a.contenders):
            b.run_latency()
        if ("pdlb" in a.contenders or "pdlb-base" in a.contenders) and "streams" in names:
            b.run_streams()
    except KeyboardInterrupt:
        b.failures.append("interrupted")
    except Exception as e:  # noqa: BLE001 - any failure must end the run with a report
        b.failures.append(f"error: {e}")
        log(f"error: {e}")
    finally:
        b.procs.stop_all()

    elapsed = time.time() - started
    table = b.table(names)
    if b.baseline:
        table += "\n\nA/B against the baseline " + b.baseline + ":\n\n" + b.ab_table(names)
    cmd = "bench/run.sh " + " ".join(sys.argv[1:])
    report = [f"# pdlb benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
              f"Command: `{cmd.strip()}` ({a.runs} run(s), {a.duration:g} s per wrk measurement, medians; "
              f"took {elapsed:.0f} s)", "", f"Machine: {b.machine()}", "",
              "Load generator, proxies and stub workers share the machine's cores (nothing pinned).", "",
              table, ""]
    if b.failures:
        report += ["Failures:", ""] + [f"- {f}" for f in b.failures] + [""]
    report += ["Validation (pdlb-bench checks status, [DONE], token and logprob counts of every response):", ""]
    report += [f"- {w}/{c}: {v}" for (w, c), v in sorted(b.validation.items())] + [""]
    text = "\n".join(report)
    print(table)
    if b.failures:
        print("\nFAILURES:\n" + "\n".join("  " + f for f in b.failures))
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "w") as f:
        f.write(text)
    raw = {f"{w}/{c}": [{k: v for k, v in r.items() if k not in ("raw", "_stderr")} for r in rs]
           for (w, c), rs in b.results.items()}
    with open(os.path.splitext(a.results)[0] + ".json", "w") as f:
        json.dump({"command": cmd, "machine": b.machine(), "results": raw, "failures": b.failures}, f, indent=1)
    log(f"results written to {a.results} ({elapsed:.0f} s)")
    if a.keep or b.failures:
        log(f"configs and logs kept in {b.tmp}")
    else:
        shutil.rmtree(b.tmp, ignore_errors=True)
    return 1 if b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
