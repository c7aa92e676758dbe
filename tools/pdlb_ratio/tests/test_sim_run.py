"""`pdlb-ratio run --sim` end to end: pdlb-sim nodes of known capacities behind pdlb, the whole
method, the recommendation, a passing verify, the report with its plots, nothing left running.

ctest runs this module once per capacity pair (tools/CMakeLists.txt) with
PDLB_RATIO_SIM_PAIR="PREFILL_RPS DECODE_RPS EXPECTED_MIX" and PDLB_RATIO_BIN_DIR=the build directory.
Short lengths and windows keep one pair near a minute on a busy 2-core machine; pdlb-bench's fixed
seed and --exact-rate keep the load the same from run to run.
"""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import unittest

BIN_DIR = os.environ.get("PDLB_RATIO_BIN_DIR", "")
PAIR = os.environ.get("PDLB_RATIO_SIM_PAIR", "5 10 2P1D").split()
OUT = os.environ.get("PDLB_RATIO_OUT", "/tmp/pdlb-ratio-sim-test")
QUICK = ["--input-len", "256", "--output-len", "32", "--concurrency", "16", "--prefill-concurrency", "16",
         "--window", "10", "--ttft-slo", "3000", "--tpot-slo", "200"]


def launcher():
    return os.path.join(BIN_DIR, "pdlb-ratio")


def ports_in_logs(out_dir):
    """Every port pdlb and pdlb-sim said they listen on, from the run's logs."""
    ports = set()
    for path in glob.glob(os.path.join(out_dir, "logs", "*", "*.log")):
        with open(path, errors="replace") as fh:
            text = fh.read()
        ports.update(int(p) for p in re.findall(r"(?:listening on http://127\.0\.0\.1:|http=127\.0\.0\.1:)(\d+)", text))
        ports.update(int(p) for p in re.findall(r"bootstrap=(\d+)", text) if p != "0")
    return ports


def listening(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@unittest.skipUnless(BIN_DIR and os.access(os.path.join(BIN_DIR, "pdlb-ratio"), os.X_OK),
                     "set PDLB_RATIO_BIN_DIR to a build directory with pdlb-ratio (ctest does)")
class SimRun(unittest.TestCase):
    def test_recommends_the_mix_and_verify_passes_at_its_rate(self):
        a, b, expected = float(PAIR[0]), float(PAIR[1]), PAIR[2]
        shutil.rmtree(OUT, ignore_errors=True)
        t0 = time.monotonic()
        done = subprocess.run([launcher(), "run", "--sim", "--sim-prefill-rps", PAIR[0], "--sim-decode-rps",
                               PAIR[1], "--out", OUT, *QUICK], capture_output=True, text=True, timeout=280)
        took = time.monotonic() - t0
        out = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, out)
        self.assertIn(f"recommended: {expected}", out)

        x, y = int(expected[0]), int(expected[2])
        nominal = min(x * a, y * b)  # what the mix serves, from the simulators' settings
        m = re.search(r"verify: PASS at ([\d.]+) req/s \(offered ([\d.]+), achieved ([\d.]+) req/s\)", out)
        self.assertIsNotNone(m, out)
        target, offered, achieved = float(m.group(1)), float(m.group(2)), float(m.group(3))
        self.assertLess(abs(target - nominal) / nominal, 0.10, out)
        self.assertLess(abs(offered - nominal) / nominal, 0.10, out)

        report = os.path.join(OUT, "report.md")
        with open(report) as fh:
            md = fh.read()
        self.assertIn(f"**recommended: {expected}**", md)
        self.assertIn("**PASS**", md)
        for png in ("prefill_ttft.png", "decode_throughput.png", "latency_cdf.png"):
            self.assertIn(f"]({png})", md)
            path = os.path.join(OUT, png)
            self.assertGreater(os.path.getsize(path), 1000, path)
            with open(path, "rb") as fh:
                self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n", path)

        ports = ports_in_logs(OUT)
        self.assertGreaterEqual(len(ports), 2 * (x + y + 1))
        self.assertEqual([p for p in ports if listening(p)], [], "processes left running")
        print(f"\n{expected}: {took:.0f} s, verify at {target} req/s, achieved {achieved} req/s")

    @unittest.skipUnless(PAIR[2] == "2P1D", "once is enough")
    def test_ctrl_c_stops_everything_it_started(self):
        out_dir = OUT + "-interrupted"
        shutil.rmtree(out_dir, ignore_errors=True)
        proc = subprocess.Popen([launcher(), "run", "--sim", "--sim-prefill-rps", PAIR[0], "--sim-decode-rps",
                                 PAIR[1], "--out", out_dir, *QUICK], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in proc.stdout:  # interrupt in the middle of the prefill test's rate sweep
            seen.append(line)
            if "saturation:" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 130, "".join(seen) + rest)
        self.assertIn("everything it started is stopped", rest)
        ports = ports_in_logs(out_dir)
        self.assertGreaterEqual(len(ports), 3)  # the prefill test's prefill, decode and pdlb
        self.assertEqual([p for p in ports if listening(p)], [])


if __name__ == "__main__":
    unittest.main()
