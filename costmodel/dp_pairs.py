"""Two-layer moves from a partition, with the edge memory exact (docs/design.md §4.3).

The memory-resource DP rounds option memories to a unit, so the partition it offers as fitting
can sit a little above the best that truly fits: on the 70B-shaped card with the edge's budget
binding, the best fitting partitions hold a block of layers on the edge with a *mixed* layer at
each end, and the rounded DP's choice of those two layers is about 0.1 % off (docs/design.md
§4.3). This module re-chooses the options of two layers at once, the rest held, with the
memory exact: for a pair ``(i, j)`` it minimizes the linear weights' value of the move subject
to ``mem(i) + mem(j) <= slack`` by sorting ``j``'s options by memory and taking, for each option
of ``i``, the best of ``j``'s that fits the memory ``i`` leaves (a running minimum and a
``searchsorted``: O(O log O) a pair, not O^2).

A move keeps each layer's residual sides (its input side is the previous layer's output, and
its options are those ending on the same side), so the partition stays in the option space.
Candidates are the layers where the residual changes side and the mixed layers (neither every
head and the FFN on the edge nor all on the cloud), side changes first, at most ``n_cand``;
every pair of them is tried. The caller re-evaluates what it takes (``lyapunov.oracle``: the
exact slot objective and both budgets): a move is a proposal, never a certificate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from costmodel.costs import sides
from costmodel.dp import (
    BIG,
    SlotTables,
    Weights,
    _out_index,
    _wvec,
    n_ffn_options,
    option_index,
    option_partition,
    path_totals,
)
from costmodel.partition import CLOUD, EDGE, Partition

N_CAND = 2  # candidate layers, every pair of them tried (docs/design.md §4.3: two suffice there)
BUDGET_RTOL = 1e-6  # slack on the budget against float32 sums; the caller re-checks the fit


@struct.dataclass
class PairMoves:
    """Per proposal (pair x option of the pair's first layer), flat: the two layers, their new
    options (index ``k * F + f`` of ``SlotTables``), the partition's six totals after the move
    (``dp.SIX``) and the move's value under the weights (``BIG`` where none fits)."""

    layers: jnp.ndarray  # int [N, 2]
    options: jnp.ndarray  # int [N, 2]
    six: jnp.ndarray  # float [N, 6]
    value: jnp.ndarray  # float [N]


def candidates(part: Partition, n_heads: int, n_cand: int = N_CAND):
    """int [n_cand]: the layers where the residual changes side, then the mixed ones, in
    layer order within each; ``L`` pads where there are fewer."""
    n_l = part.edge_heads.shape[0]
    s_in, s_last = sides(part)
    s_out = jnp.concatenate([s_in[1:], s_last[None]])
    all_edge = (part.edge_heads == n_heads) & (part.ffn == EDGE)
    all_cloud = (part.edge_heads == 0) & (part.ffn == CLOUD)
    rank = jnp.where(s_in != s_out, 0, jnp.where(all_edge | all_cloud, 2, 1))
    order = jnp.argsort(rank * n_l + jnp.arange(n_l))[:n_cand]
    cand = jnp.where(rank[order] < 2, order, n_l)
    return jnp.concatenate([cand, jnp.full((n_cand - cand.shape[0],), n_l, cand.dtype)])


def _prefix_argmin(v):
    """(running minimum of ``v``, the index where it was attained first)."""
    run = jax.lax.cummin(v)
    k = jnp.arange(v.shape[0])
    new = v < jnp.concatenate([jnp.full((1,), jnp.inf, v.dtype), run[:-1]])
    return run, jax.lax.cummax(jnp.where(new, k, 0))


def pair_moves(tb: SlotTables, w: Weights, part: Partition, budget_gb,
               n_cand: int = N_CAND) -> PairMoves:
    """The best two-layer moves of ``part`` under the additive weights ``w`` whose exact edge
    memory (``dp.SIX`` row 4, GB) stays within ``budget_gb``: for each candidate pair and each
    option of its first layer, the second layer's best option that fits (see the module
    docstring). The partition's precision must be among ``tb.precisions``."""
    n_l = part.edge_heads.shape[0]
    n_f = n_ffn_options(tb.tp)
    n_h = tb.base.shape[-1] // n_f - 1
    _, out = _out_index(tb.tp, n_h)
    out = jnp.asarray(out)
    s_in, _ = sides(part)
    opt = option_index(part, tb.tp)
    qi = jnp.argmax(tb.precisions == part.act_prec)
    total = path_totals(tb, part)  # [6]
    slack = budget_gb * (1.0 + BUDGET_RTOL) - total[4]  # the caller checks what it takes

    cand = candidates(part, n_h, n_cand)
    lc = jnp.minimum(cand, n_l - 1)  # only the candidates' rows: [6, n_cand, O]
    rows = tb.base[:, qi, s_in[lc]].at[3].add(tb.acc_layer[lc])
    delta = rows - rows[:, jnp.arange(n_cand), opt[lc]][..., None]
    ok = tb.allowed[lc, s_in[lc]] & (out[None, :] == out[opt[lc]][:, None])
    ok = ok & jnp.isfinite(delta).all(0) & (cand < n_l)[:, None]
    value = jnp.where(ok, jnp.tensordot(_wvec(w), jnp.where(ok[None], delta, 0.0), 1), BIG)
    mem = jnp.where(ok, delta[4], BIG)
    ii, jj = jnp.triu_indices(n_cand, 1)

    def one(i, j):
        order = jnp.argsort(mem[j])
        m_sorted = mem[j][order]
        best_v, best_k = _prefix_argmin(value[j][order])
        pos = jnp.searchsorted(m_sorted, slack - mem[i], side="right") - 1
        v2 = jnp.where(pos >= 0, best_v[jnp.maximum(pos, 0)], BIG)
        o2 = order[best_k[jnp.maximum(pos, 0)]]
        v = jnp.where(ok[i] & (v2 < BIG), value[i] + v2, BIG)
        six = total[None, :] + delta[:, i, :].T + delta[:, j, o2].T
        return (jnp.broadcast_to(jnp.stack([lc[i], lc[j]]), (v.shape[0], 2)),
                jnp.stack([jnp.arange(v.shape[0]), o2], -1), six, v)

    layers, options, six, v = jax.vmap(one)(ii, jj)
    return PairMoves(layers.reshape(-1, 2), options.reshape(-1, 2), six.reshape(-1, 6),
                     v.reshape(-1))


def apply_move(part: Partition, layers, options, tp: bool) -> Partition:
    """``part`` with the two layers' options replaced (``pair_moves``'s indices)."""
    n_f = n_ffn_options(tp)
    opt = option_index(part, tp).at[layers].set(options)
    return option_partition(opt // n_f, opt % n_f, part.act_prec, part.embed_edge, tp)
