"""decode-log on SGLang's `Decode batch` / `Prefill batch` lines of several eras.

Where each format comes from:
- SEED_LINE: the seed's own decode log line (../shared/seed/pd-ratio-method.zh.txt, "日志分析"),
  SGLang of October 2025 on a PD decode node with DP attention ("[time DP7 TP7 EP7]" prefix).
- OLD_*: sgl-project/sglang python/sglang/srt/managers/scheduler.py, `log_decode_stats` and
  `log_prefill_stats` of late 2024 (v0.3/v0.4): `Decode batch. #running-req, #token, token usage,
  gen throughput (token/s), #queue-req` without a trailing comma; `Prefill batch. #new-seq, ...`.
- NEW_*: sgl-project/sglang python/sglang/srt/managers/scheduler_metrics_mixin.py at commit
  01bb3c807f7e62c19a31de7548837505488c2b64 (`log_decode_stats`, decode mode): "Decode batch," with a
  comma, `#prealloc-req` and `#transfer-req`, and " [forward_ct]" after "batch" when
  SGLANG_LOG_FORWARD_ITERS is set; `Prefill batch, ...` with `#prealloc-req`, `#inflight-req`,
  `input throughput (token/s)` on a prefill node.
- SIM_*: pdlb-sim (src/sim/engine.cpp), which copies the seed's format with a "[time]" prefix.
The values in the lines below are made up; the text around them is SGLang's.
"""
import contextlib
import io
import os
import tempfile
import unittest

from pdlb_ratio import cli, logparse

SEED_LINE = ("[2025-10-10 08:50:41 DP7 TP7 EP7] Decode batch. #running-req: 64, #token: 508158, "
             "token usage: 0.63, pre-allocated usage: 0.00, #retracted-req: 0, cuda graph: True, "
             "gen throughput (token/s): 2231.5, #queue-req: 0,")
OLD_DECODE = ("[2024-11-20 10:00:01 TP0] Decode batch. #running-req: {r}, #token: 40960, token usage: 0.20, "
              "gen throughput (token/s): {g}, #queue-req: {q}")
OLD_PREFILL = ("[2024-11-20 10:00:00 TP0] Prefill batch. #new-seq: 4, #new-token: 4096, #cached-token: 0, "
               "cache hit rate: 0.00%, token usage: 0.02, #running-req: 28, #queue-req: 0")
NEW_DECODE = ("[2025-11-03 12:00:{s:02d} DP{dp} TP{dp} EP{dp}] Decode batch{it}, #running-req: {r}, "
              "#token: 420000, token usage: 0.52, pre-allocated usage: 0.01, #prealloc-req: 2, "
              "#transfer-req: 1, #retracted-req: {x}, cuda graph: True, gen throughput (token/s): {g}, "
              "#queue-req: {q}, ")
NEW_PREFILL = ("[2025-11-03 11:59:59 DP0 TP0 EP0] Prefill batch, #new-seq: 8, #new-token: 8192, "
               "#cached-token: 0, token usage: 0.40, #running-req: 0, #queue-req: 3, #prealloc-req: 0, "
               "#inflight-req: 2, input throughput (token/s): 30123.45, ")
SIM_DECODE = ("[2026-11-30 11:00:00] Decode batch. #running-req: {r}, #token: 9000, token usage: 0.00, "
              "pre-allocated usage: 0.00, #retracted-req: 0, cuda graph: True, gen throughput (token/s): {g}, "
              "#queue-req: 0, ")


class ParseLine(unittest.TestCase):
    def test_seed_line_with_dp_prefix_and_trailing_comma(self):
        bl = logparse.parse_line(SEED_LINE, "d.log")
        self.assertEqual(bl.kind, "decode")
        self.assertEqual(bl.time, "2025-10-10 08:50:41")
        self.assertEqual(bl.source, "d.log DP7")
        self.assertEqual(bl.num("#running-req"), 64)
        self.assertEqual(bl.num("#token"), 508158)
        self.assertEqual(bl.num("token usage"), 0.63)
        self.assertEqual(bl.num("gen throughput (token/s)"), 2231.5)
        self.assertEqual(bl.num("#queue-req"), 0)
        self.assertEqual(bl.fields["cuda graph"], "True")

    def test_old_line_without_pd_fields_or_trailing_comma(self):
        bl = logparse.parse_line(OLD_DECODE.format(r=32, g="1500.25", q=3))
        self.assertEqual(bl.num("#running-req"), 32)
        self.assertEqual(bl.num("gen throughput (token/s)"), 1500.25)
        self.assertEqual(bl.num("#queue-req"), 3)
        self.assertEqual(bl.source, "")  # TP0 only: no DP rank

    def test_new_line_with_comma_and_forward_iteration(self):
        for it in ("", " [1234]"):
            bl = logparse.parse_line(NEW_DECODE.format(s=1, dp=0, it=it, r=64, x=0, g="2400.00", q=0))
            self.assertIsNotNone(bl, it)
            self.assertEqual(bl.num("#running-req"), 64)
            self.assertEqual(bl.num("#prealloc-req"), 2)
            self.assertEqual(bl.num("#transfer-req"), 1)
            self.assertEqual(bl.num("gen throughput (token/s)"), 2400.0)

    def test_prefill_lines_of_both_eras(self):
        old = logparse.parse_line(OLD_PREFILL)
        new = logparse.parse_line(NEW_PREFILL)
        self.assertEqual((old.kind, new.kind), ("prefill", "prefill"))
        self.assertEqual(old.num("#new-seq"), 4)
        self.assertEqual(new.num("input throughput (token/s)"), 30123.45)

    def test_line_without_prefix_and_other_lines(self):
        self.assertIsNotNone(logparse.parse_line(SEED_LINE.split("] ", 1)[1]))
        self.assertIsNone(logparse.parse_line("[2025-10-10 08:50:41 TP0] INFO: 127.0.0.1 POST /generate 200"))
        self.assertIsNone(logparse.parse_line("Decode batch. nothing useful"))


def release_log(line, c, window, before=(1, 1), after=(40, 12), extra=None):
    """A decode node's log around a release: slowed lines, `window` lines at c running, the tail."""
    lines = [line(r=before[0], g="0.05")] * before[1]
    lines.append(line(r=c, g="1.50"))  # first full line: its throughput covers the slowed time
    for i in range(window - 1):
        lines.append(line(r=c, g=f"{1000 + 10 * i:.2f}"))
    lines += [line(r=after[0], g="900.00"), line(r=after[1], g="300.00")]
    return lines


class Analyse(unittest.TestCase):
    def test_steady_window_mean_tpot_and_per_card_skip_the_first_full_line(self):
        text = release_log(lambda r, g: SIM_DECODE.format(r=r, g=g), 64, 6)
        r = logparse.analyse([logparse.parse_line(t, "n0") for t in text], 64, cards=8)
        self.assertEqual(len(r.windows), 1)
        self.assertEqual(len(r.windows[0].lines), 5)
        self.assertAlmostEqual(r.throughput, (1000 + 1010 + 1020 + 1030 + 1040) / 5)
        self.assertAlmostEqual(r.tpot_ms, 1000.0 * 64 / 1020.0)
        self.assertAlmostEqual(r.per_card, 1020.0 / 8)
        self.assertEqual(r.warnings, [])

    def test_seed_era_lines_from_two_dp_ranks_add_up(self):
        lines = []
        for dp in (6, 7):
            lines += [SEED_LINE.replace("DP7 TP7 EP7", f"DP{dp} TP{dp} EP{dp}")
                      .replace("#running-req: 64", f"#running-req: {r}").replace("2231.5", g)
                      for (r, g) in [(3, "0.1"), (64, "5.0"), (64, "2200.0"), (64, "2300.0")]]
        r = logparse.analyse([logparse.parse_line(t, "node") for t in lines], 64, cards=16)
        self.assertEqual(sorted(w.source for w in r.windows), ["node DP6", "node DP7"])
        self.assertAlmostEqual(r.throughput, 2 * 2250.0)
        self.assertAlmostEqual(r.tpot_ms, 1000.0 * 64 / 2250.0)

    def test_new_era_warns_on_retraction_and_queueing_inside_the_window(self):
        text = [NEW_DECODE.format(s=i, dp=0, it="", r=r, x=x, g=g, q=q)
                for i, (r, x, g, q) in enumerate([(1, 0, "0.1", 0), (32, 0, "9.0", 5), (32, 2, "800.0", 4),
                                                  (32, 0, "820.0", 0), (32, 0, "840.0", 0)])]
        r = logparse.analyse([logparse.parse_line(t) for t in text], 32)
        self.assertAlmostEqual(r.throughput, 820.0)
        self.assertEqual(len(r.warnings), 2, r.warnings)
        self.assertIn("2 retracted", r.warnings[0])
        self.assertIn("#queue-req > 0 in 1 of 3", r.warnings[1])

    def test_old_era_window_found_among_other_batch_sizes(self):
        text = [OLD_DECODE.format(r=r, g=g, q=0) for r, g in
                [(8, "100"), (16, "1.0"), (16, "700"), (16, "720"), (8, "300"), (16, "5"), (16, "710")]]
        text.insert(1, OLD_PREFILL)
        r = logparse.analyse([logparse.parse_line(t) for t in text], 16)
        self.assertAlmostEqual(r.throughput, 710.0)  # the longest run: 700 and 720 (1.0 dropped)
        self.assertEqual(r.prefill_lines, 1)

    def test_no_steady_window_names_the_values_seen(self):
        text = [OLD_DECODE.format(r=r, g="10", q=0) for r in (5, 9, 12)]
        with self.assertRaisesRegex(ValueError, r"values seen: 5, 9, 12"):
            logparse.analyse([logparse.parse_line(t) for t in text], 16)


class Offsets(unittest.TestCase):
    def test_only_lines_written_after_the_offset_count_unless_the_file_was_replaced(self):
        line = lambda r, g: SIM_DECODE.format(r=r, g=g)  # noqa: E731
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "decode.log")
            with open(path, "w") as fh:  # an earlier experiment: a long window at 900 token/s
                fh.write("\n".join([line(16, "1")] + [line(16, "900.00")] * 9) + "\n")
            offset = os.path.getsize(path)
            with open(path, "a") as fh:  # this test's window: 500 token/s
                fh.write("\n".join([line(1, "0.1"), line(16, "2"), line(16, "500.00"), line(16, "500.00")]) + "\n")
            r = logparse.analyse(logparse.parse_files([path], {0: offset}), 16)
            self.assertAlmostEqual(r.throughput, 500.0)
            self.assertAlmostEqual(logparse.analyse(logparse.parse_files([path]), 16).throughput, 900.0)
            self.assertEqual(len(logparse.parse_files([path], {0: offset * 100})), 14)  # replaced: all


class Cli(unittest.TestCase):
    def test_decode_log_command_on_a_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "decode.log")
            with open(path, "w") as fh:
                fh.write("\n".join(["unrelated line", NEW_PREFILL] +
                                   release_log(lambda r, g: NEW_DECODE.format(s=0, dp=0, it="", r=r, x=0, g=g, q=0),
                                               64, 4)) + "\n")
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = cli.main(["decode-log", path, "--concurrency", "64", "--cards", "8"])
            self.assertEqual(code, 0, out.getvalue())
            text = out.getvalue()
            self.assertIn("gen throughput: 1010.0 token/s", text)
            self.assertIn("TPOT: 63.37 ms", text)
            self.assertIn("per card: 126.2 token/s (8 cards)", text)
            self.assertIn("prefill input throughput: 30123.5", text)
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = cli.main(["decode-log", os.path.join(d, "missing.log"), "--concurrency", "64"])
            self.assertEqual(code, 2)
            self.assertIn("missing.log", err.getvalue())


if __name__ == "__main__":
    unittest.main()
