#!/usr/bin/env python3
"""Writes the canned worker answers that the nginx stub workers serve (see docs/benchmarks.md).

  small.json          a non-stream /generate answer (16 tokens)
  sse.txt             a /generate stream of N token events (~115 bytes each) and [DONE]
  lp_prefill.txt      a prefill stream whose one event carries M input_token_logprobs, and [DONE]
  lp4k_prefill.txt    the same with fewer input logprobs (--lp4k-input)
  lp_decode.txt       a decode stream of K events with their own (empty) input_token_logprobs, and [DONE]

They follow SGLang's /generate format closely enough for pdlb, minilb and pdlb-bench's validation
(meta_info.completion_tokens counts the tokens; the final event has a finish_reason).
"""
import argparse
import json
import os
import random


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def generate_event(i, n, extra=None):
    meta = {
        "id": "stub",
        "finish_reason": {"type": "length", "length": n} if i == n else None,
        "completion_tokens": i,
    }
    if extra:
        meta.update(extra)
    return {"text": " tok", "output_ids": [1000 + i % 30000], "meta_info": meta}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--sse-events", type=int, default=1000)
    ap.add_argument("--lp-input", type=int, default=8192)
    ap.add_argument("--lp4k-input", type=int, default=4096)
    ap.add_argument("--lp-events", type=int, default=16)
    ap.add_argument("--small-tokens", type=int, default=16)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    rnd = random.Random(7)

    small = generate_event(a.small_tokens, a.small_tokens)
    small["text"] = " tok" * a.small_tokens
    small["output_ids"] = list(range(1000, 1000 + a.small_tokens))
    with open(os.path.join(a.outdir, "small.json"), "w") as f:
        f.write(compact(small))

    with open(os.path.join(a.outdir, "sse.txt"), "w") as f:
        for i in range(1, a.sse_events + 1):
            f.write("data: " + compact(generate_event(i, a.sse_events)) + "\n\n")
        f.write("data: [DONE]\n\n")

    # SGLang reports no logprob for the first prompt token.
    for name, n in (("lp_prefill.txt", a.lp_input), ("lp4k_prefill.txt", a.lp4k_input)):
        ids = [rnd.randrange(151936) for _ in range(n)]
        in_lp = [[None, ids[0], None]] + [[round(-rnd.random() * 8, 6), t, None] for t in ids[1:]]
        first = generate_event(1, 1, {"prompt_tokens": n, "input_token_logprobs": in_lp,
                                      "output_token_logprobs": [[-0.5, 1001, None]]})
        with open(os.path.join(a.outdir, name), "w") as f:
            f.write("data: " + compact(first) + "\n\ndata: [DONE]\n\n")
    with open(os.path.join(a.outdir, "lp_decode.txt"), "w") as f:
        for i in range(1, a.lp_events + 1):
            ev = generate_event(i, a.lp_events, {"input_token_logprobs": [],
                                                 "output_token_logprobs": [[-0.25, 1000 + i, None]]})
            f.write("data: " + compact(ev) + "\n\n")
        f.write("data: [DONE]\n\n")


if __name__ == "__main__":
    main()
