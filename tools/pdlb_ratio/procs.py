"""Starting and stopping pdlb, pdlb-sim and pdlb-bench, and talking to them over loopback HTTP.

Every process is started on port 0; its port is read from the line it prints when ready
(pdlb-sim: `pdlb-sim ready role=R http=HOST:PORT bootstrap=B`, pdlb: `listening on
http://HOST:PORT`). Everything started is stopped by Processes.stop_all(), which the caller runs in a
`finally` (also on Ctrl-C and SIGTERM, see cli.main).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

_SIM_READY = re.compile(r"pdlb-sim ready role=(\w+) http=([\d.]+):(\d+) bootstrap=(\d+)")
_LB_READY = re.compile(r"listening on http://([\d.]+):(\d+)")


class ToolError(Exception):
    """A failure to report to the user (no traceback)."""


def find_binary(name, bin_dir=None):
    """`name` in --bin-dir, else beside the launcher (build/ or the install's bin/), else PATH."""
    dirs = [bin_dir] if bin_dir else []
    dirs.append(os.environ.get("PDLB_RATIO_BIN_DIR", ""))
    dirs.append(os.path.dirname(os.path.abspath(os.environ.get("PDLB_RATIO_LAUNCHER", ""))))
    for d in dirs:
        if d and os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    found = shutil.which(name)
    if not found:
        raise ToolError(f"{name} not found (give --bin-dir, e.g. the build directory)")
    return found


def wait_for_line(proc, path, pattern, timeout=30.0):
    """Polls the process's log file until a line matches; returns the match."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                m = pattern.search(line)
                if m:
                    return m
        if proc.poll() is not None:
            raise ToolError(f"{proc.args[0]} exited with status {proc.returncode} before it was ready; "
                            f"its log: {path}")
        if time.monotonic() > deadline:
            raise ToolError(f"{proc.args[0]} not ready after {timeout:.0f} s; its log: {path}")
        time.sleep(0.05)


class Processes:
    """The processes one run started, stopped together."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.procs = []
        os.makedirs(log_dir, exist_ok=True)

    def spawn(self, name, argv):
        """Starts argv with stdout and stderr in LOG_DIR/NAME.log; returns (Popen, log path)."""
        path = os.path.join(self.log_dir, name + ".log")
        with open(path, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc, path

    def start_sim(self, name, role, args):
        proc, path = self.spawn(name, [*args[:1], "--role", role, "--host", "127.0.0.1", "--port", "0",
                                       "--bootstrap-port", "0", *args[1:]])
        m = wait_for_line(proc, path, _SIM_READY)
        return SimNode(name, role, f"http://127.0.0.1:{m.group(3)}", int(m.group(4)), path, proc)

    def start_lb(self, name, pdlb_bin, prefill, decode, extra=()):
        argv = [pdlb_bin, "--host", "127.0.0.1", "--port", "0", "--policy", "round_robin",
                "--log-interval", "0", "--prefill"]
        argv += [n.url for n in prefill]
        argv += ["--prefill-bootstrap-ports"] + [str(n.bootstrap) for n in prefill]
        argv += ["--decode"] + [n.url for n in decode]
        argv += list(extra)
        proc, path = self.spawn(name, argv)
        m = wait_for_line(proc, path, _LB_READY)
        return f"http://127.0.0.1:{m.group(2)}", proc

    def stop(self, proc, grace=5.0):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in list(reversed(self.procs)):
            self.stop(proc)


class SimNode:
    def __init__(self, name, role, url, bootstrap, log, proc):
        self.name, self.role, self.url, self.bootstrap, self.log, self.proc = (
            name, role, url, bootstrap, log, proc)


# Sim mode sets this: then nothing but 127.0.0.0/8 is ever called.
LOOPBACK_ONLY = False


def http_json(method, url, body=None, timeout=10.0, headers=None):
    """One request; returns (status, parsed JSON or text)."""
    if LOOPBACK_ONLY and not re.match(r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)", url):
        raise ToolError(f"refusing to talk to {url}: pdlb-ratio only talks to loopback addresses")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise ToolError(f"{method} {url}: {e}") from None
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text
