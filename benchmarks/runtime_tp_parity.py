"""Parity of tensor-parallel partitions with the unsplit model (SmolLM2-135M).

For each tp partition and crossing precision: the unsplit model greedily generates ``--new``
tokens after each prompt; the split model (``bridge.split``, which the two-process runtime
reproduces bit for bit: ``tests/bridge/test_runtime.py``) is then run teacher-forced over the
same tokens (prefill, then cached decode steps). Reported per (partition, precision):

- max |diff| of the logits over every position of the prefill and every decode step;
- top-1 agreement: the fraction of steps whose split argmax is the unsplit model's token;
- free-running agreement: the fraction of tokens equal to the unsplit greedy ones when the
  split model generates on its own (``split_generate``), up to the first divergence counted
  as disagreement from there on.

Usage: python benchmarks/runtime_tp_parity.py [--new 16] [--prompts 3] [--csv FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    [504, 3575, 282, 4649, 314],  # "The capital of France is"
    [1, 504, 2132, 282, 6499, 314, 253],
    [28, 1695, 3326, 436, 260, 3120, 282, 1217, 30, 378, 1228],
]


def tp_partitions(n_l: int, n_h: int, precision: str):
    from bridge.blocks import FFN_CLOUD, FFN_EDGE, FFN_SPLIT, FFN_TP, RunPartition

    rng = np.random.default_rng(11)
    ffn = rng.choice([FFN_EDGE, FFN_CLOUD, FFN_SPLIT, FFN_TP], n_l, p=[0.2, 0.2, 0.1, 0.5])
    return {
        "tp all, 3/9 heads, 6/16 FFN": RunPartition.tensor_parallel(n_l, n_h, 3, 6, precision),
        "tp all, 6/9 heads, 8/16 FFN": RunPartition.tensor_parallel(n_l, n_h, 6, 8, precision),
        "mixed tp/edge/cloud/split": RunPartition(rng.random((n_l, n_h)) < 0.5, ffn, precision,
                                                  False, rng.integers(1, 16, n_l)),
    }


def measure(model, part, prompt: list[int], ref_tokens: list[int]):
    """(max |diff| of logits, top-1 agreements, steps) teacher-forced over ``ref_tokens``."""
    import torch

    from bridge.split import split_forward

    full = model.forward(torch.tensor([prompt + ref_tokens[:-1]]))[0]
    logits, state = split_forward(model, part, torch.tensor([prompt]))
    diffs = [float((logits[0] - full[: len(prompt)]).abs().max())]
    agree = [int(logits[0, -1].argmax()) == ref_tokens[0]]
    for j, tok in enumerate(ref_tokens[:-1]):
        logits, state = split_forward(model, part, torch.tensor([[tok]]), state)
        row = full[len(prompt) + j]
        diffs.append(float((logits[0, -1] - row).abs().max()))
        agree.append(int(logits[0, -1].argmax()) == ref_tokens[j + 1])
    return max(diffs), sum(agree), len(agree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=16, help="generated tokens per prompt")
    ap.add_argument("--prompts", type=int, default=3, help="prompts compared (count)")
    ap.add_argument("--precisions", default="fp32,fp16,int8,int4",
                    help="comma-separated exchange precisions compared")
    ap.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = ap.parse_args()
    import torch

    from bridge.model import load_model
    from bridge.split import split_generate

    torch.set_num_threads(1)
    model = load_model()
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    prompts = PROMPTS[: args.prompts]
    refs = [model_generate(model, p, args.new) for p in prompts]
    rows = ["partition,precision,max_abs_logit_diff,top1_agreement,free_running_agreement"]
    for prec in args.precisions.split(","):
        for name, part in tp_partitions(n_l, n_h, prec).items():
            worst, agree, steps, free, total = 0.0, 0, 0, 0, 0
            for p, ref in zip(prompts, refs, strict=True):
                d, a, n = measure(model, part, p, ref)
                worst, agree, steps = max(worst, d), agree + a, steps + n
                out, _ = split_generate(model, part, p, args.new)
                first = next((i for i, (x, y) in enumerate(zip(out, ref, strict=True))
                              if x != y), len(ref))
                free, total = free + first, total + len(ref)
            line = (f"{name},{prec},{worst:.3g},{agree / steps:.4f},{free / total:.4f}")
            rows.append(line)
            print(f"{name:30s} {prec:5s} max|dlogit| {worst:9.3g}  top-1 {agree}/{steps}  "
                  f"free-running {free}/{total}", flush=True)
    if args.csv:
        Path(args.csv).write_text("\n".join(rows) + "\n")


def model_generate(model, prompt: list[int], n: int) -> list[int]:
    """Unsplit greedy tokens (the whole model, a K/V cache-free reference)."""
    return model.generate(prompt, n)


if __name__ == "__main__":
    main()
