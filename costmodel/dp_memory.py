"""Memory-resource DP: the edge memory budget as a resource dimension (docs/design.md §4).

The budget is cut into `units` equal parts (coarser if one option would span more than
`shifts` units); each layer option's memory and each endpoint's
(embedding and LM head, by the embedding side and the final side) is rounded to whole units. State:
(residual side, units used); the sides and options are those of `costmodel.dp` (the paper's space,
or with ``tp`` the tensor-parallel one). Rounded *up* (`up=True`) every partition the DP can return
fits the real budget, and the result is optimal among partitions whose rounded memory fits; rounded
*down* the set contains every memory-feasible partition, so its minimum is a lower bound on the
constrained optimum (the slot oracle, `lyapunov.oracle`, uses both). Combined with the Lagrangian
dual bound of `costmodel.dp.solve_memory` it gives a certified gap (`solve_memory_exact`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from costmodel.costs import total_terms
from costmodel.dp import (
    BIG,
    ConstrainedResult,
    DPResult,
    SlotTables,
    Weights,
    _out_index,
    n_ffn_options,
    option_partition,
    scalarize,
    slot_tables,
    solve_memory,
    tables_weighted,
)
from costmodel.link import LinkState
from costmodel.partition import CLOUD, EDGE
from costmodel.spec import CostSpec


def to_units(mem_bytes, unit, up):
    """Memory in whole units, rounded up (a restriction of the budget) or down (a
    relaxation); ``up`` may be traced."""
    x = mem_bytes / unit
    return jnp.where(up, jnp.ceil(x * (1.0 + 1e-5)), jnp.floor(x * (1.0 - 1e-5))).astype(
        jnp.int32)


def solve_precision_resource(q, link: LinkState, spec: CostSpec, w: Weights, units: int = 128,
                             up=True, tp: bool = False, shifts: int = 64) -> DPResult:
    """Exact minimizer of the weighted objective at activation precision q over the partitions
    whose edge memory, rounded (up or down) per option and endpoint to the unit of
    ``solve_tables_resource``, fits; value BIG when none does. ``tp``: the option space
    (``costmodel.dp``)."""
    return solve_tables_resource(slot_tables(link, spec, (q,), tp), w,
                                 spec.edge.mem_budget / 1e9, units, up, shifts)


def resource_unit(tb: SlotTables, budget_gb, units: int, shifts: int, up=True):
    """The memory unit (GB): about ``budget / units``, or coarser if one option would otherwise
    span more than ``shifts - 2`` units (then every option's rounded memory is below
    ``shifts``); then stretched by less than one part in ``n`` (``n >= 2``) so that the largest
    option (an all-edge layer) spans exactly ``n`` units, rounded ``up`` or down (its units
    carry no rounding loss: on memory-bound cards the optimum is mostly all-edge and all-cloud
    layers, so the rounded sets are tight there; proofs/oracle.md, Proposition 5)."""
    mem = tb.base[4, 0, 0]  # [O] GB: the same for every layer, side and precision
    top = mem.max()
    base = jnp.maximum(jnp.maximum(budget_gb / units, top * (1.0 + 1e-4) / (shifts - 2)), 1e-30)
    n = jnp.floor(top / base)
    # top / unit = n (1 -+ 1e-4): to_units' own margin (1e-5) then rounds it to n either way.
    return jnp.where(n >= 2, top / (n * jnp.where(up, 1.0 - 1e-4, 1.0 + 1e-4)), base)


def solve_tables_resource(tb: SlotTables, w: Weights, budget_gb, units: int = 128, up=True,
                          shifts: int = 64) -> DPResult:
    """The resource DP over (residual side, units used) on the slot's tables (every precision
    of ``tb``). Every layer has the same option memories, so an option's rounded memory is one
    of ``shifts`` values: per (layer, input side, output side) only the best option of each
    rounded memory matters (a segment minimum), and a layer's step is a min-plus convolution
    of the value row with ``shifts`` entries, vectorized over sides, precisions and the
    embedding side. Rounded up (``up``), every partition it admits fits ``budget_gb``; rounded
    down, it admits every partition that fits (proofs/oracle.md, Proposition 3)."""
    table, ends = tables_weighted(tb, w)  # [P, L, S, O], [2, S]
    n_p, n_l, n_s, n_o = table.shape
    n_f = n_ffn_options(tb.tp)
    n_h = n_o // n_f - 1
    k_sh = int(shifts)
    unit = resource_unit(tb, budget_gb, units, k_sh, up)
    cap = jnp.floor(budget_gb / unit * jnp.where(up, 1.0 - 1e-5, 1.0 + 1e-5))
    opt_units = jnp.minimum(to_units(tb.base[4, 0, 0], unit, up), k_sh - 1)  # [O]
    _, out = _out_index(tb.tp, n_h)
    seg = jnp.asarray(out) * k_sh + opt_units
    best = jax.ops.segment_min(jnp.moveaxis(table, -1, 0), seg, num_segments=n_s * k_sh)
    best = jnp.minimum(jnp.moveaxis(best, 0, -1), BIG).reshape(n_p, n_l, n_s, n_s, k_sh)
    m = jnp.arange(units + 1)
    shift_idx = np.arange(units + 1)[None, :] + k_sh - np.arange(k_sh)[:, None]  # [K, M+1]

    def forward(v, b):  # v [2, P, S, M+1]; b [P, S_in, S_out, K]
        pad = jnp.concatenate([jnp.full(v.shape[:-1] + (k_sh,), BIG), v], -1)
        vs = pad[..., shift_idx]  # [2, P, S_in, K, M+1]: v[m - u]
        cand = vs[:, :, :, None] + b[None, :, :, :, :, None]  # [2, P, S_in, S_out, K, M+1]
        return jnp.minimum(cand.min((2, 4)), BIG), v

    v0 = jnp.where((jnp.arange(n_s)[None, :, None] == jnp.arange(2)[:, None, None])
                   & (m == 0)[None, None, :], 0.0, BIG)
    v0 = jnp.broadcast_to(v0[:, None], (2, n_p, n_s, units + 1))
    v_last, v_in = jax.lax.scan(forward, v0, jnp.moveaxis(best, 1, 0))  # v_in [L, 2, P, S, M+1]
    end_units = to_units(tb.ends[4], unit, up)  # [2, S]
    fits = m[None, None, :] + end_units[..., None] <= cap
    total = jnp.where(fits[:, None], v_last + ends[:, None, :, None], BIG)  # [2, P, S, M+1]
    total = jnp.where((jnp.arange(2) == CLOUD)[:, None, None, None] & tb.pinned, BIG, total)
    flat = jnp.minimum(jnp.moveaxis(total, 1, 0), BIG).reshape(-1)  # precision, s0, side, m
    best_i = flat.argmin()
    qi = best_i // (2 * n_s * (units + 1))
    s0 = (best_i // (n_s * (units + 1))) % 2
    s_last = (best_i // (units + 1)) % n_s
    used = best_i % (units + 1)
    out_j = jnp.asarray(out)

    def backward(carry, layer):  # recompute the argmin of the one state on the path
        s_out, mm = carry
        v, tab = layer  # [S, M+1], [S, O]
        before = mm - opt_units  # [O]
        cand = jnp.where(before[None, :] >= 0, v[:, jnp.clip(before, 0, units)], BIG) + tab
        cand = jnp.where((out_j == s_out)[None, :], cand, BIG)  # [s_in, opt]
        a = cand.reshape(-1).argmin()
        s_in, opt = a // n_o, a % n_o
        return (s_in, jnp.clip(mm - opt_units[opt], 0, units)), opt

    _, opts = jax.lax.scan(backward, (s_last, used), (v_in[:, s0, qi], table[qi]), reverse=True)
    part = option_partition(opts // n_f, opts % n_f, tb.precisions[qi], s0 == EDGE, tb.tp)
    return DPResult(flat[best_i], part)


def solve_resource(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
                   units: int = 128, up=True, tp: bool = False, shifts: int = 64) -> DPResult:
    """The best of :func:`solve_precision_resource` over the given precisions."""
    return solve_tables_resource(slot_tables(link, spec, precisions, tp), w,
                                 spec.edge.mem_budget / 1e9, units, up, shifts)


def solve_memory_exact(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
                       units: int = 128, tp: bool = False) -> ConstrainedResult:
    """Best of the Lagrangian solution and the resource DP, with the Lagrangian dual bound.

    `gap == 0` certifies optimality; otherwise the true constrained optimum lies in
    [lower_bound, value]. The resource DP rounds the edge budget only; its partition is used
    only if it also fits the cloud's budget."""
    lag = solve_memory(link, spec, w, precisions, tp=tp)
    part = solve_resource(link, spec, w, precisions, units, up=True, tp=tp).partition
    tt = total_terms(part, link, spec)
    val = scalarize(tt, part.act_prec, spec, w)
    ok = ((tt.mem <= spec.edge.mem_budget) & (tt.mem_cloud <= spec.cloud.mem_budget)
          & (val < BIG))
    use_res = ok & ((val < lag.value) | ~lag.feasible)
    chosen = jax.tree.map(lambda a, b: jnp.where(use_res, a, b), part, lag.partition)
    value = jnp.where(use_res, val, lag.value)
    return ConstrainedResult(value, chosen, lag.nu, jnp.minimum(lag.lower_bound, value),
                             lag.feasible | ok)
