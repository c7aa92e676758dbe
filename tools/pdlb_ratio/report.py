"""The Markdown report with its plots (matplotlib, Agg backend: no display needed)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _plot_prefill(pre, slo_ms, percentile, path):
    pts = sorted(pre.points, key=lambda p: p.rate)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot([p.rate for p in pts], [p.ttft_p for p in pts], "o-", label=f"TTFT p{percentile}")
    ax.plot([p.rate for p in pts], [p.ttft_mean for p in pts], "s--", label="TTFT mean", alpha=0.7)
    ax.axhline(slo_ms, color="red", linestyle=":", label=f"SLO {slo_ms:.0f} ms")
    ax.axvline(pre.capacity_rps, color="green", linestyle="--", alpha=0.6,
               label=f"capacity {pre.capacity_rps:.2f} req/s")
    ax.set_xlabel(f"request rate (req/s, {pre.nodes} prefill node(s))")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("Prefill test: TTFT vs rate (output length 1)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_decode(dec, path):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax2 = ax.twinx()
    for i in range(dec.nodes):
        pts = [(t, thr, reqs) for (t, j, thr, reqs) in dec.timeline if j == i]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", label=f"node {i} gen throughput")
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], ":", alpha=0.6, label=f"node {i} requests")
    ax.axvline(0, color="gray", linestyle="--", label="release (/slow_down null)")
    ax.set_xlabel("seconds after the release")
    ax.set_ylabel("gen throughput (token/s)")
    ax2.set_ylabel("requests on the node (/get_load)")
    ax.set_title(f"Decode test: {dec.concurrency} requests per node, released")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_cdf(ver, path):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    plotted = False
    for key, label in (("e2e", "end-to-end latency"), ("ttft", "TTFT")):
        vals = sorted(ver.samples.get(key, []))
        if vals:
            ax.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))], label=label)
            plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no request completed", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Verify: latency CDF at {ver.target_rps:.2f} req/s")
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out_dir, s, pre=None, dec=None, plan=None, ver=None, title="pdlb-ratio report", notes=()):
    """Writes OUT_DIR/report.md and its PNGs; returns the report's path."""
    os.makedirs(out_dir, exist_ok=True)
    md = [f"# {title}", ""]
    md += [f"Input {s.input_len} tokens, output {s.output_len} tokens; SLOs: TTFT p{s.percentile} <= "
           f"{s.ttft_slo_ms:.0f} ms, TPOT p{s.percentile} <= {s.tpot_slo_ms:.0f} ms.", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    if pre:
        md += ["## Prefill test", "",
               f"{pre.nodes} prefill node(s) behind pdlb, output length 1, saturation "
               f"({s.prefill_concurrency} in flight): {pre.saturation_rps:.2f} req/s.", "",
               f"| rate (req/s) | offered | achieved | TTFT p{s.percentile} (ms) | TTFT mean (ms) | failed | SLO |",
               "|---:|---:|---:|---:|---:|---:|---|"]
        for p in sorted(pre.points, key=lambda p: p.rate):
            md.append(f"| {p.rate:.2f} | {p.offered:.2f} | {p.achieved:.2f} | {p.ttft_p:.0f} | "
                      f"{p.ttft_mean:.0f} | {p.failed} | {'met' if p.ok else 'missed'} |")
        _plot_prefill(pre, s.ttft_slo_ms, s.percentile, os.path.join(out_dir, "prefill_ttft.png"))
        md += ["", f"**Prefill capacity within the SLO: {pre.capacity_rps:.2f} req/s, "
               f"{pre.per_node_rps:.2f} req/s per node.**", "",
               "![prefill TTFT vs rate](prefill_ttft.png)", ""]
    if dec:
        md += ["## Decode test", "",
               f"/slow_down through pdlb, {dec.nodes} decode node(s) filled to {dec.concurrency} "
               f"requests each in {dec.fill_s:.1f} s, then released.", "",
               "| node | gen throughput (token/s) | TPOT (ms) | req/s |", "|---|---:|---:|---:|"]
        for i, thr in enumerate(dec.per_node_tok_s):
            md.append(f"| {i} | {thr:.1f} | {1000.0 * dec.concurrency / thr:.1f} | {thr / s.output_len:.2f} |")
        for r in dec.log_results:
            for w in r.windows:
                md.append("")
                md.append(f"Log `{os.path.basename(w.source)}`: steady window of {len(w.lines)} lines at "
                          f"#running-req {dec.concurrency}, token usage up to {w.token_usage:.2f}, "
                          f"{w.retracted} retracted.")
        _plot_decode(dec, os.path.join(out_dir, "decode_throughput.png"))
        md += ["", f"**Decode capacity: {dec.per_node_rps:.2f} req/s per node, TPOT {dec.tpot_ms:.1f} ms.**",
               ""]
        md += [f"- warning: {w}" for w in dec.warnings] + ([""] if dec.warnings else [])
        md += ["![decode throughput around the release](decode_throughput.png)", ""]
    if plan:
        md += ["## Ratio", "", f"{plan.ratio}: {plan.mix.prefill} prefill node(s) at "
               f"{plan.p_node_rps:.2f} req/s and {plan.mix.decode} decode node(s) at {plan.d_node_rps:.2f} "
               f"req/s serve {plan.mix.rate:.2f} req/s.", "",
               f"**recommended: {plan.mix.name}**", "",
               f"bench_serving: `{plan.bench_args}`", ""]
    if ver:
        key = "p50" if s.percentile == 50 else f"p{s.percentile}"
        md += ["## Verify", "",
               "| target (req/s) | offered | achieved | completed | failed | TTFT mean / p50 / p90 / p99 (ms) "
               "| TPOT mean / p50 / p90 / p99 (ms) | result |",
               "|---:|---:|---:|---:|---:|---|---|---|",
               f"| {ver.target_rps:.2f} | {ver.offered_rps:.2f} | {ver.achieved_rps:.2f} | {ver.completed} | "
               f"{ver.failed} | " + " / ".join(f"{ver.ttft[k]:.0f}" for k in ("mean", "p50", "p90", "p99")) +
               " | " + " / ".join(f"{ver.tpot[k]:.1f}" for k in ("mean", "p50", "p90", "p99")) +
               f" | **{'PASS' if ver.passed else 'FAIL'}** |", ""]
        md += [f"- {r}" for r in ver.reasons] + [f"- warning: {w}" for w in ver.warnings]
        md += [""] if ver.reasons or ver.warnings else []
        md += [f"SLOs are checked at {key}. Offered and achieved rates are sends and completions per second "
               "between the 10th and 90th percentile of each (start and drain left out).", ""]
        _plot_cdf(ver, os.path.join(out_dir, "latency_cdf.png"))
        md += ["![end-to-end latency CDF](latency_cdf.png)", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    return path
