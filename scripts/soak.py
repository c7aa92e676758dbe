#!/usr/bin/env python3
"""Soak test for pdlb: a million mixed requests with faults, then flat RSS/fds and clean workers.

Run through scripts/soak.sh (see docs/reliability.md). Python 3 standard library only.

The orchestrator starts 2 prefill + 2 decode pdlb-sim workers and pdlb on 127.0.0.1 (port 0),
spawns client processes (this file with `client`) that drive the request mix over keep-alive
connections and classify every answer, injects faults on the workers through /sim/fault now and
then, restarts a decode worker on its port once or twice, samples pdlb's VmRSS and open fds after
warm-up and at the end, checks the workers' /sim/stats and pdlb's log, and prints a summary.
Exit status: 0 when every request got a whole answer or a clear error and RSS/fds stayed flat,
1 otherwise, 2 on a setup error.
"""

import argparse
import asyncio
import collections
import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from run import Processes, die_with_parent, wait_ready  # noqa: E402  bench/run.py: process handling

# ---------------------------------------------------------------------------------------------
# The request mix
# ---------------------------------------------------------------------------------------------

# kind: weight. Every kind is checked for a whole answer (see verdict()).
MIX = {
    "generate": 13,              # /generate, text, non-stream
    "generate_stream": 13,       # /generate, text, stream
    "generate_logprob": 7,       # /generate, input_ids, return_logprob, non-stream
    "generate_logprob_stream": 7,
    "batch_text": 6,             # /generate, text list, non-stream
    "batch_ids": 5,              # /generate, input_ids list of lists, non-stream
    "batch_ids_stream": 4,       # the same, stream (events carry "index")
    "batch_logprob_stream": 3,   # text list, stream, return_logprob
    "completions": 8,            # /v1/completions
    "completions_stream": 8,
    "chat": 8,                   # /v1/chat/completions
    "chat_stream": 8,
    "bad_input": 2,              # malformed JSON / invalid UTF-8 / wrong shape: must be 400
}

WORDS = "the quick brown fox jumps over a lazy dog while seven tall ships sail north".split()

BAD_BODIES = [
    (b"/generate", b'{"text": "hello'),                         # unterminated string
    (b"/generate", b'{"text": "hello", "sampling_params": {"max_new_tokens": 4},}'),
    (b"/generate", b'not json at all'),
    (b"/generate", b'{"text": "\xff\xfe bad utf-8"}'),
    (b"/generate", b''),
    (b"/v1/completions", b'{"prompt": "x", "max_tokens": 2'),
    (b"/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]]}'),
    (b"/generate", b'[1, 2, 3]'),                               # not an object
]


class Req:
    __slots__ = ("kind", "path", "body", "stream", "route", "n", "max_new", "logprob", "bad")

    def __init__(self, kind, path, body, stream=False, route="generate", n=1, max_new=0,
                 logprob=False, bad=False):
        self.kind, self.path, self.body, self.stream = kind, path, body, stream
        self.route, self.n, self.max_new, self.logprob, self.bad = route, n, max_new, logprob, bad


def _text(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))


def _ids(rng):
    return [rng.randrange(1, 150000) for _ in range(rng.randint(2, 64))]


def make_request(rng, kinds, weights):
    kind = rng.choices(kinds, weights)[0]
    k = rng.randint(1, 6)  # output tokens
    sp = {"max_new_tokens": k, "ignore_eos": True, "temperature": 0}
    if kind == "bad_input":
        path, body = rng.choice(BAD_BODIES)
        return Req(kind, path, body, bad=True)
    if kind.startswith("generate"):
        stream = kind.endswith("_stream")
        logprob = "logprob" in kind
        b = {"sampling_params": sp, "stream": stream}
        if logprob:
            b["input_ids"] = _ids(rng)
            b["return_logprob"] = True
        else:
            b["text"] = _text(rng)
        return Req(kind, b"/generate", json.dumps(b).encode(), stream, "generate", 1, k, logprob)
    if kind.startswith("batch"):
        n = rng.randint(2, 4)
        stream = kind.endswith("_stream")
        logprob = "logprob" in kind
        b = {"sampling_params": sp, "stream": stream}
        if kind.startswith("batch_ids"):
            b["input_ids"] = [_ids(rng) for _ in range(n)]
        else:
            b["text"] = [_text(rng) for _ in range(n)]
        if logprob:
            b["return_logprob"] = True
        return Req(kind, b"/generate", json.dumps(b).encode(), stream, "generate", n, k, logprob)
    if kind.startswith("completions"):
        stream = kind.endswith("_stream")
        b = {"model": "default", "prompt": _text(rng), "max_tokens": k, "ignore_eos": True,
             "stream": stream}
        if stream:
            b["stream_options"] = {"include_usage": True}
        if rng.random() < 0.3:
            b["logprobs"] = 1
        return Req(kind, b"/v1/completions", json.dumps(b).encode(), stream, "completions", 1, k)
    if kind.startswith("chat"):
        stream = kind.endswith("_stream")
        b = {"model": "default", "messages": [{"role": "user", "content": _text(rng)}],
             "max_tokens": k, "ignore_eos": True, "stream": stream}
        if stream:
            b["stream_options"] = {"include_usage": True}
        if rng.random() < 0.3:
            b["logprobs"] = True
        return Req(kind, b"/v1/chat/completions", json.dumps(b).encode(), stream, "chat", 1, k)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# Verdicts: "whole", "error" (clear error) or "fail", with a reason
# ---------------------------------------------------------------------------------------------

def _error_message(obj, relayed_ok=True):
    """The message of a clear error object, or None."""
    if isinstance(obj, dict):
        e = obj.get("error")
        if isinstance(e, dict) and isinstance(e.get("message"), str) and e["message"]:
            return e["message"]
        # SGLang's ErrorResponse ({"object":"error","message":...,"code":N}): pdlb relays a decode
        # worker's own error answer as it is, as minilb does.
        if relayed_ok and obj.get("object") == "error" and isinstance(obj.get("message"), str):
            return obj["message"]
    return None


def _check_generate_item(o, r):
    mi = o.get("meta_info") if isinstance(o, dict) else None
    if not isinstance(mi, dict):
        return "no meta_info"
    fr = mi.get("finish_reason")
    if not isinstance(fr, dict):
        return "no finish_reason"
    if fr.get("type") == "abort":
        return "abort"
    if fr.get("type") != "length" or mi.get("completion_tokens") != r.max_new:
        return "finish %r, %r tokens, expected length %d" % (fr, mi.get("completion_tokens"), r.max_new)
    if r.logprob:
        itl, otl = mi.get("input_token_logprobs"), mi.get("output_token_logprobs")
        if not isinstance(itl, list) or len(itl) != mi.get("prompt_tokens"):
            return "input_token_logprobs: %s entries, prompt_tokens %r" % (
                len(itl) if isinstance(itl, list) else None, mi.get("prompt_tokens"))
        if not isinstance(otl, list) or len(otl) != r.max_new:
            return "output_token_logprobs: wrong length"
    return None


def _check_openai(o, r, chunk):
    if not isinstance(o, dict):
        return "not an object"
    ch = o.get("choices")
    if not isinstance(ch, list) or len(ch) != 1 or ch[0].get("finish_reason") != "length":
        return "choices/finish_reason wrong"
    if not chunk:
        u = o.get("usage")
        if not isinstance(u, dict) or u.get("completion_tokens") != r.max_new:
            return "usage wrong"
    return None


def _verdict_json_ok(r, body):
    try:
        o = json.loads(body)
    except ValueError:
        return "fail", "200 with a body that is not JSON"
    if r.route == "generate":
        items = o if r.n > 1 else [o]
        if r.n > 1 and (not isinstance(o, list) or len(o) != r.n):
            return "fail", "batch answer is not a list of %d" % r.n
        for it in items:
            why = _check_generate_item(it, r)
            if why == "abort":
                return "error", "finish_reason abort"
            if why:
                return "fail", "incomplete answer: " + why
        return "whole", ""
    why = _check_openai(o, r, False)
    return ("fail", "incomplete answer: " + why) if why else ("whole", "")


def _verdict_stream_ok(r, body):
    events = [e for e in body.split(b"\n\n") if e.strip()]
    if not events:
        return "fail", "empty stream"
    datas = []
    for e in events:
        if not e.startswith(b"data: "):
            return "fail", "stream event without data: %r" % e[:60]
        datas.append(e[6:])
    done = datas[-1] == b"[DONE]"
    objs = []
    for i, d in enumerate(datas[:-1] if done else datas):
        try:
            objs.append(json.loads(d))
        except ValueError:
            return "fail", "stream event is not JSON: %r" % d[:60]
        if d == b"[DONE]":
            return "fail", "[DONE] before the end"
    for i, o in enumerate(objs):
        msg = _error_message(o)
        if msg is not None:
            if i == len(objs) - 1 and not done:
                return "error", "stream error event"
            return "fail", "error event not at the end, or followed by [DONE]"
    if not done:
        return "fail", "stream truncated without an error event or [DONE]"
    if r.route == "generate":
        finals = {}
        for o in objs:
            mi = o.get("meta_info") if isinstance(o, dict) else None
            if isinstance(mi, dict) and mi.get("finish_reason") is not None:
                finals[o.get("index", 0)] = o
        if len(finals) != r.n:
            return "fail", "stream ended with %d of %d items finished" % (len(finals), r.n)
        for o in finals.values():
            why = _check_generate_item(o, r)
            if why == "abort":
                return "error", "finish_reason abort"
            if why:
                return "fail", "incomplete stream: " + why
        return "whole", ""
    # OpenAI chunks: one with finish_reason "length", a usage chunk with the token count.
    fin = any(isinstance(o, dict) and o.get("choices") and o["choices"][0].get("finish_reason") == "length"
              for o in objs)
    usage = [o["usage"] for o in objs if isinstance(o, dict) and o.get("choices") == [] and o.get("usage")]
    if not fin or len(usage) != 1 or usage[0].get("completion_tokens") != r.max_new:
        return "fail", "incomplete OpenAI stream"
    return "whole", ""


def verdict(r, status, ctype, body):
    if r.bad:
        if status == 400 and _error_message(_loads(body)) is not None:
            return "error", "HTTP 400 for bad input"
        return "fail", "bad input answered %d: %r" % (status, body[:80])
    if status == 200:
        if r.stream:
            if not ctype.startswith(b"text/event-stream"):
                return "fail", "stream answered with content-type %r" % ctype
            return _verdict_stream_ok(r, body)
        return _verdict_json_ok(r, body)
    if 400 <= status <= 599:
        o = _loads(body)
        if _error_message(o, relayed_ok=False) is not None:
            return "error", "HTTP %d, pdlb error body" % status
        if _error_message(o) is not None:
            return "error", "HTTP %d, the worker's ErrorResponse relayed" % status
        return "fail", "HTTP %d without a JSON error body: %r" % (status, body[:80])
    return "fail", "unexpected status %d" % status


def _loads(b):
    try:
        return json.loads(b)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 keep-alive client on asyncio streams
# ---------------------------------------------------------------------------------------------

class Truncated(Exception):
    pass


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1])
    clen, chunked, close, ctype = None, False, False, b""
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        v = v.strip()
        if k == b"content-length":
            clen = int(v)
        elif k == b"transfer-encoding":
            chunked = b"chunked" in v.lower()
        elif k == b"connection":
            close = v.lower() == b"close"
        elif k == b"content-type":
            ctype = v.lower()
    if chunked:
        out = []
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise Truncated(b"".join(out))
            size = int(line.split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while True:  # trailers
                    t = await reader.readline()
                    if not t.endswith(b"\n"):
                        raise Truncated(b"".join(out))
                    if t in (b"\r\n", b"\n"):
                        break
                break
            try:
                chunk = await reader.readexactly(size + 2)
            except asyncio.IncompleteReadError as e:
                out.append(e.partial)
                raise Truncated(b"".join(out))
            out.append(chunk[:-2])
        body = b"".join(out)
    elif clen is not None:
        try:
            body = await reader.readexactly(clen)
        except asyncio.IncompleteReadError:
            raise Truncated(b"")
    else:
        body = await reader.read()
        close = True
    return status, ctype, body, close


async def client_main(a):
    rng = random.Random(a.seed)
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    host, port = a.host, a.port
    stats = {k: [0, 0, 0, 0] for k in kinds}  # sent, whole, error, fail
    reasons = collections.Counter()  # ("error"|"fail", reason)
    fail_samples = []
    lat_max = 0.0
    state = {"left": a.requests, "done": 0}

    def record(r, v, why, extra=""):
        s = stats[r.kind]
        s[{"whole": 1, "error": 2, "fail": 3}[v]] += 1
        if v != "whole":
            reasons[(v, r.kind if v == "fail" else "", _norm(why))] += 1
        if v == "fail" and len(fail_samples) < 30:
            fail_samples.append({"kind": r.kind, "why": why, "request": r.body[:300].decode("utf-8", "replace"),
                                 "extra": extra, "time": time.time()})
        state["done"] += 1

    async def worker():
        nonlocal lat_max
        reader = writer = None
        used = False
        while state["left"] > 0:
            state["left"] -= 1
            r = make_request(rng, kinds, weights)
            stats[r.kind][0] += 1
            t0 = time.monotonic()
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), a.timeout)
                    used = False
                except (OSError, asyncio.TimeoutError) as e:
                    record(r, "fail", "connect: %s" % type(e).__name__)
                    reader = writer = None
                    continue
            req = (b"POST " + r.path + b" HTTP/1.1\r\nHost: pdlb\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(r.body)).encode() + b"\r\n\r\n" + r.body)
            close = True
            try:
                writer.write(req)
                status, ctype, body, close = await asyncio.wait_for(read_response(reader), a.timeout)
                v, why = verdict(r, status, ctype, body)
                record(r, v, why, "" if v != "fail" else body[-300:].decode("utf-8", "replace"))
            except asyncio.TimeoutError:
                record(r, "fail", "no whole answer within %gs (hung)" % a.timeout)
            except Truncated as e:
                body = e.args[0] if e.args else b""
                v, why = (_verdict_stream_ok(r, body) if r.stream else ("fail", ""))
                if v == "error":
                    # The error event arrived but the chunked stream was not terminated.
                    record(r, "fail", "error event, then the connection closed without the last chunk")
                else:
                    record(r, "fail", "connection closed mid-response (%d body bytes, no error event)" % len(body),
                           body[-300:].decode("utf-8", "replace"))
            except asyncio.IncompleteReadError as e:
                if not e.partial and used:
                    record(r, "fail", "reused connection closed before any response byte")
                else:
                    record(r, "fail", "connection closed before the response head (%d bytes)" % len(e.partial))
            except (OSError, ValueError, asyncio.LimitOverrunError) as e:
                record(r, "fail", "transport/parse error: %s %s" % (type(e).__name__, e))
            lat_max = max(lat_max, time.monotonic() - t0)
            used = True
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def progress():
        while True:
            await asyncio.sleep(0.5)
            print(json.dumps({"done": state["done"]}), flush=True)

    t0 = time.monotonic()
    prog = asyncio.ensure_future(progress())
    await asyncio.gather(*(worker() for _ in range(a.concurrency)))
    prog.cancel()
    print(json.dumps({
        "final": True, "done": state["done"], "seconds": time.monotonic() - t0, "stats": stats,
        "reasons": [[k[0], k[1], k[2], n] for k, n in reasons.items()],
        "fail_samples": fail_samples, "max_latency_s": lat_max}), flush=True)


def _norm(why):
    """Group error messages: strip ports, numbers and hex ids."""
    why = re.sub(r"127\.0\.0\.1:\d+", "HOST:PORT", why)
    why = re.sub(r"\b[0-9a-f]{16,}\b", "ID", why)
    return re.sub(r"\d+(\.\d+)?", "N", why)[:160] if not why.startswith("HTTP") else why


# ---------------------------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------------------------

def proc_sample(pid):
    rss = None
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1])  # kB
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return {"rss_kb": rss, "fds": fds, "t": time.time()}


async def http_once(host, port, method, path, body=b"", timeout=10.0):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (method.encode(), path.encode(), len(body), body))
        status, _, rbody, _ = await asyncio.wait_for(read_response(reader), timeout)
        return status, rbody
    finally:
        writer.close()


class Soak:
    def __init__(self, a):
        self.a = a
        self.work = a.workdir or tempfile.mkdtemp(prefix="pdlb-soak.")
        os.makedirs(self.work, exist_ok=True)
        self.procs = Processes(self.work)  # every process we started, for cleanup
        self.aprocs = []  # the client processes (asyncio)
        self.sims = []   # dicts: role, port, bport, proc, log, gen
        self.lb = None
        self.lb_port = None
        self.events = []  # (time, text) of faults and restarts
        self.fault_counts = collections.Counter()
        self.samples = []
        self.t_start = time.time()

    def log(self, msg):
        print("[soak %6.1fs] %s" % (time.time() - self.t_start, msg), flush=True)

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, argv, out_path, err_path):
        return self.procs.start(os.path.basename(out_path), argv, log=out_path, err_log=err_path)

    async def _wait_ready(self, path, proc, timeout=15.0):
        """The process's --ready-file contents, waited for off the event loop (the load keeps running
        while a worker restarts)."""
        return await asyncio.get_running_loop().run_in_executor(None, wait_ready, path, proc, timeout)

    def _sim_argv(self, role, port, bport):
        argv = [os.path.join(self.a.bin, "pdlb-sim"), "--role", role, "--host", "127.0.0.1", "--port", str(port),
                "--prefill-tokens-per-s", "0", "--step-base-ms", "1", "--step-per-req-ms", "0",
                "--decode-log-interval", "1000"]
        if role == "prefill":
            argv += ["--bootstrap-port", str(bport)]
        return argv

    async def start_sim(self, role, idx, port=0, bport=0, gen=0):
        out = os.path.join(self.work, "%s%d.out" % (role, idx))
        err = os.path.join(self.work, "%s%d.log" % (role, idx))
        ready_path = os.path.join(self.work, "%s%d.%d.ready" % (role, idx, gen))  # one per start
        if os.path.exists(ready_path):
            os.unlink(ready_path)
        p = self._spawn(self._sim_argv(role, port, bport) + ["--ready-file", ready_path], out, err)
        ready = await self._wait_ready(ready_path, p)
        return {"role": role, "idx": idx, "port": ready["port"], "bport": ready.get("bootstrap_port", 0),
                "proc": p, "gen": gen}

    async def start_all(self):
        for role in ("prefill", "decode"):
            for i in range(2):
                self.sims.append(await self.start_sim(role, i))
        argv = [os.path.join(self.a.bin, "pdlb"), "--host", "127.0.0.1", "--port", "0",
                "--timeout", str(self.a.lb_timeout), "--log-interval", "10"]
        if self.a.lb_threads:
            argv += ["--threads", str(self.a.lb_threads)]
        for s in self.sims:
            if s["role"] == "prefill":
                argv += ["--prefill", "http://127.0.0.1:%d" % s["port"], str(s["bport"])]
        argv += ["--decode"] + ["http://127.0.0.1:%d" % s["port"] for s in self.sims if s["role"] == "decode"]
        self.lb_log = os.path.join(self.work, "pdlb.log")
        ready_path = os.path.join(self.work, "pdlb.ready")
        self.lb = self._spawn(argv + ["--ready-file", ready_path], self.lb_log, self.lb_log)
        self.lb_port = (await self._wait_ready(ready_path, self.lb))["port"]
        self.log("workers: " + ", ".join("%s%d :%d" % (s["role"], s["idx"], s["port"]) for s in self.sims)
                 + "; pdlb :%d (pid %d); logs in %s" % (self.lb_port, self.lb.pid, self.work))

    async def restart_decode(self, rng):
        decs = [s for s in self.sims if s["role"] == "decode"]
        s = rng.choice(decs)
        s["proc"].send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, s["proc"].wait)
        down_at = time.time()
        await asyncio.sleep(self.a.restart_down_s)
        new = None
        for attempt in range(50):  # the port may be briefly busy
            try:
                new = await self.start_sim("decode", s["idx"], port=s["port"], gen=s["gen"] + 1)
                break
            except RuntimeError:
                await asyncio.sleep(0.1)
        if new is None:
            raise RuntimeError("decode worker could not restart on port %d" % s["port"])
        self.sims[self.sims.index(s)] = new
        self.fault_counts["restart decode"] += 1
        self.events.append((down_at, "restart decode%d :%d (down %.2fs)" % (s["idx"], s["port"], time.time() - down_at)))
        self.log("restarted decode%d on :%d" % (s["idx"], s["port"]))

    # -- faults --------------------------------------------------------------------------------
    FAULTS = [
        ("fail_status 500 x5", {"fail_status": 500, "count": 5}),
        ("fail_status 503 x5", {"fail_status": 503, "count": 5}),
        ("drop_connection x3", {"drop_connection": True, "count": 3}),
        ("die_after_tokens 2 x3", {"die_after_tokens": 2, "count": 3}),
        ("stall x1", {"stall": True, "count": 1}),
        ("latency 300ms x5", {"latency_ms": 300, "count": 5}),
    ]

    async def fault_loop(self, stop, progress):
        rng = random.Random(self.a.seed ^ 0x5eed)
        restarts_at = [(i + 1) / (self.a.restarts + 1) for i in range(self.a.restarts)]
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5) * self.a.fault_interval)
                return
            except asyncio.TimeoutError:
                pass
            if restarts_at and progress() >= restarts_at[0]:
                restarts_at.pop(0)
                await self.restart_decode(rng)
                continue
            name, body = rng.choice(self.FAULTS)
            s = rng.choice(self.sims)
            try:
                st, _ = await http_once("127.0.0.1", s["port"], "POST", "/sim/fault", json.dumps(body).encode())
                if st == 200:
                    self.fault_counts[name + " on " + s["role"]] += 1
            except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError):
                pass

    async def clear_faults(self):
        for s in self.sims:
            await http_once("127.0.0.1", s["port"], "POST", "/sim/fault", b"{}")

    # -- sampling ------------------------------------------------------------------------------
    async def sample_loop(self, stop):
        while not stop.is_set():
            try:
                self.samples.append(proc_sample(self.lb.pid))
            except OSError:
                return
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass

    # -- the run ---------------------------------------------------------------------------------
    async def run(self):
        # SIGTERM/SIGINT cancel the run; the client processes are stopped while the loop still runs.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await self._run()
        finally:
            for p in self.aprocs:
                if p.returncode is None:
                    p.kill()
            for p in self.aprocs:
                try:
                    await asyncio.wait_for(p.wait(), 5)
                except (asyncio.TimeoutError, asyncio.CancelledError, ProcessLookupError):
                    pass

    async def _run(self):
        a = self.a
        await self.start_all()
        await asyncio.sleep(0.5)
        baseline = proc_sample(self.lb.pid)
        self.log("baseline pdlb: RSS %d kB, %d fds" % (baseline["rss_kb"], baseline["fds"]))

        nclients = max(1, min(a.clients, a.requests))
        shares = [a.requests // nclients + (1 if i < a.requests % nclients else 0) for i in range(nclients)]
        done = [0] * nclients
        finals = [None] * nclients
        clients = []
        for i, n in enumerate(shares):
            argv = [sys.executable, os.path.abspath(__file__), "client", "--host", "127.0.0.1",
                    "--port", str(self.lb_port), "--requests", str(n), "--concurrency", str(a.concurrency),
                    "--seed", str(a.seed * 1000 + i), "--timeout", str(a.request_timeout)]
            clients.append(await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent, limit=64 * 1024 * 1024))
            self.aprocs.append(clients[-1])

        total = a.requests
        warm = {"sample": None}
        warm_at = max(1, int(total * a.warmup))
        t_load = time.time()
        last_report = [time.time(), 0]

        def progress():
            return sum(done) / total

        async def read_client(i, p):
            async for line in p.stdout:
                msg = json.loads(line)
                done[i] = msg["done"]
                if msg.get("final"):
                    finals[i] = msg
                if warm["sample"] is None and sum(done) >= warm_at:
                    warm["sample"] = proc_sample(self.lb.pid)
                    warm["sample"]["done"] = sum(done)
                    self.log("warm-up sample after %d requests: RSS %d kB, %d fds"
                             % (sum(done), warm["sample"]["rss_kb"], warm["sample"]["fds"]))
                now = time.time()
                if now - last_report[0] >= a.report_every:
                    d = sum(done)
                    self.log("%d/%d done (%.0f req/s now, %.0f avg)"
                             % (d, total, (d - last_report[1]) / (now - last_report[0]), d / (now - t_load)))
                    last_report[:] = [now, d]
            await p.wait()

        stop = asyncio.Event()
        bg = [asyncio.ensure_future(self.sample_loop(stop))]
        if a.faults:
            bg.append(asyncio.ensure_future(self.fault_loop(stop, progress)))
        await asyncio.gather(*(read_client(i, p) for i, p in enumerate(clients)))
        t_end = time.time()
        stop.set()
        await asyncio.gather(*bg)
        await self.clear_faults()
        load_s = t_end - t_load

        # Drain: every leg gone on every worker, then let idle upstream connections time out (4 s).
        sim_checks = []
        for s in self.sims:
            st, body = await http_once("127.0.0.1", s["port"], "GET", "/sim/wait?active=0&timeout_ms=20000",
                                       timeout=30)
            stats = _loads(body) or {}
            sim_checks.append({"worker": "%s%d" % (s["role"], s["idx"]), "port": s["port"], "http": st,
                               "active": stats.get("active"), "received": stats.get("received"),
                               "finished": stats.get("finished"), "aborted": stats.get("aborted"),
                               "failed": stats.get("failed"), "faults_injected": stats.get("faults_injected"),
                               "restarts": s["gen"]})
        drained = proc_sample(self.lb.pid)
        await asyncio.sleep(a.settle)
        end = proc_sample(self.lb.pid)
        self.log("end sample: RSS %d kB, %d fds" % (end["rss_kb"], end["fds"]))

        # pdlb's log and a clean stop.
        alive = self.lb.poll() is None
        self.lb.send_signal(signal.SIGTERM)
        try:
            lb_rc = await asyncio.get_running_loop().run_in_executor(None, lambda: self.lb.wait(40))
        except subprocess.TimeoutExpired:
            lb_rc = "did not exit within 40 s of SIGTERM"
        with open(self.lb_log, "rb") as f:
            lb_text = f.read().decode("utf-8", "replace")
        crash_rx = re.compile(r"terminate called|Segmentation|core dumped|AddressSanitizer|runtime error:|"
                              r"\[critical\]|Aborted|std::bad_alloc|assert", re.I)
        crash_lines = [ln for ln in lb_text.splitlines() if crash_rx.search(ln)][:10]
        lvl = collections.Counter(m.group(1) for m in re.finditer(r"\[pdlb\] \[(\w+)\] ", lb_text))

        return self.report(baseline, warm["sample"], drained, end, finals, sim_checks, alive, lb_rc,
                           crash_lines, lvl, load_s)

    def report(self, baseline, warm, drained, end, finals, sim_checks, alive, lb_rc, crash_lines, lvl, load_s):
        a = self.a
        problems = []
        if any(f is None for f in finals):
            problems.append("a client process did not report (crashed?)")
            finals = [f for f in finals if f]
        stats = {k: [0, 0, 0, 0] for k in MIX}
        reasons = collections.Counter()
        samples = []
        max_lat = 0.0
        for f in finals:
            for k, v in f["stats"].items():
                stats[k] = [x + y for x, y in zip(stats[k], v)]
            for kind, sub, why, n in f["reasons"]:
                reasons[(kind, sub, why)] += n
            samples += f["fail_samples"]
            max_lat = max(max_lat, f["max_latency_s"])
        tot = [sum(v[i] for v in stats.values()) for i in range(4)]
        if tot[0] != a.requests or tot[1] + tot[2] + tot[3] != a.requests:
            problems.append("request accounting: sent %d, classified %d, expected %d"
                            % (tot[0], tot[1] + tot[2] + tot[3], a.requests))
        if tot[3]:
            problems.append("%d requests got neither a whole answer nor a clear error" % tot[3])
        if warm is None:
            problems.append("no warm-up sample")
            warm = baseline

        def growth(k):
            return (end[k] - warm[k]) / warm[k] if warm[k] else 0.0
        if growth("rss_kb") > a.max_growth:
            problems.append("RSS grew %.1f%% from warm-up to end" % (100 * growth("rss_kb")))
        if growth("fds") > a.max_growth:
            problems.append("open fds grew %.1f%% from warm-up to end" % (100 * growth("fds")))
        for c in sim_checks:
            if c["http"] != 200 or c["active"] != 0:
                problems.append("%s: active=%s at the end (leaked legs)" % (c["worker"], c["active"]))
        if not alive:
            problems.append("pdlb was not running at the end")
        if crash_lines:
            problems.append("pdlb log shows a crash: " + crash_lines[0])
        if lb_rc != 0:
            problems.append("pdlb exit after SIGTERM: %s" % lb_rc)

        w = sys.stdout.write
        w("\n=== pdlb soak (%s, source %s, nproc %d): %d requests, %d client processes x %d connections, %.0f s of load\n"
          % (datetime.datetime.now().isoformat(timespec="seconds"), _git_head(), os.cpu_count(), a.requests, len(finals), a.concurrency, load_s))
        w("%-26s %10s %10s %10s %8s\n" % ("kind", "requests", "whole", "clear err", "failed"))
        for k, v in stats.items():
            w("%-26s %10d %10d %10d %8d\n" % (k, v[0], v[1], v[2], v[3]))
        w("%-26s %10d %10d %10d %8d\n" % ("total", tot[0], tot[1], tot[2], tot[3]))
        w("\nrate: %.0f requests/s (%.0f s); slowest request %.2f s\n" % (a.requests / load_s, load_s, max_lat))
        w("\nclear errors by cause (bad_input: the 400s expected for malformed bodies):\n")
        for (v, kind, why), n in sorted(reasons.items(), key=lambda x: -x[1]):
            if v == "error":
                w("  %8d  %s\n" % (n, why))
        if tot[3]:
            w("\nFAILURES by cause:\n")
            for (v, kind, why), n in sorted(reasons.items(), key=lambda x: -x[1]):
                if v == "fail":
                    w("  %8d  %-24s %s\n" % (n, kind, why))
            w("first failures:\n")
            for s in samples[:10]:
                w("  %s: %s | request %s | tail %r\n" % (s["kind"], s["why"], s["request"][:120], s["extra"][-160:]))
        w("\nfaults injected (%d): %s\n" % (sum(self.fault_counts.values()),
                                         ", ".join("%s %d" % kv for kv in sorted(self.fault_counts.items()))))
        w("\npdlb memory and descriptors (VmRSS kB / open fds):\n")
        w("  before load      %8d kB %6d fds\n" % (baseline["rss_kb"], baseline["fds"]))
        w("  after warm-up    %8d kB %6d fds   (after %s requests)\n" % (warm["rss_kb"], warm["fds"], warm.get("done")))
        if self.samples:
            w("  peak under load  %8d kB %6d fds   (sampled every 2 s)\n"
              % (max(s["rss_kb"] for s in self.samples), max(s["fds"] for s in self.samples)))
        if len(self.samples) >= 10:
            pick = [self.samples[round(i * (len(self.samples) - 1) / 9)] for i in range(10)]
            w("  during the load  " + "  ".join("%d/%d" % (s["rss_kb"], s["fds"]) for s in pick)
              + "   (kB/fds at 10 even points)\n")
        w("  drained          %8d kB %6d fds\n" % (drained["rss_kb"], drained["fds"]))
        w("  end (+%gs idle)   %8d kB %6d fds   RSS %+.1f%%, fds %+.1f%% vs warm-up (limit +%.0f%%)\n"
          % (a.settle, end["rss_kb"], end["fds"], 100 * growth("rss_kb"), 100 * growth("fds"), 100 * a.max_growth))
        w("\nworkers at the end (/sim/stats):\n")
        for c in sim_checks:
            w("  %-9s active %s, received %s, finished %s, aborted %s, failed %s, faults %s, restarts %s\n"
              % (c["worker"], c["active"], c["received"], c["finished"], c["aborted"], c["failed"],
                 c["faults_injected"], c["restarts"]))
        w("\npdlb log lines by level: %s; crash lines: %d; exit after SIGTERM: %s\n"
          % (dict(lvl), len(crash_lines), lb_rc))
        w("logs: %s\n" % self.work)
        result = {
            "requests": a.requests, "load_seconds": load_s, "rate": a.requests / load_s, "stats": stats,
            "totals": {"requests": tot[0], "whole": tot[1], "clear_errors": tot[2], "failed": tot[3]},
            "baseline": baseline, "warmup": warm, "drained": drained, "end": end,
            "peak": {"rss_kb": max((s["rss_kb"] for s in self.samples), default=None),
                     "fds": max((s["fds"] for s in self.samples), default=None)},
            "series": [[round(s["t"] - self.t_start, 1), s["rss_kb"], s["fds"]] for s in self.samples],
            "faults": dict(self.fault_counts), "workers": sim_checks, "problems": problems,
            "fail_samples": samples[:30], "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "argv": sys.argv, "bin": os.path.abspath(a.bin),
            "source_commit": _git_head(),
        }
        with open(os.path.join(self.work, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(result, f, indent=1)
        if problems:
            w("\nSOAK FAILED:\n" + "".join("  - %s\n" % p for p in problems))
            return 1
        w("\nSOAK PASSED: every request got a whole answer or a clear error; RSS and fds flat; workers clean.\n")
        return 0

    def cleanup(self):
        self.procs.stop_all()


def _git_head():
    try:
        return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short",
                               "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("client")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--requests", type=int, required=True)
    c.add_argument("--concurrency", type=int, default=32)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--bin", default="build", help="directory with pdlb, pdlb-sim (default: build)")
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--concurrency", type=int, default=32, help="connections per client process")
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of requests before the warm-up sample")
    ap.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS/fd growth after warm-up")
    ap.add_argument("--fault-interval", type=float, default=2.0, help="mean seconds between injected faults")
    ap.add_argument("--no-faults", dest="faults", action="store_false")
    ap.add_argument("--restarts", type=int, default=2, help="decode worker restarts during the run")
    ap.add_argument("--restart-down-s", type=float, default=0.3, help="seconds a restarted worker stays down")
    ap.add_argument("--lb-timeout", type=float, default=2.0, help="pdlb --timeout (stalls end as 504)")
    ap.add_argument("--lb-threads", type=int, default=0, help="pdlb --threads (default: pdlb's own)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="client: seconds before a request is hung")
    ap.add_argument("--settle", type=float, default=6.0, help="idle seconds before the end sample")
    ap.add_argument("--report-every", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", help="logs and result.json (default: a new /tmp/pdlb-soak.* directory)")
    ap.add_argument("--json-out", help="also write the result JSON here")
    a = ap.parse_args()
    if a.cmd == "client":
        try:
            asyncio.run(client_main(a))
        except KeyboardInterrupt:
            pass
        return 0
    for exe in ("pdlb", "pdlb-sim"):
        if not os.access(os.path.join(a.bin, exe), os.X_OK):
            print("soak: %s/%s not found (build it first)" % (a.bin, exe), file=sys.stderr)
            return 2
    soak = Soak(a)

    try:
        return asyncio.run(soak.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print("soak: %s" % e, file=sys.stderr)
        return 2
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
