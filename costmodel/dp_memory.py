"""Memory-resource DP: the edge memory budget as a resource dimension (docs/design.md §4).

The budget is cut into `units` equal parts (coarser if one option would span more than
`shifts` units); each layer option's memory is rounded to whole units, and the endpoints'
(embedding and LM head, by the embedding side and the final side) count exactly. State:
(residual side, units used); the sides and options are those of `costmodel.dp` (the paper's space,
or with ``tp`` the tensor-parallel one). Rounded *up* (`up=True`) every partition the DP can return
fits the real budget, and the result is optimal among partitions whose rounded memory fits; rounded
*down* the set contains every memory-feasible partition, so its minimum is a lower bound on the
constrained optimum (the slot oracle, `lyapunov.oracle`, uses both). Combined with the Lagrangian
dual bound of `costmodel.dp.solve_memory` it gives a certified gap (`solve_memory_exact`).
`solve_tables_resource_fit` also traces back the best partitions of the best memory levels and
returns the best one that truly fits: a rounded-down pass then yields a bound and a feasible
point (the slot oracle's last sweep).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from costmodel.costs import total_terms
from costmodel.dp import (
    BIG,
    ConstrainedResult,
    DPResult,
    SlotTables,
    Weights,
    _base_weighted,
    _ends_weighted,
    _out_index,
    n_ffn_options,
    option_partition,
    path_totals,
    per_layer,
    scalarize,
    slot_tables,
    solve_memory,
)
from costmodel.link import LinkState
from costmodel.partition import CLOUD, EDGE
from costmodel.spec import CostSpec

# The step as a running minimum over its S x S x shifts static slices (one fused loop) up to
# this many slices, else one gather and one reduction. Measured on 2 cores (80 layers, 24
# shifts: 2.8 ms against 11.2 paper, 7.8 against 19.6 tp; 8 layers, 128 shifts: 25 ms against
# 6 ms, and 1.1 s of compile against 0.1).
UNROLL_MAX = 256


# Relative float32 margins: a rounding's (a few float32 steps: an option's memory in units is
# never rounded the wrong way), the unit's stretch (above it: an all-edge layer is exactly n
# units, rounded either way), and the budget check's (the float32 sum of up to ~100 layers'
# memories, ``costmodel.dp.path_totals``, against which a partition is called feasible).
# Each all-edge layer's rounded memory is thus within 2e-6 of its own (about 1 KB of a 70B
# layer), where 1e-4 had left 48 KB a layer: 1.3 MB over 27 layers, enough to reach over the
# budget's cliff (docs/design.md §4.3).
ROUND_MARGIN = 4e-7
STRETCH = 2e-6
BUDGET_RTOL = 1e-5


def default_shifts(units: int, n_layers) -> int:
    """The shifts of the slot oracle's resource DP: room for an option twice a layer's share of
    the budget (``2 units / L``), at least 24, at most ``units + 1``."""
    if int(units) < 2:
        raise ValueError(f"units must be >= 2 (a budget of one unit holds no option), got {units}")
    return min(int(units) + 1, max(24, -(-2 * int(units) // int(n_layers))))


def to_units(mem_bytes, unit, up):
    """Memory in whole units, rounded up (a restriction of the budget) or down (a
    relaxation); ``up`` may be traced."""
    x = mem_bytes / unit
    return jnp.where(up, jnp.ceil(x * (1.0 + ROUND_MARGIN)),
                     jnp.floor(x * (1.0 - ROUND_MARGIN))).astype(jnp.int32)


def solve_precision_resource(q, link: LinkState, spec: CostSpec, w: Weights, units: int = 128,
                             up=True, tp: bool = False, shifts: int = 64) -> DPResult:
    """Exact minimizer of the weighted objective at activation precision q over the partitions
    whose edge memory, rounded (up or down) per option to the unit of
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
    if int(shifts) < 3:  # an option may span shifts - 2 units: none at all below 3
        raise ValueError(f"shifts must be >= 3, got {shifts}")
    mem = tb.base[4, 0, 0]  # [O] GB: the same for every layer, side and precision
    top = mem.max()
    base = jnp.maximum(jnp.maximum(budget_gb / units, top * (1.0 + STRETCH) / (shifts - 2)),
                       1e-30)
    n = jnp.floor(top / base)
    # top / unit = n (1 -+ STRETCH): to_units' own margin (ROUND_MARGIN) then rounds it to n
    # either way.
    return jnp.where(n >= 2, top / (n * jnp.where(up, 1.0 - STRETCH, 1.0 + STRETCH)), base)


def solve_tables_resource(tb: SlotTables, w: Weights, budget_gb, units: int = 128, up=True,
                          shifts: int = 64) -> DPResult:
    """The resource DP over (residual side, units used) on the slot's tables (every precision
    of ``tb``). Every layer has the same option memories, so an option's rounded memory is one
    of ``shifts`` values: per (layer, input side, output side) only the best option of each
    rounded memory matters (a segment minimum), and a layer's step is a min-plus convolution
    of the value row with ``shifts`` entries, vectorized over sides, precisions and the
    embedding side. Rounded up (``up``), every partition it admits fits ``budget_gb``; rounded
    down, it admits every partition that fits (proofs/oracle.md, Proposition 3)."""
    return solve_tables_resource_fit(tb, w, budget_gb, units, up, shifts, n_fit=0).best


@struct.dataclass
class ResourceResult:
    best: DPResult  # the resource DP's minimizer over its rounded set
    fit: DPResult  # the best of the candidates whose true memory fits (value BIG if none)


def solve_tables_resource_fit(tb: SlotTables, w: Weights, budget_gb, units: int = 128, up=True,
                              shifts: int = 64, n_fit: int = 16,
                              budget_c_gb=float("inf")) -> ResourceResult:
    """``_resource_pass`` over the precisions of ``tb``, one at a time, skipping those that a
    precision dominates: where one precision's weighted option table is nowhere above
    another's (every (side, option) entry; the layers' accuracy weights and the endpoints do
    not depend on the precision), no partition is better at the other, so only the dominant
    one runs (with the accuracy weight 0 the fewest crossing bytes usually dominates: a third
    of the work; docs/design.md §4.3). The precisions run in a loop of one compiled pass."""
    n_p = tb.base.shape[1]
    if n_p == 1:
        return _resource_pass(tb, w, budget_gb, units, up, shifts, n_fit, budget_c_gb)
    order, n_run = precision_order(tb, w)

    def one(i):
        qi = order[i]
        sub = tb.replace(base=jax.lax.dynamic_slice_in_dim(tb.base, qi, 1, 1),
                         precisions=jax.lax.dynamic_slice_in_dim(tb.precisions, qi, 1))
        return _resource_pass(sub, w, budget_gb, units, up, shifts, n_fit, budget_c_gb)

    def body(c):
        i, acc = c
        r = one(i)
        acc = ResourceResult(
            jax.tree.map(lambda a, b: jnp.where(r.best.value < acc.best.value, a, b), r.best,
                         acc.best),
            jax.tree.map(lambda a, b: jnp.where(r.fit.value < acc.fit.value, a, b), r.fit,
                         acc.fit))
        return i + 1, acc

    # "Nothing yet" (value BIG): built directly, not from jax.eval_shape(one), which would
    # trace the whole pass a second time (about a fifth of the slot oracle's tracing).
    n_l = tb.acc_layer.shape[0]
    zeros = jnp.zeros(n_l, jnp.int32)
    none = DPResult(jnp.float32(BIG), option_partition(zeros, zeros, tb.precisions[0],
                                                       jnp.bool_(False), tb.tp))
    init = ResourceResult(none, none)
    _, out = jax.lax.while_loop(lambda c: c[0] < n_run, body, (jnp.int32(0), init))
    return out


def precision_order(tb: SlotTables, w: Weights):
    """(order [P], n_run): the precision indices to run, the cheapest (by its table's sum)
    first, and how many: 1 if its weighted option table is nowhere above any other's (it
    dominates), else all of them."""
    base = _base_weighted(tb, w)  # [P, S, O]
    first = jnp.argmin(jnp.where(jnp.isfinite(base), base, BIG).sum((1, 2)))
    dominant = jnp.all(base[first][None] <= base)
    order = jnp.argsort(jnp.arange(base.shape[0]) != first, stable=True)  # first, the rest
    return order, jnp.where(dominant, 1, base.shape[0])


def forward_values(tb: SlotTables, w: Weights, budget_gb, units: int, up, shifts: int):
    """The resource DP's forward pass over every precision of ``tb``: (unit GB, best and arg
    [P, L, S_in, S_out, K] (each (layer, input side, output side, rounded memory)'s best
    option value and index), v_last [2, P, S, M+1], v_in [L, 2, P, S, M+1]); ``v_in[l][s0,
    q, s, m]`` is the least weighted cost of layers ``0..l-1`` started on side ``s0`` at
    precision ``q`` that leaves the residual on side ``s`` with rounded memory of exactly
    ``m`` units (BIG where none), the endpoints not counted."""
    n_p, n_s, n_o = tb.base.shape[1:]
    n_f = n_ffn_options(tb.tp)
    n_h = n_o // n_f - 1
    k_sh = int(shifts)
    unit = resource_unit(tb, budget_gb, units, k_sh, up)
    opt_units = jnp.minimum(to_units(tb.base[4, 0, 0], unit, up), k_sh - 1)  # [O]
    _, out = _out_index(tb.tp, n_h)
    seg = jnp.asarray(out) * k_sh + opt_units

    def segments(table):  # [P, L', S, O] -> the best value and its first option, per
        n = table.shape[1]  # (precision, layer, s_in, s_out, u): the path's trace back then
        tab = jnp.moveaxis(table, -1, 0)  # looks at (s_in, u) only, not at every option
        best = jnp.minimum(jax.ops.segment_min(tab, seg, num_segments=n_s * k_sh), BIG)
        first = jnp.where(tab <= best[seg], jnp.arange(n_o)[:, None, None, None], n_o)
        arg = jax.ops.segment_min(first, seg, num_segments=n_s * k_sh)
        shape = (n_p, n, n_s, n_s, k_sh)
        return (jnp.moveaxis(best, 0, -1).reshape(shape), jnp.moveaxis(arg, 0, -1).reshape(shape))

    best, arg = per_layer(tb, w, segments)  # [P, L, S_in, S_out, K] each
    m = jnp.arange(units + 1)
    n_m = units + 1

    unrolled = n_s * n_s * k_sh <= UNROLL_MAX
    shift_idx = np.arange(n_m)[None, :] + k_sh - np.arange(k_sh)[:, None]  # [K, M+1]

    def forward(v, b):  # v [2, P, S, M+1]; b [P, S_in, S_out, K]
        # new[s_out, m] = min over (s_in, u) of v[s_in, m - u] + b[s_in, s_out, u]
        pad = jnp.concatenate([jnp.full(v.shape[:-1] + (k_sh,), BIG), v], -1)
        if not unrolled:  # one gather of the shifted rows, one reduction
            cand = pad[..., shift_idx][:, :, :, None] + b[None, :, :, :, :, None]
            return jnp.minimum(cand.min((2, 4)), BIG), v
        # a running minimum over static slices: one fused loop
        rows = []
        for so in range(n_s):
            acc = None
            for si in range(n_s):
                for u in range(k_sh):
                    c = pad[:, :, si, k_sh - u:k_sh - u + n_m] + b[None, :, si, so, u, None]
                    acc = c if acc is None else jnp.minimum(acc, c)
            rows.append(acc)
        return jnp.minimum(jnp.stack(rows, 2), BIG), v

    v0 = jnp.where((jnp.arange(n_s)[None, :, None] == jnp.arange(2)[:, None, None])
                   & (m == 0)[None, None, :], 0.0, BIG)
    v0 = jnp.broadcast_to(v0[:, None], (2, n_p, n_s, units + 1))
    v_last, v_in = jax.lax.scan(forward, v0, jnp.moveaxis(best, 1, 0))  # v_in [L, 2, P, S, M+1]
    return unit, best, arg, v_last, v_in


def _resource_pass(tb: SlotTables, w: Weights, budget_gb, units: int, up, shifts: int,
                   n_fit: int, budget_c_gb) -> ResourceResult:
    """``solve_tables_resource`` and, from the same forward pass, a point that truly fits: the
    minimizers of the ``n_fit`` best memory levels (each the best partition whose rounded
    memory is exactly that level, over precisions and sides) are traced back and priced with
    their true edge and cloud memory, and the best that fits both budgets is returned
    (``fit``; value BIG when none does). Rounded down, the minimizer itself may overrun the
    budget by the rounding of its mixed layers while a level a few units lower holds a
    partition of nearly the same value that fits: the relaxation then also supplies the
    feasible point (docs/design.md §4.3)."""
    ends = _ends_weighted(tb, w)  # [2, S]
    n_p, n_s, n_o = tb.base.shape[1:]
    n_f = n_ffn_options(tb.tp)
    k_sh = int(shifts)
    unit, best, arg, v_last, v_in = forward_values(tb, w, budget_gb, units, up, k_sh)
    m = jnp.arange(units + 1)
    # The endpoints' memory (embedding, LM head) counts exactly, not in units: only the mixed
    # layers' options carry a rounding (an all-edge layer is a whole number of units).
    fits = (m[None, None, :] * unit + tb.ends[4][..., None]
            <= budget_gb * jnp.where(up, 1.0 - BUDGET_RTOL, 1.0 + BUDGET_RTOL))  # [2, S, M+1]
    total = jnp.where(fits[:, None], v_last + ends[:, None, :, None], BIG)  # [2, P, S, M+1]
    total = jnp.where((jnp.arange(2) == CLOUD)[:, None, None, None] & tb.pinned, BIG, total)
    flat = jnp.minimum(jnp.moveaxis(total, 1, 0), BIG).reshape(-1)  # precision, s0, side, m
    u_idx = jnp.arange(k_sh)

    def trace(best_i):  # the partition of one flat index of ``total``
        qi = best_i // (2 * n_s * (units + 1))
        s0 = (best_i // (n_s * (units + 1))) % 2
        s_last = (best_i // (units + 1)) % n_s
        used = best_i % (units + 1)

        def backward(carry, layer):  # recompute the argmin of the one state on the path
            s_out, mm = carry
            v, b, a = layer  # [S, M+1], [S_in, S_out, K], [S_in, S_out, K]
            before = mm - u_idx  # [K]
            cand = jnp.where(before[None, :] >= 0, v[:, jnp.clip(before, 0, units)], BIG)
            cand = cand + b[:, s_out]  # [s_in, u]
            i = cand.reshape(-1).argmin()
            s_in, u = i // k_sh, i % k_sh
            return (s_in, mm - u), a[s_in, s_out, u]

        _, opts = jax.lax.scan(backward, (s_last, used), (v_in[:, s0, qi], best[qi], arg[qi]),
                               reverse=True)
        part = option_partition(opts // n_f, opts % n_f, tb.precisions[qi], s0 == EDGE, tb.tp)
        return DPResult(flat[best_i], part)

    if not n_fit:
        main = trace(flat.argmin())
        return ResourceResult(main, main)
    # Per memory level, the best index over (precision, s0, final side); the n_fit best levels,
    # traced back in one batch with the minimizer (row 0).
    per_m = jnp.moveaxis(flat.reshape(-1, units + 1), -1, 0)  # [M+1, P * 2 * S]
    lvl_val, lvl_k = per_m.min(-1), per_m.argmin(-1)
    _, lvls = jax.lax.top_k(-lvl_val, min(int(n_fit), units + 1))
    idx = jnp.concatenate([flat.argmin()[None], lvl_k[lvls] * (units + 1) + lvls])
    cands = jax.vmap(trace)(idx)
    main = jax.tree.map(lambda a: a[0], cands)
    six = jax.vmap(lambda p: path_totals(tb, p))(cands.partition)  # [1 + n_fit, 6]
    ok = (six[:, 4] <= budget_gb) & (six[:, 5] <= budget_c_gb) & (cands.value < BIG)
    val = jnp.where(ok, cands.value, BIG)
    pick = val.argmin()
    fit = jax.tree.map(lambda a: a[pick], cands)
    return ResourceResult(main, fit.replace(value=val[pick]))


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
