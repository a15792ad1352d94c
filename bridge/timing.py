"""Wall-clock time of each block type on this machine, for the device-profile fit.
Design: ``docs/design.md §2.1``.

``time_blocks`` runs every block of one layer (and the embedding / LM head) at several token
counts ``T`` (a prefill of ``T`` tokens, attention over those ``T`` positions, causal), with
warm-up calls and the median over repeats, and returns rows ``(block, side, tokens,
precision, seconds)``. Block names:

- ``attn_k{k}``: one head group of ``k`` query heads (RMSNorm, Q/K/V of the K/V heads they
  read, RoPE, attention, their ``W_O`` slice), ``k`` in ``head_counts``; heads ``0..k-1``;
- ``ffn_w1``: RMSNorm + gate and up projections + SiLU product (the edge half of a split FFN);
- ``ffn_w2``: the down projection (the cloud half);
- ``ffn``: the whole FFN block;
- ``lm_head``: final RMSNorm + LM head;
- ``embedding``: the token-embedding lookup.

``side`` is ``"edge"`` (this machine) and ``precision`` is ``"fp32"`` (the weights are run in
float32). ``write_csv`` writes the rows with header ``block,side,tokens,precision,seconds``.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from bridge.model import LlamaModel, attn_heads_block, ffn_block, ffn_down_block, ffn_up_block

CSV_COLUMNS = ("block", "side", "tokens", "precision", "seconds")


def median_seconds(fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def time_blocks(
    model: LlamaModel,
    token_counts: Sequence[int] = (1, 16, 64, 256),
    head_counts: Sequence[int] | None = None,
    layer: int = 0,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = 2,
    progress: Callable[[str], None] | None = None,
) -> list[tuple[str, str, int, str, float]]:
    """Median times of every block type of ``model`` (layer ``layer``) at each token count.

    head_counts defaults to ``1..H``. ``threads``: torch threads while timing (None: keep the
    current setting); the previous setting is restored on return.
    Returns rows ``(block, "edge", tokens, "fp32", seconds)``.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_blocks(model, token_counts, head_counts, layer, warmup, repeats, progress)
    finally:
        torch.set_num_threads(before)


def _time_blocks(model, token_counts, head_counts, layer, warmup, repeats, progress):
    cfg, lw = model.cfg, model.layers[layer]
    head_counts = range(1, cfg.n_heads + 1) if head_counts is None else head_counts
    gen = torch.Generator().manual_seed(0)
    rows = []
    for t in token_counts:
        x = torch.randn(1, t, cfg.d_model, generator=gen)
        a = torch.randn(1, t, cfg.d_ff, generator=gen)
        tokens = torch.randint(0, cfg.vocab_size, (1, t), generator=gen)
        blocks: list[tuple[str, Callable[[], object]]] = [
            (f"attn_k{k}", lambda k=k, x=x: attn_heads_block(cfg, lw, x, list(range(k))))
            for k in head_counts
        ]
        blocks += [
            ("ffn_w1", lambda x=x: ffn_up_block(cfg, lw, x)),
            ("ffn_w2", lambda a=a: ffn_down_block(lw, a)),
            ("ffn", lambda x=x: ffn_block(cfg, lw, x)),
            ("lm_head", lambda x=x: model.lm_head_block(x)),
            ("embedding", lambda tokens=tokens: model.embed_block(tokens)),
        ]
        for name, fn in blocks:
            sec = median_seconds(fn, warmup, repeats)
            rows.append((name, "edge", int(t), "fp32", sec))
            if progress is not None:
                progress(f"{name} T={t}: {sec * 1e3:.3f} ms")
    return rows


def write_csv(rows: Iterable[tuple], path: str | Path) -> Path:
    """Write timing rows under the header ``CSV_COLUMNS``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for block, side, tokens, precision, seconds in rows:
            w.writerow([block, side, tokens, precision, f"{seconds:.9g}"])
    return path


def measure_to_csv(path: str | Path, model: LlamaModel | None = None, **kwargs) -> Path:
    """Time the blocks of ``model`` (default: SmolLM2-135M) and write the CSV to ``path``."""
    from bridge.model import load_model

    return write_csv(time_blocks(model or load_model(), **kwargs), path)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bridge.timing --out FILE.csv``: time SmolLM2-135M's blocks on this machine."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description="Time each block type of SmolLM2-135M (CSV).")
    p.add_argument("--out", type=Path, required=True, help="CSV of block times to write")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 256],
                   help="tokens per pass timed (counts)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per block (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per block first")
    p.add_argument("--threads", type=int, default=2, help="torch threads while timing")
    a = p.parse_args(argv)
    measure_to_csv(
        a.out,
        token_counts=a.tokens,
        repeats=a.repeats,
        warmup=a.warmup,
        threads=a.threads,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )


if __name__ == "__main__":
    main()
