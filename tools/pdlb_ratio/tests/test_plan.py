"""plan and kv on the seed's own numbers (../shared/seed/README.md, 'Ratio' and 'Capacity')."""
import contextlib
import io
import unittest

from pdlb_ratio import cli, plan


def run_cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, out.getvalue()


class Plan(unittest.TestCase):
    def test_seed_16_prefill_cards_at_5_and_16_decode_cards_at_10_give_2p1d_at_10_rps(self):
        p = plan.plan(5, 16, 10, 16)
        self.assertEqual(p.ratio, "P:D = 2:1 (2P1D)")
        self.assertEqual((p.mix.prefill, p.mix.decode), (2, 1))
        self.assertAlmostEqual(p.mix.rate, 10.0)

    def test_cli_prints_the_seed_ratio_mix_and_bench_serving_arguments(self):
        code, out = run_cli("plan", "--prefill-rps", "5", "--prefill-cards", "16", "--decode-rps", "10",
                            "--decode-cards", "16", "--target-rps", "10")
        self.assertEqual(code, 0, out)
        self.assertIn("P:D = 2:1 (2P1D)", out)
        self.assertIn("2P1D serves 10 req/s", out)
        self.assertIn("for 10 req/s: 2P1D", out)
        self.assertIn("--request-rate 10 --max-concurrency 100", out)

    def test_decode_bottleneck_gives_more_decode_nodes(self):
        p = plan.plan(10, 8, 5, 8)
        self.assertEqual(p.ratio, "P:D = 1:2 (1P2D)")
        self.assertAlmostEqual(p.mix.rate, 10.0)

    def test_uneven_capacities_find_the_smallest_matching_mix(self):
        self.assertEqual(plan.ratio_mix(4, 6).name, "3P2D")  # 12 = 12
        self.assertEqual(plan.ratio_mix(6, 6).name, "1P1D")
        # Measured values are never round: 4.7 and 9.6 still match 2:1 within 10 %.
        m = plan.ratio_mix(4.7, 9.6)
        self.assertEqual(m.name, "2P1D")
        self.assertAlmostEqual(m.rate, 9.4)

    def test_target_rate_sizes_each_side_on_its_own(self):
        t = plan.mix_for_target(5, 10, 25)
        self.assertEqual((t.prefill, t.decode, t.rate), (5, 3, 25))
        t = plan.mix_for_target(5, 10, 10)
        self.assertEqual(t.name, "2P1D")

    def test_cards_per_node_scale_the_measured_setup(self):
        # Measured on 16 cards, nodes of 8 cards: each node does half.
        p = plan.plan(5, 16, 10, 16, prefill_node_cards=8, decode_node_cards=8)
        self.assertAlmostEqual(p.p_node_rps, 2.5)
        self.assertAlmostEqual(p.d_node_rps, 5.0)
        self.assertEqual(p.mix.name, "2P1D")

    def test_bad_input_is_a_clear_error(self):
        with self.assertRaisesRegex(ValueError, "prefill-rps"):
            plan.plan(0, 16, 10, 16)
        code, out = run_cli("plan", "--prefill-rps", "-1", "--prefill-cards", "16", "--decode-rps", "10",
                            "--decode-cards", "16")
        self.assertEqual(code, 2)
        self.assertIn("must be > 0", out)


class Kv(unittest.TestCase):
    def test_seed_128_requests_of_8k_plus_2k_need_the_exact_product(self):
        k = plan.kv_need(8192, 2048, 128)
        self.assertEqual(k.per_request, 10240)
        self.assertEqual(k.total, 1310720)  # the seed's "128 x 10k = 1.28M", about 1.3M exactly
        self.assertIsNone(k.fits)

    def test_cli_says_whether_a_node_cache_holds_it(self):
        code, out = run_cli("kv", "--input", "8192", "--output", "2048", "--concurrency", "128")
        self.assertEqual(code, 0)
        self.assertIn("KV tokens needed: 128 x 10240 = 1310720", out)
        code, out = run_cli("kv", "--input", "8192", "--output", "2048", "--concurrency", "128",
                            "--kv-tokens", "1310720")
        self.assertEqual(code, 0)
        self.assertIn("fits: 1310720 >= 1310720", out)
        code, out = run_cli("kv", "--input", "8192", "--output", "2048", "--concurrency", "128",
                            "--kv-tokens", "1280000")
        self.assertEqual(code, 1)
        self.assertIn("does NOT fit", out)
        self.assertIn("at most 125 such requests", out)


if __name__ == "__main__":
    unittest.main()
