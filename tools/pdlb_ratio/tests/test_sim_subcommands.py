"""prefill-test, decode-test and verify on their own, against a pdlb the test starts in front of
pdlb-sim nodes: the path a user with real nodes takes (the tool starts nothing itself here)."""
import json
import os
import re
import subprocess
import tempfile
import unittest

from pdlb_ratio import procs

BIN_DIR = os.environ.get("PDLB_RATIO_BIN_DIR", "")
COMMON = ["--input-len", "256", "--output-len", "32", "--concurrency", "16", "--ttft-slo", "3000",
          "--tpot-slo", "200"]


@unittest.skipUnless(BIN_DIR and os.access(os.path.join(BIN_DIR, "pdlb-ratio"), os.X_OK),
                     "set PDLB_RATIO_BIN_DIR to a build directory with pdlb-ratio (ctest does)")
class Subcommands(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.procs = procs.Processes(os.path.join(cls.tmp.name, "logs"))
        sim = os.path.join(BIN_DIR, "pdlb-sim")
        try:
            # Prefill: 10 req/s at 256 tokens. Decode: 40 ms steps at 16 running = 400 token/s,
            # 12.5 req/s of 32 tokens.
            cls.prefill = cls.procs.start_sim("prefill", "prefill", [sim, "--prefill-tokens-per-s", "2560"])
            cls.decode = cls.procs.start_sim("decode", "decode", [sim, "--step-base-ms", "20", "--step-per-req-ms",
                                                                 "1.25", "--max-running-requests", "32",
                                                                 "--decode-log-interval", "2"])
            cls.lb, _ = cls.procs.start_lb("pdlb", os.path.join(BIN_DIR, "pdlb"), [cls.prefill], [cls.decode])
        except BaseException:
            cls.procs.stop_all()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.procs.stop_all()
        cls.tmp.cleanup()

    def pdlb_ratio(self, *args):
        out = os.path.join(self.tmp.name, "out")
        done = subprocess.run([os.path.join(BIN_DIR, "pdlb-ratio"), *args, "--out", out],
                              capture_output=True, text=True, timeout=240)
        return done.returncode, done.stdout + done.stderr, out

    def test_decode_test_measures_the_node_from_its_log_and_from_its_reported_throughput(self):
        for with_log in (True, False):
            extra = ["--decode-log", self.decode.log] if with_log else []
            code, out, out_dir = self.pdlb_ratio("decode-test", "--lb", self.lb, "--decode-url", self.decode.url,
                                                 *extra, *COMMON)
            self.assertEqual(code, 0, out)
            m = re.search(r"decode capacity: ([\d.]+) req/s per node, TPOT ([\d.]+) ms", out)
            self.assertIsNotNone(m, out)
            self.assertLess(abs(float(m.group(1)) - 12.5) / 12.5, 0.10, out)
            self.assertLess(abs(float(m.group(2)) - 40.0) / 40.0, 0.10, out)
            self.assertIn("log " if with_log else "reported gen throughput", out)
            self.assertTrue(os.path.getsize(os.path.join(out_dir, "decode_throughput.png")) > 1000)
        # The decode node was released: nothing is left slowed.
        status, stats = procs.http_json("GET", self.decode.url + "/sim/stats")
        self.assertEqual(stats["forward_sleep_time"], 0)

    def test_decode_test_over_the_tpot_slo_says_so_and_exits_1(self):
        args = [a if a != "200" else "30" for a in COMMON]  # TPOT SLO 30 ms; the node's steps are 40 ms
        code, out, _ = self.pdlb_ratio("decode-test", "--lb", self.lb, "--decode-url", self.decode.url, *args)
        self.assertEqual(code, 1, out)
        self.assertIn("over the TPOT SLO of 30 ms", out)
        self.assertIn("measure again with a lower --concurrency", out)

    def test_run_on_an_existing_cluster_measures_recommends_and_verifies(self):
        code, out, out_dir = self.pdlb_ratio("run", "--lb", self.lb, "--prefill-nodes", "1", "--decode-url",
                                             self.decode.url, "--decode-log", self.decode.log, "--window", "4",
                                             "--prefill-concurrency", "8", *COMMON)
        self.assertEqual(code, 0, out)
        # Prefill about 10 req/s, decode 12.5: the smallest mix within 10 % is 4P3D or 5P4D.
        m = re.search(r"recommended: (\d+)P(\d+)D", out)
        self.assertIsNotNone(m, out)
        x, y = int(m.group(1)), int(m.group(2))
        self.assertGreater(x, y, out)
        self.assertIn("verify: PASS", out)
        with open(os.path.join(out_dir, "report.md")) as fh:
            md = fh.read()
        self.assertIn("verify ran on the cluster behind", md)

    def test_prefill_test_finds_a_capacity_near_the_node_rate(self):
        code, out, out_dir = self.pdlb_ratio("prefill-test", "--lb", self.lb, "--window", "4",
                                             "--prefill-concurrency", "8", *COMMON)
        self.assertEqual(code, 0, out)
        m = re.search(r"prefill capacity: ([\d.]+) req/s per node", out)
        self.assertIsNotNone(m, out)
        self.assertGreater(float(m.group(1)), 7.0, out)
        self.assertLess(float(m.group(1)), 10.5, out)
        with open(os.path.join(out_dir, "report.md")) as fh:
            self.assertIn("](prefill_ttft.png)", fh.read())

    def test_verify_passes_below_capacity_and_fails_on_a_dead_load_balancer(self):
        code, out, _ = self.pdlb_ratio("verify", "--lb", self.lb, "--rate", "5", "--window", "4", *COMMON)
        self.assertEqual(code, 0, out)
        self.assertIn("verify: PASS", out)
        # Port 1 on loopback: nothing listens there, every connect is refused.
        code, out, _ = self.pdlb_ratio("verify", "--lb", "http://127.0.0.1:1", "--rate", "5", "--window", "2",
                                       *COMMON)
        self.assertEqual(code, 1, out)
        self.assertIn("FAIL: 20 requests failed", out)
        self.assertIn("verify: FAIL", out)

    def bench_sends(self, seed):
        done = subprocess.run([os.path.join(BIN_DIR, "pdlb-bench"), "--url", self.lb, "--request-rate", "20",
                               "--exact-rate", "--requests", "40", "--seed", str(seed), "--json", "--samples",
                               "--input-tokens", "16", "--output-tokens", "2"],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        result = json.loads(done.stdout)
        self.assertEqual(len(result["samples_ms"]["send"]), 40)
        self.assertEqual(len(result["samples_ms"]["e2e"]), 40)
        return sorted(result["samples_ms"]["send"])

    def test_bench_exact_rate_spreads_the_requests_over_n_over_r_and_the_seed_repeats_them(self):
        a, b, c = self.bench_sends(7), self.bench_sends(7), self.bench_sends(8)
        self.assertLessEqual(a[-1], 2000.0 + 50)  # 40 requests at 20 req/s: all sent within 2 s
        self.assertGreater(a[-1], 1500.0)  # and spread over most of it (the last of 40 uniform draws)
        self.assertLess(max(abs(x - y) for x, y in zip(a, b)), 50.0, "same seed, different schedule")
        self.assertGreater(max(abs(x - y) for x, y in zip(a, c)), 50.0, "another seed, same schedule")


if __name__ == "__main__":
    unittest.main()
