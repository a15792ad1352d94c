"""Partitioned execution of the Llama model between an edge and a cloud side.

Semantics (``docs/design.md §1``). The partition is the runtime's ``bridge.blocks.RunPartition``:
per layer ``l``, the side of each head (``head_on_edge[l, h]``), the FFN side ``ffn[l]`` in
{0: edge, 1: cloud, 2: split, 3: tp} (tp with its edge share ``ffn_frac[l] / 16``) and one
precision for every tensor that crosses the link. The residual stream lives on one side, or
on both after a tensor-parallel layer; it starts where the embedding runs (``embed_edge``)
and the LM head runs where it ends (``final_side``: the cloud unless the last FFN is on the
edge; the embedding's side after a last tp layer), as in the cost model (``docs/design.md
§2.3``).

One layer, with the residual ``x`` on side ``s``. The attention outputs are summed on the
*FFN side* ``a`` (the FFN's side; the edge for a split FFN, whose first half runs there), and
``o`` denotes the side other than ``s``:

- ``s == a``: heads on ``s`` read ``x``; if ``o`` has heads, ``x`` crosses to ``o``
  (``attn_in``) and their partial output crosses back (``attn_out``).
- ``s != a`` and ``a`` has heads: ``x`` crosses to ``a`` (``attn_in``) and the residual
  continues there from the received copy; if ``s`` has heads too, their partial output
  crosses to ``a`` (``attn_out``).
- ``s != a`` and all heads on ``s``: ``x + attn(x)`` crosses to ``a`` (``attn_out``).
- ``x`` on both sides (after a tensor-parallel layer): nothing enters; heads on ``a`` read
  their copy, the other side's partial output crosses to ``a`` (``attn_out``) if it holds
  heads.
- FFN on ``a`` (edge or cloud): ``h + FFN(h)`` stays on ``a``. Split FFN: ``u = W1 part(h)``
  on the edge, then ``h`` and ``u`` cross to the cloud in one message (``ffn_split``) and the
  cloud adds ``W_down u``; the residual is then on the cloud.
- Tensor-parallel FFN (``ffn == 3``, the edge holding ``ffn_frac / 16`` of the ``d_ff``
  columns): the residual enters both sides (``attn_in`` from ``s`` if the other side holds
  heads; otherwise ``x + partial`` of ``s`` crosses as its exchange), each side with heads
  sends its partial output (``tp_attn``) and both add them, edge's first; then each side runs
  its FFN columns and sends the partial output (``tp_ffn``), both add them. Both sides use
  every exchanged tensor as the receiver sees it, so the residual held on both is one value
  (here: one tensor), and the LM head runs on the embedding's side when the last layer is
  tp.

Every crossing goes through ``bridge.quant.cross(tensor, precision)`` and is logged as a
``Crossing`` (one per message). Each head keeps its K/V cache on the side where it runs; a
K/V head read by query heads on both sides is computed and cached on both (from each side's
copy of the layer input: equal in fp32).
"""

from __future__ import annotations

import dataclasses

import torch

from bridge.blocks import BOTH, CLOUD, EDGE, FFN_CLOUD, FFN_SPLIT, FFN_TP, RunPartition
from bridge.model import (
    KVCache,
    LlamaModel,
    attn_heads_block,
    ffn_block,
    ffn_cols_block,
    ffn_columns,
    ffn_down_block,
    ffn_up_block,
)
from bridge.quant import cross, wire_bytes


@dataclasses.dataclass(frozen=True)
class Crossing:
    """One message over the link."""

    stage: str  # "tokens", "attn_in", "attn_out", "ffn_split", "tp_attn", "tp_ffn", "token_out"
    layer: int  # layer index (-1 before the first layer, L after the last)
    src: int  # sending side (0 edge, 1 cloud)
    elements: int  # number of values sent (all tensors of the message)
    bytes: float  # payload at the partition's precision (+ one fp16 scale per row for ints)


@dataclasses.dataclass(frozen=True)
class SplitState:
    """K/V caches per (side, layer), number of positions processed, and the crossing log."""

    kv: dict[tuple[int, int], KVCache]
    offset: int
    crossings: tuple[Crossing, ...]


class _Link:
    """Applies ``cross`` to each message and records it."""

    def __init__(self, precision: str):
        self.precision = precision
        self.log: list[Crossing] = []

    def send(self, tensors: list[torch.Tensor], stage: str, layer: int, src: int):
        elements = sum(t.numel() for t in tensors)
        nbytes = sum(wire_bytes(t.numel(), self.precision, t.shape[-1]) for t in tensors)
        self.log.append(Crossing(stage, layer, src, elements, nbytes))
        return [cross(t, self.precision) for t in tensors]


def _layer(
    model: LlamaModel,
    part: RunPartition,
    i: int,
    x: torch.Tensor,
    s: int,
    offset: int,
    kv: dict[tuple[int, int], KVCache],
    link: _Link,
) -> tuple[torch.Tensor, int]:
    """One layer under ``part`` with the residual on side ``s`` (EDGE, CLOUD or BOTH);
    returns (residual, side)."""
    cfg, layer = model.cfg, model.layers[i]
    heads = {
        EDGE: [h for h in range(cfg.n_heads) if part.head_on_edge[i, h]],
        CLOUD: [h for h in range(cfg.n_heads) if not part.head_on_edge[i, h]],
    }
    f = int(part.ffn[i])
    a = CLOUD if f == FFN_CLOUD else EDGE
    o = 1 - s

    def partial(side: int, x_in: torch.Tensor) -> torch.Tensor:
        p, kv[(side, i)] = attn_heads_block(
            cfg, layer, x_in, heads[side], offset, kv.get((side, i))
        )
        return p

    if f == FFN_TP:
        if s != BOTH and heads[o]:
            (x,) = link.send([x], "attn_in", i, s)
            s = BOTH
        if s == BOTH:
            h = x
            for side in (EDGE, CLOUD):
                if heads[side]:
                    (p,) = link.send([partial(side, x)], "tp_attn", i, side)
                    h = h + p
        else:
            (h,) = link.send([x + partial(s, x)], "tp_attn", i, s)
        parts = []
        for side in (EDGE, CLOUD):
            lo, hi = part.tp_columns(i, cfg.d_ff, side)
            y = ffn_cols_block(cfg, layer, h, ffn_columns(layer, lo, hi))
            parts.append(link.send([y], "tp_ffn", i, side)[0])
        return h + parts[0] + parts[1], BOTH

    if s == BOTH:
        o = 1 - a
        h = x + partial(a, x) if heads[a] else x
        if heads[o]:
            (p_o,) = link.send([partial(o, x)], "attn_out", i, o)
            h = h + p_o
    elif s == a:
        h = x + partial(s, x) if heads[s] else x
        if heads[o]:
            (x_o,) = link.send([x], "attn_in", i, s)
            (p_o,) = link.send([partial(o, x_o)], "attn_out", i, o)
            h = h + p_o
    elif heads[a]:
        (x_a,) = link.send([x], "attn_in", i, s)
        h = x_a + partial(a, x_a)
        if heads[s]:
            (p_s,) = link.send([partial(s, x)], "attn_out", i, s)
            h = h + p_s
    else:
        (h,) = link.send([x + partial(s, x)], "attn_out", i, s)

    if f == FFN_SPLIT:
        u = ffn_up_block(cfg, layer, h)
        h_c, u_c = link.send([h, u], "ffn_split", i, EDGE)
        return h_c + ffn_down_block(layer, u_c), CLOUD
    return h + ffn_block(cfg, layer, h), a


@torch.no_grad()
def split_forward(
    model: LlamaModel,
    part: RunPartition,
    tokens: torch.Tensor,
    state: SplitState | None = None,
) -> tuple[torch.Tensor, SplitState]:
    """Logits ``[B, T, V]`` of ``tokens [B, T]`` under ``part``: a prefill when ``state`` is
    None, otherwise the next positions after ``state.offset`` (decode) using its K/V caches.

    Returns the logits and the new state (caches extended, this call's crossings appended).
    """
    cfg = model.cfg
    if part.head_on_edge.shape != (cfg.n_layers, cfg.n_heads):
        raise ValueError(f"partition shape {part.head_on_edge.shape} does not fit the model")
    offset = 0 if state is None else state.offset
    kv = {} if state is None else dict(state.kv)
    link = _Link(part.precision)
    if part.embed_side != EDGE:
        link.log.append(Crossing("tokens", -1, EDGE, tokens.numel(), 4.0 * tokens.numel()))
    x, s = model.embed_block(tokens), part.embed_side
    for i in range(cfg.n_layers):
        x, s = _layer(model, part, i, x, s, offset, kv, link)
    logits = model.lm_head_block(x)  # on side part.final_side
    if part.final_side != EDGE:
        n = tokens.shape[0]
        link.log.append(Crossing("token_out", cfg.n_layers, CLOUD, n, 4.0 * n))
    prev = () if state is None else state.crossings
    return logits, SplitState(
        kv=kv, offset=offset + tokens.shape[1], crossings=prev + tuple(link.log)
    )


@torch.no_grad()
def split_generate(
    model: LlamaModel, part: RunPartition, prompt: list[int], n_new: int
) -> tuple[list[int], SplitState]:
    """Greedy decoding under ``part``: one prefill of ``prompt``, then ``n_new - 1`` cached
    decode steps. Returns the ``n_new`` generated ids and the final state."""
    logits, state = split_forward(model, part, torch.tensor([prompt]))
    out = [int(logits[0, -1].argmax())]
    while len(out) < n_new:
        logits, state = split_forward(model, part, torch.tensor([[out[-1]]]), state)
        out.append(int(logits[0, -1].argmax()))
    return out, state
