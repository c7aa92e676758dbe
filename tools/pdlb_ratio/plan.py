"""The seed's arithmetic: the P:D ratio from measured capacities, node mixes, KV sizing.

Pure functions, no I/O, so the unit tests check them on the seed's own numbers.
"""
import math
from dataclasses import dataclass


@dataclass
class Mix:
    prefill: int
    decode: int
    rate: float  # requests/s the mix sustains: min(prefill * p_rps, decode * d_rps)

    @property
    def name(self):
        return f"{self.prefill}P{self.decode}D"


def ratio_mix(p_rps, d_rps, tolerance=0.10, max_nodes=16):
    """Smallest xPyD whose two sides match within `tolerance`.

    One prefill node serves p_rps, one decode node d_rps, so x prefill nodes feed y decode nodes
    when x * p_rps ~= y * d_rps: x:y = d_rps:p_rps (the seed: 16 prefill cards at 5 req/s and 16
    decode cards at 10 req/s give 10:5 = 2:1, i.e. 2P1D, which serves 10 req/s).
    """
    if p_rps <= 0 or d_rps <= 0:
        raise ValueError("capacities must be > 0")
    best = None
    for total in range(2, 2 * max_nodes + 1):
        for y in range(1, total):
            x = total - y
            if x > max_nodes or y > max_nodes:
                continue
            p, d = x * p_rps, y * d_rps
            mismatch = abs(p - d) / max(p, d)
            if mismatch <= tolerance:
                return Mix(x, y, min(p, d))
            if best is None or mismatch < best[0]:
                best = (mismatch, Mix(x, y, min(p, d)))
    return best[1]


def mix_for_target(p_rps, d_rps, target_rps):
    """Fewest nodes of each kind that serve target_rps."""
    if target_rps <= 0:
        raise ValueError("target rate must be > 0")
    x = max(1, math.ceil(target_rps / p_rps - 1e-9))
    y = max(1, math.ceil(target_rps / d_rps - 1e-9))
    return Mix(x, y, min(x * p_rps, y * d_rps))


def ratio_text(mix):
    """'P:D = 2:1 (2P1D)': the mix's node counts, reduced."""
    g = math.gcd(mix.prefill, mix.decode)
    return f"P:D = {mix.prefill // g}:{mix.decode // g} ({mix.name})"


@dataclass
class Plan:
    p_node_rps: float
    d_node_rps: float
    ratio: str
    mix: Mix
    target: Mix | None
    bench_args: str


def plan(prefill_rps, prefill_cards, decode_rps, decode_cards, target_rps=None,
         prefill_node_cards=None, decode_node_cards=None, concurrency=None):
    """Per-node capacities from measurements on `*_cards` cards, the ratio and the node mixes.

    A node has `*_node_cards` cards (default: the measured card count, i.e. the measured setup is
    one node, as in the seed).
    """
    for name, v in (("prefill-rps", prefill_rps), ("decode-rps", decode_rps),
                    ("prefill-cards", prefill_cards), ("decode-cards", decode_cards)):
        if v is None or v <= 0:
            raise ValueError(f"--{name} must be > 0")
    pn = prefill_node_cards or prefill_cards
    dn = decode_node_cards or decode_cards
    p_node = prefill_rps / prefill_cards * pn
    d_node = decode_rps / decode_cards * dn
    mix = ratio_mix(p_node, d_node)
    target = mix_for_target(p_node, d_node, target_rps) if target_rps else None
    rate = target_rps if target_rps else mix.rate
    conc = concurrency if concurrency else max(1, math.ceil(rate * 10))
    bench = f"--request-rate {rate:g} --max-concurrency {conc}"
    return Plan(p_node, d_node, ratio_text(mix), mix, target, bench)


@dataclass
class KvNeed:
    per_request: int
    total: int
    fits: bool | None
    capacity: int | None


def kv_need(input_len, output_len, concurrency, kv_tokens=None):
    """KV tokens that `concurrency` requests of input+output tokens hold at their longest.

    The seed: 8k in + 2k out = 10k tokens a request; 128 at once need 128 x 10k = 1.28M tokens.
    """
    for name, v in (("input", input_len), ("output", output_len), ("concurrency", concurrency)):
        if v is None or v <= 0:
            raise ValueError(f"--{name} must be > 0")
    per = input_len + output_len
    total = per * concurrency
    fits = None if kv_tokens is None else kv_tokens >= total
    return KvNeed(per, total, fits, kv_tokens)
