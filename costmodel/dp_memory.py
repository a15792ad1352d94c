"""Memory-resource DP: the edge memory budget as a resource dimension (docs/design.md §4).

The budget is cut into `units` equal parts; each layer option's memory and each endpoint's
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

from costmodel.costs import endpoint_terms, structure_terms, total_terms
from costmodel.dp import (
    BIG,
    ConstrainedResult,
    DPResult,
    Weights,
    n_sides,
    option_grid,
    option_partition,
    option_table,
    scalarize,
    solve_memory,
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
                             up=True, tp: bool = False) -> DPResult:
    """Exact minimizer of the weighted objective at activation precision q over the partitions
    whose edge memory, rounded (up or down) to ``budget / units`` per option and endpoint, fits
    in ``units``; value BIG when none does. ``tp``: the option space (``costmodel.dp``)."""
    n_l, n_h, n_s = spec.n_layers, spec.n_heads, n_sides(tp)
    f_opt, j_opt, out = option_grid(tp)
    n_f = len(f_opt)
    n_opt = n_f * (n_h + 1)
    unit = jnp.maximum(spec.edge.mem_budget / units, 1e-30)
    table = option_table(q, link, spec, w, tp).reshape(n_l, n_s, n_opt)
    k = jnp.arange(n_h + 1)[:, None]
    _, mem = structure_terms(k, jnp.asarray(f_opt)[None, :], spec, 0.0, 0.0,
                             jnp.asarray(j_opt)[None, :])
    opt_units = to_units(mem, unit, up).reshape(-1)
    opt_out = jnp.asarray(np.tile(out, n_h + 1))
    m = jnp.arange(units + 1)
    src = m[None, :] - opt_units[:, None]  # [opt, M+1] units used before this layer
    valid = src >= 0
    src = jnp.clip(src, 0, units)

    def forward(v, tab):  # v: [s, M+1] -> values only (an argmin here is ~20x slower on CPU)
        cand = jnp.where(valid[None], v[:, src], BIG) + tab[:, :, None]  # [s_in, opt, M+1]
        new = jnp.stack([jnp.where((opt_out == so)[None, :, None], cand, BIG).min((0, 1))
                         for so in range(n_s)])
        return jnp.minimum(new, BIG), v

    v0 = jnp.where(m[None, :] == 0, 0.0, BIG) * jnp.ones((n_s, 1))

    def run(s0):
        v_init = jnp.where(jnp.arange(n_s)[:, None] == s0, v0, BIG)
        v_last, v_in = jax.lax.scan(forward, v_init, table)  # v_in: [L, S, M+1]
        ends = endpoint_terms(s0, jnp.arange(n_s), link, spec)
        end_val = scalarize(ends, q, spec, w)
        end_units = to_units(ends.mem, unit, up)
        fits = m[None, :] + end_units[:, None] <= units
        total = jnp.where(fits, v_last + end_val[:, None], BIG)
        if spec.privacy_layers:
            total = jnp.where(s0 == CLOUD, BIG, total)
        return jnp.minimum(total, BIG), v_in

    totals, v_ins = jax.vmap(run)(jnp.arange(2))  # [s0, s_last, M+1], [s0, L, S, M+1]
    flat = totals.reshape(-1)
    best = flat.argmin()
    s0 = best // (n_s * (units + 1))
    s_last = (best // (units + 1)) % n_s
    used = best % (units + 1)

    def backward(carry, layer):  # recompute the argmin of the one state on the path
        s_out, mm = carry
        v, tab = layer
        before = mm - opt_units  # [opt]
        cand = jnp.where(before[None, :] >= 0, v[:, jnp.clip(before, 0, units)], BIG) + tab
        cand = jnp.where((opt_out == s_out)[None, :], cand, BIG)  # [s_in, opt]
        a = cand.reshape(-1).argmin()
        s_in, opt = a // n_opt, a % n_opt
        return (s_in, jnp.clip(mm - opt_units[opt], 0, units)), opt

    _, opts = jax.lax.scan(backward, (s_last, used), (v_ins[s0], table), reverse=True)
    part = option_partition(opts // n_f, opts % n_f, q, s0 == EDGE, tp)
    return DPResult(flat[best], part)


def solve_resource(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
                   units: int = 128, up=True, tp: bool = False) -> DPResult:
    """The best of :func:`solve_precision_resource` over the given precisions."""
    res = jax.vmap(lambda q: solve_precision_resource(q, link, spec, w, units, up, tp))(
        jnp.asarray(precisions))
    return jax.tree.map(lambda x: x[res.value.argmin()], res)


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
