"""The structured partition (the action) and its common special cases.

Per layer `l`: `edge_heads[l]` = number of query heads on the edge (heads are exchangeable for
latency and energy; which ones follows the importance order, see `costmodel.spec`), `ffn[l]` in
{EDGE, CLOUD, SPLIT, TP} (split: gate/up projections on the edge, down projection on the cloud,
the d_ff-wide activation crossing; tp: tensor-parallel, `ffn_frac[l] / TP_GRID` of the d_ff
intermediate columns on the edge and the rest on the cloud, both sides computing concurrently
and exchanging partial sums, so that the residual stream is held on both sides afterwards).
One activation precision `act_prec` (index into ACT_PRECISIONS) for everything that crosses
the link, and `embed_edge`: whether the embedding (and so the prompt) stays on the edge. The LM
head runs on the side where the residual stream ends after the last layer, or on the
embedding's side when it ends on both (moving it elsewhere only adds a crossing).

The tp grid is 1/16 of d_ff: 688-column blocks for LLaMA-7B (d_ff = 11008), 96-column blocks
for SmolLM2 (d_ff = 1536), whole multiples of 16 columns on every built-in card, so a real
kernel runs each side's share as whole tiles; `ffn_frac` in 1..15 with TP (0 and 16 are the edge
and cloud FFNs), 0 and ignored otherwise (docs/design.md §1, §2.8).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

EDGE, CLOUD, SPLIT, TP = 0, 1, 2, 3
BOTH = 2  # residual side state: held on both sides (after a tp layer)
FFN_SIDES = ("edge", "cloud", "split", "tp")
TP_GRID = 16  # the edge's share of a tp FFN is ffn_frac / TP_GRID
ACT_PRECISIONS = ("fp16", "int8", "int4")
ACT_BYTES = (2.0, 1.0, 0.5)  # bytes per activation element crossing the link


@struct.dataclass
class Partition:
    """int32 [L] edge_heads, int32 [L] ffn, int32 [] act_prec, bool [] embed_edge, int32 [L]
    ffn_frac (the edge's tp share in units of 1/TP_GRID; 0 unless ffn == TP)."""

    edge_heads: jnp.ndarray
    ffn: jnp.ndarray
    act_prec: jnp.ndarray
    embed_edge: jnp.ndarray
    ffn_frac: jnp.ndarray


def make_partition(edge_heads, ffn, act_prec=0, embed_edge=True, ffn_frac=None) -> Partition:
    ffn = jnp.asarray(ffn, jnp.int32)
    frac = jnp.zeros_like(ffn) if ffn_frac is None else jnp.asarray(ffn_frac, jnp.int32)
    return Partition(jnp.asarray(edge_heads, jnp.int32), ffn, jnp.asarray(act_prec, jnp.int32),
                     jnp.asarray(embed_edge, bool), jnp.broadcast_to(frac, ffn.shape))


def edge_only(n_layers: int, n_heads: int) -> Partition:
    return make_partition(np.full(n_layers, n_heads), np.full(n_layers, EDGE))


def cloud_only(n_layers: int, act_prec: int = 0) -> Partition:
    return make_partition(np.zeros(n_layers), np.full(n_layers, CLOUD), act_prec, False)


def layer_cut(n_layers: int, n_heads: int, cut: int, act_prec: int = 0) -> Partition:
    """Layers < cut on the edge, the rest on the cloud (cut = n_layers is edge-only)."""
    if not 0 <= cut <= n_layers:
        raise ValueError(f"cut must be in [0, {n_layers}], got {cut}")
    on_edge = np.arange(n_layers) < cut
    return make_partition(np.where(on_edge, n_heads, 0), np.where(on_edge, EDGE, CLOUD),
                          act_prec, True)


def check_partition(p: Partition, n_layers: int, n_heads: int) -> None:
    """Raise ValueError naming the field if a concrete partition is out of range."""
    heads, ffn = np.asarray(p.edge_heads), np.asarray(p.ffn)
    if heads.shape != (n_layers,) or ffn.shape != (n_layers,):
        raise ValueError(f"edge_heads and ffn must have shape ({n_layers},), got "
                         f"{heads.shape} and {ffn.shape}")
    if heads.min() < 0 or heads.max() > n_heads:
        raise ValueError(f"edge_heads must be in [0, {n_heads}]")
    if not np.isin(ffn, (EDGE, CLOUD, SPLIT, TP)).all():
        raise ValueError("ffn must be 0 (edge), 1 (cloud), 2 (split) or 3 (tp)")
    frac = np.asarray(p.ffn_frac)
    if frac.shape != (n_layers,):
        raise ValueError(f"ffn_frac must have shape ({n_layers},), got {frac.shape}")
    if not np.where(ffn == TP, (frac >= 1) & (frac < TP_GRID), True).all():
        raise ValueError(f"ffn_frac must be in [1, {TP_GRID - 1}] where ffn is tp")
    if not 0 <= int(p.act_prec) < len(ACT_PRECISIONS):
        raise ValueError(f"act_prec must index {ACT_PRECISIONS}")
