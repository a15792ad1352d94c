"""Partitioned execution of the Llama model between an edge and a cloud side.

Semantics (``shared/design/system-model.md`` section 2). A partition gives, per layer ``l``,
the side of each head (``head_on_edge[l, h]``), the FFN side ``ffn_side[l]`` in
{0: edge, 1: cloud, 2: split} and one precision for every tensor that crosses the link. The
residual stream lives on one side at a time; it starts where the embedding runs (edge by
default) and must reach the LM head's side (edge by default) at the end.

One layer, with the residual ``x`` on side ``s``. The attention outputs are summed on the
*FFN side* ``a`` (the FFN's side; the edge for a split FFN, whose first half runs there), and
``o`` denotes the side other than ``s``:

- ``s == a``: heads on ``s`` read ``x``; if ``o`` has heads, ``x`` crosses to ``o``
  (``attn_in``) and their partial output crosses back (``attn_out``).
- ``s != a`` and ``a`` has heads: ``x`` crosses to ``a`` (``attn_in``) and the residual
  continues there from the received copy; if ``s`` has heads too, their partial output
  crosses to ``a`` (``attn_out``).
- ``s != a`` and all heads on ``s``: ``x + attn(x)`` crosses to ``a`` (``attn_out``).
- FFN on ``a`` (edge or cloud): ``h + FFN(h)`` stays on ``a``. Split FFN: ``u = W1 part(h)``
  on the edge, then ``h`` and ``u`` cross to the cloud in one message (``ffn_split``) and the
  cloud adds ``W_down u``; the residual is then on the cloud.

Every crossing goes through ``bridge.quant.cross(tensor, precision)`` and is logged as a
``Crossing`` (one per message). Each head keeps its K/V cache on the side where it runs; a
K/V head read by query heads on both sides is computed and cached on both (from each side's
copy of the layer input: equal in fp32).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bridge.model import (
    KVCache,
    LlamaModel,
    attn_heads_block,
    ffn_block,
    ffn_down_block,
    ffn_up_block,
)
from bridge.quant import PRECISIONS, cross, wire_bytes

EDGE, CLOUD = 0, 1
FFN_EDGE, FFN_CLOUD, FFN_SPLIT = 0, 1, 2


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """A head/FFN-granular partition of the model plus the link precision.

    head_on_edge: bool [L, H]; True = the head runs on the edge.
    ffn_side: int [L]; 0 = edge, 1 = cloud, 2 = split (gate/up on edge, down on cloud).
    precision: "fp32" (no quantization), "fp16", "int8" or "int4" for all crossing tensors.
    embed_side, lm_head_side: where the embedding and the LM head run (edge by default).
    """

    head_on_edge: np.ndarray
    ffn_side: np.ndarray
    precision: str = "fp32"
    embed_side: int = EDGE
    lm_head_side: int = EDGE

    def __post_init__(self):
        heads = np.asarray(self.head_on_edge, dtype=bool)
        ffn = np.asarray(self.ffn_side, dtype=np.int64)
        if heads.ndim != 2 or ffn.shape != (heads.shape[0],):
            raise ValueError(f"head_on_edge [L, H] and ffn_side [L], got {heads.shape} {ffn.shape}")
        if not np.isin(ffn, (FFN_EDGE, FFN_CLOUD, FFN_SPLIT)).all():
            raise ValueError("ffn_side entries must be 0 (edge), 1 (cloud) or 2 (split)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        object.__setattr__(self, "head_on_edge", heads)
        object.__setattr__(self, "ffn_side", ffn)

    @classmethod
    def layer_cut(cls, n_layers: int, n_heads: int, cut: int, precision: str = "fp32"):
        """Layers ``< cut`` (heads and FFN) on the edge, the rest on the cloud."""
        on_edge = np.arange(n_layers) < cut
        return cls(
            head_on_edge=np.repeat(on_edge[:, None], n_heads, axis=1),
            ffn_side=np.where(on_edge, FFN_EDGE, FFN_CLOUD),
            precision=precision,
        )

    @classmethod
    def edge_only(cls, n_layers: int, n_heads: int, precision: str = "fp32"):
        """Everything on the edge (no crossing)."""
        return cls.layer_cut(n_layers, n_heads, n_layers, precision)

    @classmethod
    def cloud_only(cls, n_layers: int, n_heads: int, precision: str = "fp32"):
        """All layers on the cloud; embedding and LM head stay on the edge."""
        return cls.layer_cut(n_layers, n_heads, 0, precision)


@dataclasses.dataclass(frozen=True)
class Crossing:
    """One message over the link."""

    stage: str  # "tokens", "attn_in", "attn_out", "ffn_split", "lm_head_in", "token_out"
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
    part: Partition,
    i: int,
    x: torch.Tensor,
    s: int,
    offset: int,
    kv: dict[tuple[int, int], KVCache],
    link: _Link,
) -> tuple[torch.Tensor, int]:
    """One layer under ``part`` with the residual on side ``s``; returns (residual, side)."""
    cfg, layer = model.cfg, model.layers[i]
    heads = {
        EDGE: [h for h in range(cfg.n_heads) if part.head_on_edge[i, h]],
        CLOUD: [h for h in range(cfg.n_heads) if not part.head_on_edge[i, h]],
    }
    f = int(part.ffn_side[i])
    a = CLOUD if f == FFN_CLOUD else EDGE
    o = 1 - s

    def partial(side: int, x_in: torch.Tensor) -> torch.Tensor:
        p, kv[(side, i)] = attn_heads_block(
            cfg, layer, x_in, heads[side], offset, kv.get((side, i))
        )
        return p

    if s == a:
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
    part: Partition,
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
    if s != part.lm_head_side:
        (x,) = link.send([x], "lm_head_in", cfg.n_layers, s)
    logits = model.lm_head_block(x)
    if part.lm_head_side != EDGE:
        n = tokens.shape[0]
        link.log.append(Crossing("token_out", cfg.n_layers, CLOUD, n, 4.0 * n))
    prev = () if state is None else state.crossings
    return logits, SplitState(
        kv=kv, offset=offset + tokens.shape[1], crossings=prev + tuple(link.log)
    )


@torch.no_grad()
def split_generate(
    model: LlamaModel, part: Partition, prompt: list[int], n_new: int
) -> tuple[list[int], SplitState]:
    """Greedy decoding under ``part``: one prefill of ``prompt``, then ``n_new - 1`` cached
    decode steps. Returns the ``n_new`` generated ids and the final state."""
    logits, state = split_forward(model, part, torch.tensor([prompt]))
    out = [int(logits[0, -1].argmax())]
    while len(out) < n_new:
        logits, state = split_forward(model, part, torch.tensor([[out[-1]]]), state)
        out.append(int(logits[0, -1].argmax()))
    return out, state
