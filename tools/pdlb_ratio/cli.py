"""pdlb-ratio's command line: plan, kv, decode-log, prefill-test, decode-test, verify, run."""
import argparse
import os
import signal
import sys

from pdlb_ratio import experiment, logparse, plan as planmod, procs, report
from pdlb_ratio.procs import ToolError


def _positive(kind):
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return v
    return conv


pos_int, pos_float = _positive(int), _positive(float)


def _measure_args(p):
    p.add_argument("--input-len", type=pos_int, default=1024, help="prompt tokens (default 1024)")
    p.add_argument("--output-len", type=pos_int, default=128, help="output tokens (default 128)")
    p.add_argument("--ttft-slo", type=pos_float, default=3000.0, help="TTFT SLO in ms (default 3000)")
    p.add_argument("--tpot-slo", type=pos_float, default=100.0, help="TPOT SLO in ms (default 100)")
    p.add_argument("--percentile", type=int, choices=(50, 90, 99), default=90,
                   help="percentile that must meet the SLOs (default 90)")
    p.add_argument("--window", type=pos_float, default=30.0,
                   help="seconds of load per measured rate and for verify (default 30)")
    p.add_argument("--prefill-concurrency", type=pos_int, default=128,
                   help="prefill test: requests in flight for the saturation run (seed: 128)")
    p.add_argument("--concurrency", type=pos_int, default=32,
                   help="decode test: running requests per decode node (set SGLang's "
                        "--max-running-requests to it; default 32)")
    p.add_argument("--out", default="pdlb-ratio-out", help="directory for the report, logs, raw results")
    p.add_argument("--bin-dir", help="directory with pdlb-bench (and pdlb, pdlb-sim in sim mode)")
    p.add_argument("--admin-key", default=os.environ.get("PDLB_ADMIN_API_KEY"),
                   help="pdlb's --admin-api-key, for /slow_down (default $PDLB_ADMIN_API_KEY)")


def _settings(a, lb):
    return experiment.Settings(
        bench=procs.find_binary("pdlb-bench", a.bin_dir), lb=lb, input_len=a.input_len,
        output_len=a.output_len, ttft_slo_ms=a.ttft_slo, tpot_slo_ms=a.tpot_slo,
        percentile=a.percentile, window_s=a.window, prefill_concurrency=a.prefill_concurrency,
        concurrency=a.concurrency, out_dir=os.path.abspath(a.out), admin_key=a.admin_key)


def build_parser():
    ap = argparse.ArgumentParser(prog="pdlb-ratio", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("plan", help="the P:D ratio and node mix from measured capacities")
    p.add_argument("--prefill-rps", type=pos_float, required=True, help="req/s the measured prefill setup served")
    p.add_argument("--prefill-cards", type=pos_int, required=True, help="cards of that prefill setup")
    p.add_argument("--decode-rps", type=pos_float, required=True, help="req/s the measured decode setup served")
    p.add_argument("--decode-cards", type=pos_int, required=True, help="cards of that decode setup")
    p.add_argument("--target-rps", type=pos_float, help="rate to size the cluster for")
    p.add_argument("--prefill-node-cards", type=pos_int, help="cards per prefill node (default: --prefill-cards)")
    p.add_argument("--decode-node-cards", type=pos_int, help="cards per decode node (default: --decode-cards)")
    p.add_argument("--max-concurrency", type=pos_int, help="for the bench_serving line (default: 10 x rate)")

    p = sub.add_parser("kv", help="KV cache tokens a decode test's concurrency needs")
    p.add_argument("--input", type=pos_int, required=True, help="input tokens per request")
    p.add_argument("--output", type=pos_int, required=True, help="output tokens per request")
    p.add_argument("--concurrency", type=pos_int, required=True, help="requests held at once")
    p.add_argument("--kv-tokens", type=pos_int, help="a node's KV cache size in tokens (max_total_num_tokens)")

    p = sub.add_parser("decode-log", help="decode throughput from SGLang 'Decode batch' log lines")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--concurrency", type=pos_int, required=True,
                   help="intended #running-req (per DP rank when lines carry DPx)")
    p.add_argument("--cards", type=pos_int, default=1, help="cards of the decode node (default 1)")

    p = sub.add_parser("prefill-test", help="highest rate whose TTFT meets the SLO, through pdlb")
    p.add_argument("--lb", required=True, help="pdlb URL")
    p.add_argument("--prefill-nodes", type=pos_int, default=1, help="prefill nodes behind it (default 1)")
    _measure_args(p)

    p = sub.add_parser("decode-test", help="slow down, fill, release, measure decode throughput")
    p.add_argument("--lb", required=True, help="pdlb URL")
    p.add_argument("--decode-url", nargs="+", required=True, help="the decode nodes behind pdlb")
    p.add_argument("--decode-log", nargs="*", default=[], help="each node's log file, same order")
    p.add_argument("--cards", type=pos_int, default=1, help="cards per decode node (default 1)")
    _measure_args(p)

    p = sub.add_parser("verify", help="open-loop load at a rate, checked against the SLOs")
    p.add_argument("--lb", required=True, help="pdlb URL")
    p.add_argument("--rate", type=pos_float, required=True, help="target req/s")
    _measure_args(p)

    p = sub.add_parser("run", help="prefill test, decode test, ratio, verify (--sim: on pdlb-sim)")
    p.add_argument("--sim", action="store_true", help="start pdlb-sim nodes and pdlb on 127.0.0.1")
    p.add_argument("--sim-prefill-rps", type=pos_float, help="sim: a prefill node's capacity (req/s)")
    p.add_argument("--sim-decode-rps", type=pos_float,
                   help="sim: a decode node's capacity (req/s) at --concurrency running requests")
    p.add_argument("--lb", help="real mode: pdlb URL")
    p.add_argument("--prefill-nodes", type=pos_int, default=1, help="real mode: prefill nodes behind pdlb")
    p.add_argument("--decode-url", nargs="*", default=[], help="real mode: the decode nodes behind pdlb")
    p.add_argument("--decode-log", nargs="*", default=[], help="real mode: each decode node's log file")
    p.add_argument("--cards", type=pos_int, default=1, help="cards per decode node (default 1)")
    _measure_args(p)
    return ap


def cmd_plan(a):
    pl = planmod.plan(a.prefill_rps, a.prefill_cards, a.decode_rps, a.decode_cards, a.target_rps,
                      a.prefill_node_cards, a.decode_node_cards, a.max_concurrency)
    print(f"prefill: {pl.p_node_rps:g} req/s per node, decode: {pl.d_node_rps:g} req/s per node")
    print(pl.ratio)
    print(f"{pl.mix.name} serves {pl.mix.rate:g} req/s")
    if pl.target:
        print(f"for {a.target_rps:g} req/s: {pl.target.name} ({pl.target.prefill} prefill + "
              f"{pl.target.decode} decode nodes, up to {pl.target.rate:g} req/s)")
    print(f"bench_serving: {pl.bench_args}")
    return 0


def cmd_kv(a):
    k = planmod.kv_need(a.input, a.output, a.concurrency, a.kv_tokens)
    print(f"per request: {a.input} + {a.output} = {k.per_request} tokens")
    print(f"KV tokens needed: {a.concurrency} x {k.per_request} = {k.total} ({k.total / 1e6:.2f}M)")
    if k.fits is not None:
        if k.fits:
            print(f"fits: {k.capacity} >= {k.total} ({k.capacity - k.total} spare)")
        else:
            print(f"does NOT fit: {k.capacity} < {k.total}; at most "
                  f"{k.capacity // k.per_request} such requests at once")
            return 1
    return 0


def cmd_decode_log(a):
    try:
        r = logparse.analyse(logparse.parse_files(a.files), a.concurrency, a.cards)
    except OSError as e:
        raise ToolError(str(e)) from None
    except ValueError as e:
        raise ToolError(str(e)) from None
    print(f"{r.decode_lines} Decode batch lines, {r.prefill_lines} Prefill batch lines")
    for w in r.windows:
        print(f"{w.source}: steady window of {len(w.lines)} lines at #running-req {a.concurrency} "
              f"(lines {w.lines[0].lineno}-{w.lines[-1].lineno}): gen throughput {w.gen_throughput:.1f} "
              f"token/s, token usage up to {w.token_usage:.2f}")
    print(f"gen throughput: {r.throughput:.1f} token/s")
    print(f"TPOT: {r.tpot_ms:.2f} ms (= {a.concurrency} running / throughput)")
    print(f"per card: {r.per_card:.1f} token/s ({a.cards} cards)")
    if r.prefill_input_throughput:
        print(f"prefill input throughput: {r.prefill_input_throughput:.1f} token/s (mean of its lines)")
    for w in r.warnings:
        print(f"warning: {w}")
    return 0


def _sim_args(a, sim_bin):
    """pdlb-sim flags for nodes of the asked capacities at these lengths (sim mode only)."""
    pre = [sim_bin, "--prefill-tokens-per-s", f"{a.sim_prefill_rps * a.input_len:g}",
           "--max-prefill-tokens", str(max(16384, a.input_len))]
    # Decode: C running requests make C tokens per step; B req/s of O tokens each need steps of
    # C / (B * O) seconds at C running. Half of it is fixed, half grows with the batch, like a GPU.
    step_ms = 1000.0 * a.concurrency / (a.sim_decode_rps * a.output_len)
    dec = [sim_bin, "--step-base-ms", f"{step_ms / 2:g}", "--step-per-req-ms",
           f"{step_ms / 2 / a.concurrency:g}", "--max-running-requests", str(2 * a.concurrency),
           "--decode-log-interval", str(max(1, a.output_len // 16))]
    return pre, dec


class SimCluster:
    """xPyD pdlb-sim nodes behind a pdlb, all on 127.0.0.1 and port 0."""

    def __init__(self, a, name, n_prefill, n_decode):
        self.a, self.name = a, name
        self.procs = procs.Processes(os.path.join(os.path.abspath(a.out), "logs", name))
        sim_bin = procs.find_binary("pdlb-sim", a.bin_dir)
        pdlb_bin = procs.find_binary("pdlb", a.bin_dir)
        pre, dec = _sim_args(a, sim_bin)
        try:
            self.prefill = [self.procs.start_sim(f"prefill{i}", "prefill", pre) for i in range(n_prefill)]
            self.decode = [self.procs.start_sim(f"decode{i}", "decode", dec) for i in range(n_decode)]
            extra = ["--admin-api-key", a.admin_key] if a.admin_key else []
            self.lb, _ = self.procs.start_lb("pdlb", pdlb_bin, self.prefill, self.decode, extra)
        except BaseException:
            self.procs.stop_all()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.procs.stop_all()


def _real_phase(a, title, section, measure, summary):
    """One measurement against a running pdlb, with its report (section: pre, dec or ver)."""
    s = _settings(a, a.lb)
    os.makedirs(s.out_dir, exist_ok=True)
    result = measure(s)
    path = report.write(s.out_dir, s, title=title, **{section: result})
    print(f"{summary(result)}\nreport: {path}")
    return result


def cmd_prefill_test(a):
    _real_phase(a, "pdlb-ratio prefill test", "pre", lambda s: experiment.prefill_test(s, a.prefill_nodes),
                lambda r: f"prefill capacity: {r.per_node_rps:.2f} req/s per node")
    return 0


def cmd_decode_test(a):
    dec = _real_phase(a, "pdlb-ratio decode test", "dec",
                      lambda s: experiment.decode_test(s, a.decode_url, a.decode_log, a.cards),
                      lambda r: f"decode capacity: {r.per_node_rps:.2f} req/s per node, TPOT {r.tpot_ms:.1f} ms"
                                + ("" if r.within_slo else f" (over the TPOT SLO of {a.tpot_slo:g} ms)"))
    return 0 if dec.within_slo else 1


def _need_within_slo(dec, a):
    if not dec.within_slo:
        raise ToolError(f"the decode test's TPOT ({dec.tpot_ms:.1f} ms at {dec.concurrency} running) is over "
                        f"--tpot-slo {a.tpot_slo:g}: no ratio from it; run again with a lower --concurrency")


def cmd_verify(a):
    ver = _real_phase(a, "pdlb-ratio verify", "ver", lambda s: experiment.verify(s, a.rate),
                      lambda r: f"verify: {'PASS' if r.passed else 'FAIL'}")
    return 0 if ver.passed else 1


def cmd_run(a):
    if a.sim:
        if not a.sim_prefill_rps or not a.sim_decode_rps:
            raise ToolError("--sim needs --sim-prefill-rps and --sim-decode-rps")
        procs.LOOPBACK_ONLY = True
        return _run_sim(a)
    if not a.lb or not a.decode_url:
        raise ToolError("real mode needs --lb and --decode-url (or give --sim)")
    s = _settings(a, a.lb)
    os.makedirs(s.out_dir, exist_ok=True)
    pre = experiment.prefill_test(s, a.prefill_nodes)
    dec = experiment.decode_test(s, a.decode_url, a.decode_log, a.cards)
    _need_within_slo(dec, a)
    pl = planmod.plan(pre.per_node_rps, 1, dec.per_node_rps, 1)
    rate = min(a.prefill_nodes * pre.per_node_rps, len(a.decode_url) * dec.per_node_rps)
    print(pl.ratio)
    print(f"recommended: {pl.mix.name}")
    ver = experiment.verify(s, rate)
    note = (f"verify ran on the cluster behind {a.lb} ({a.prefill_nodes}P{len(a.decode_url)}D) at the "
            f"rate it should serve, {rate:.2f} req/s")
    path = report.write(s.out_dir, s, pre, dec, pl, ver, notes=[note])
    print(f"verify: {'PASS' if ver.passed else 'FAIL'} at {rate:.2f} req/s\nreport: {path}")
    return 0 if ver.passed else 1


def _run_sim(a):
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    print(f"sim: prefill nodes of {a.sim_prefill_rps:g} req/s, decode nodes of {a.sim_decode_rps:g} req/s "
          f"at {a.concurrency} running, input {a.input_len}, output {a.output_len}; logs in {out}/logs")
    # Prefill test (seed): one prefill node and one ordinary decode node.
    with SimCluster(a, "prefill-test", 1, 1) as c:
        s = _settings(a, c.lb)
        pre = experiment.prefill_test(s, 1)
    # Decode test: one decode node, two prefill nodes to fill it.
    with SimCluster(a, "decode-test", 2, 1) as c:
        s = _settings(a, c.lb)
        dec = experiment.decode_test(s, [d.url for d in c.decode], [d.log for d in c.decode])
    _need_within_slo(dec, a)
    pl = planmod.plan(pre.per_node_rps, 1, dec.per_node_rps, 1)
    print(pl.ratio)
    print(f"recommended: {pl.mix.name} ({pl.mix.rate:.2f} req/s)")
    with SimCluster(a, "verify", pl.mix.prefill, pl.mix.decode) as c:
        s = _settings(a, c.lb)
        ver = experiment.verify(s, pl.mix.rate)
    path = report.write(out, s, pre, dec, pl, ver, title="pdlb-ratio report (simulated nodes)",
                        notes=[f"pdlb-sim nodes: prefill {a.sim_prefill_rps:g} req/s, decode "
                               f"{a.sim_decode_rps:g} req/s at {a.concurrency} running (the "
                               "measurements do not read these numbers)"])
    print(f"verify: {'PASS' if ver.passed else 'FAIL'} at {ver.target_rps:.2f} req/s "
          f"(offered {ver.offered_rps:.2f}, achieved {ver.achieved_rps:.2f} req/s)")
    print(f"report: {path}")
    return 0 if ver.passed else 1


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    a = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    handlers = {"plan": cmd_plan, "kv": cmd_kv, "decode-log": cmd_decode_log,
                "prefill-test": cmd_prefill_test, "decode-test": cmd_decode_test,
                "verify": cmd_verify, "run": cmd_run}
    try:
        return handlers[a.cmd](a)
    except ToolError as e:
        print(f"pdlb-ratio: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"pdlb-ratio: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pdlb-ratio: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
