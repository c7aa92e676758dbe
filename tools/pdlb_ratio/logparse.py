"""SGLang's scheduler log lines: `Decode batch` and `Prefill batch`, of several SGLang eras.

Formats (each has a test with a real line in tests/test_decode_log.py):
- seed (../shared/seed/pd-ratio-method.zh.txt, SGLang of 2025-10, PD decode node):
  `[2025-10-10 08:50:41 DP7 TP7 EP7] Decode batch. #running-req: 64, #token: 508158, token usage:
  0.63, pre-allocated usage: 0.00, #retracted-req: 0, cuda graph: True, gen throughput (token/s):
  2231.5, #queue-req: 0,`
- older SGLang (python/sglang/srt/managers/scheduler.py, `log_decode_stats`, 2024): `Decode batch.
  #running-req: N, #token: N, token usage: 0.xx, gen throughput (token/s): X, #queue-req: N`
  (no trailing comma, no PD fields).
- newer SGLang (python/sglang/srt/managers/scheduler_metrics_mixin.py at commit 01bb3c80,
  `log_decode_stats`): `Decode batch, #running-req: N, #token: N, token usage: 0.xx, pre-allocated
  usage: 0.xx, #prealloc-req: N, #transfer-req: N, #retracted-req: N, cuda graph: True, gen
  throughput (token/s): X, #queue-req: N, ` with an optional ` [forward_ct]` after "batch"
  (SGLANG_LOG_FORWARD_ITERS) and `cpu graph` off CUDA; `Prefill batch, #new-seq: ...` likewise.
The prefix `[TIME DPx TPy EPz]` comes from SGLang's logging format (`[%(asctime)s{prefix}]`);
pdlb-sim writes `[TIME]` without ranks. Lines without any prefix are accepted too.
"""
import re
from dataclasses import dataclass, field

_PREFIX = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)?)(?P<ranks>[^\]]*)\]\s*")
_BATCH = re.compile(r"(?P<kind>Decode|Prefill) batch(?: \[(?P<iter>\d+)\])?[.,]\s*(?P<rest>.*)$")
_FIELD = re.compile(r"\s*(?P<key>[^:,]+?):\s*(?P<value>[^,]*)(?:,|$)")


@dataclass
class BatchLine:
    kind: str  # "decode" or "prefill"
    source: str  # file name plus the DP rank, if any: one scheduler's lines
    lineno: int
    time: str | None
    fields: dict = field(default_factory=dict)

    def num(self, key, default=None):
        v = self.fields.get(key)
        if v is None:
            return default
        try:
            return float(v)
        except ValueError:
            return default


def parse_line(text, source="", lineno=0):
    """A BatchLine for a `Decode batch` / `Prefill batch` line, else None."""
    line = text.rstrip("\n")
    ts, ranks = None, ""
    m = _PREFIX.match(line)
    if m:
        ts, ranks = m.group("ts"), m.group("ranks").strip()
        line = line[m.end():]
    b = _BATCH.search(line)
    if not b:
        return None
    fields = {}
    for f in _FIELD.finditer(b.group("rest")):
        key = f.group("key").strip()
        if key:
            fields[key] = f.group("value").strip()
    if b.group("kind") == "Decode" and "#running-req" not in fields:
        return None
    dp = next((r for r in ranks.split() if r.startswith("DP")), "")
    src = f"{source} {dp}".strip()
    return BatchLine(b.group("kind").lower(), src, lineno, ts, fields)


def parse_files(paths, start_offsets=None):
    """Batch lines of the files; with start_offsets, only what each file got past its offset (the
    lines a running node wrote during a test), unless the file shrank (then it was replaced)."""
    lines = []
    for k, path in enumerate(paths):
        with open(path, encoding="utf-8", errors="replace") as fh:
            start = (start_offsets or {}).get(k, 0)
            fh.seek(0, 2)
            fh.seek(start if 0 < start <= fh.tell() else 0)
            for i, text in enumerate(fh, 1):
                bl = parse_line(text, str(path), i)
                if bl:
                    lines.append(bl)
    return lines


@dataclass
class SourceWindow:
    source: str
    lines: list  # the lines whose throughput counts (the window minus its first line)
    gen_throughput: float  # mean token/s over those lines
    token_usage: float
    retracted: int
    queued_lines: int


@dataclass
class DecodeLogResult:
    concurrency: int
    cards: int
    windows: list
    throughput: float  # token/s, sum over sources (DP ranks) of their window means
    tpot_ms: float
    per_card: float
    warnings: list
    decode_lines: int
    prefill_lines: int
    prefill_input_throughput: float | None


def steady_window(lines, concurrency):
    """The longest run of consecutive decode lines whose #running-req equals `concurrency`.

    A line's gen throughput covers the time since the previous line, so the run's first line
    (which covers time before the batch was full, e.g. the /slow_down sleep) is dropped.
    """
    best, cur = [], []
    for bl in lines:
        if bl.num("#running-req") == concurrency:
            cur.append(bl)
            if len(cur) > len(best):
                best = list(cur)
        else:
            cur = []
    return best[1:]


def analyse(lines, concurrency, cards=1):
    """Mean gen throughput in the steady window of each source, TPOT, per-card throughput."""
    if concurrency <= 0 or cards <= 0:
        raise ValueError("--concurrency and --cards must be > 0")
    decode = [bl for bl in lines if bl.kind == "decode"]
    prefill = [bl for bl in lines if bl.kind == "prefill"]
    if not decode:
        raise ValueError("no 'Decode batch' line found")
    sources = {}
    for bl in decode:
        sources.setdefault(bl.source, []).append(bl)
    windows, warnings = [], []
    for src, ls in sources.items():
        win = steady_window(ls, concurrency)
        if not win:
            seen = sorted({int(bl.num("#running-req", -1)) for bl in ls})
            shown = ", ".join(str(v) for v in seen[:12]) + (" ..." if len(seen) > 12 else "")
            raise ValueError(
                f"{src}: no steady window with #running-req == {concurrency} over two or more lines "
                f"(values seen: {shown}); fill the node until it holds {concurrency} requests, "
                f"with --max-running-requests {concurrency}")
        thr = sum(bl.num("gen throughput (token/s)", 0.0) for bl in win) / len(win)
        usage = max(bl.num("token usage", 0.0) for bl in win)
        retracted = sum(int(bl.num("#retracted-req", 0)) for bl in win)
        queued = sum(1 for bl in win if bl.num("#queue-req", 0) > 0)
        if retracted:
            warnings.append(f"{src}: {retracted} retracted requests inside the window (KV cache too "
                            f"small for {concurrency} requests: see `pdlb-ratio kv`)")
        if queued:
            warnings.append(f"{src}: #queue-req > 0 in {queued} of {len(win)} window lines (requests "
                            f"waited for a slot or for KV memory)")
        if len(win) < 3:
            warnings.append(f"{src}: the steady window has only {len(win)} line(s); lower "
                            f"--decode-log-interval or use longer outputs")
        windows.append(SourceWindow(src, win, thr, usage, retracted, queued))
    total = sum(w.gen_throughput for w in windows)
    tpot = 1000.0 * concurrency * len(windows) / total if total > 0 else float("inf")
    pin = None
    if prefill:
        vals = [bl.num("input throughput (token/s)") for bl in prefill]
        vals = [v for v in vals if v is not None and v > 0]
        pin = sum(vals) / len(vals) if vals else None
    return DecodeLogResult(concurrency, cards, windows, total, tpot, total / cards, warnings,
                           len(decode), len(prefill), pin)
