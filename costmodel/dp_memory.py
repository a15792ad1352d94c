"""Memory-constrained exact-up-to-rounding DP: the edge memory budget as a resource dimension.

The budget is cut into `units` equal parts; each layer option's memory (and the embedding /
LM-head memory of each endpoint side) is rounded *up* to whole units, so every partition the DP
returns fits the real budget. State: (residual side, units used). The result is optimal among
partitions whose rounded memory fits; combined with the Lagrangian dual bound of
`costmodel.dp.solve_memory` it gives a certified gap (`solve_memory_exact`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costmodel.costs import endpoint_terms, total_terms
from costmodel.dp import BIG, ConstrainedResult, Weights, _option_table, scalarize, solve_memory
from costmodel.link import LinkState
from costmodel.partition import CLOUD, EDGE, Partition
from costmodel.spec import CostSpec


def _option_units(spec: CostSpec, unit: jnp.ndarray):
    """int [H+1, 3] memory units of each (k, f) layer option (rounded up)."""
    from costmodel.costs import structure_terms

    k = jnp.arange(spec.n_heads + 1)[:, None]
    f = jnp.arange(3)[None, :]
    _, mem = structure_terms(k, f, spec, 0.0, 0.0)
    return jnp.ceil(mem / unit - 1e-6).astype(jnp.int32)


def solve_precision_resource(q, link: LinkState, spec: CostSpec, w: Weights, units: int = 128):
    """(value, Partition) minimizing the weighted objective with rounded memory <= budget."""
    n_l, n_h = spec.n_layers, spec.n_heads
    unit = spec.edge.mem_budget / units
    table = _option_table(q, link, spec, w).reshape(n_l, 2, -1)  # [L, s_in, opt]
    opt_units = _option_units(spec, unit).reshape(-1)  # [opt]
    opt_out = jnp.where(jnp.arange(3 * (n_h + 1)) % 3 == EDGE, EDGE, CLOUD)  # s_out per option
    m = jnp.arange(units + 1)
    src = m[None, :] - opt_units[:, None]  # [opt, M+1] units used before this layer
    valid = src >= 0
    src = jnp.clip(src, 0, units)

    def forward(v, tab):  # v: [2, M+1]
        prev = jnp.where(valid[None], v[:, src], BIG)  # [s_in, opt, M+1]
        cand = prev + tab[:, :, None]
        best = []
        arg = []
        for s_out in (EDGE, CLOUD):
            c = jnp.where((opt_out == s_out)[None, :, None], cand, BIG)
            flat = c.reshape(-1, units + 1)  # [(s_in, opt), M+1]
            best.append(jnp.minimum(flat.min(0), BIG))
            arg.append(flat.argmin(0))
        return jnp.stack(best), jnp.stack(arg)

    emb_units = jnp.ceil(spec.edge.weight_bytes * spec.vocab * spec.d_model / unit - 1e-6)
    emb_units = emb_units.astype(jnp.int32)

    def run(s0):
        start = jnp.where(s0 == EDGE, emb_units, 0)
        v0 = jnp.where((jnp.arange(2)[:, None] == s0) & (m[None, :] == start), 0.0, BIG)
        v_last, back = jax.lax.scan(forward, v0, table)
        ends = scalarize(endpoint_terms(s0, jnp.arange(2), link, spec), q, spec, w)
        # The LM head needs its own copy on the edge unless tied and the embedding is there.
        extra = jnp.where(jnp.arange(2) == EDGE, emb_units, 0)
        if spec.tied:
            extra = jnp.where(s0 == EDGE, 0, extra)
        fits = m[None, :] + extra[:, None] <= units
        total = jnp.where(fits, v_last + ends[:, None], BIG)
        if spec.privacy_layers:
            total = jnp.where(s0 == CLOUD, BIG, total)
        return jnp.minimum(total, BIG), back

    totals, backs = jax.vmap(run)(jnp.arange(2))  # [s0, s_last, M+1], [s0, L, 2, M+1]
    flat = totals.reshape(-1)
    best = flat.argmin()
    s0 = best // (2 * (units + 1))
    s_last = (best // (units + 1)) % 2
    used = best % (units + 1)

    def backward(carry, bk):
        s_out, mm = carry
        a = bk[s_out, mm]
        s_in, opt = a // (3 * (n_h + 1)), a % (3 * (n_h + 1))
        return (s_in, mm - opt_units[opt]), opt

    _, opts = jax.lax.scan(backward, (s_last, used), backs[s0], reverse=True)
    part = Partition((opts // 3).astype(jnp.int32), (opts % 3).astype(jnp.int32),
                     jnp.asarray(q, jnp.int32), s0 == EDGE)
    return flat[best], part


def solve_memory_exact(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
                       units: int = 128) -> ConstrainedResult:
    """Best of the Lagrangian solution and the resource DP, with the Lagrangian dual bound.

    `gap == 0` certifies optimality; otherwise the true constrained optimum lies in
    [lower_bound, value]."""
    lag = solve_memory(link, spec, w, precisions)
    vals, parts = jax.vmap(lambda q: solve_precision_resource(q, link, spec, w, units))(
        jnp.asarray(precisions))
    i = vals.argmin()
    part = jax.tree.map(lambda x: x[i], parts)
    tt = total_terms(part, link, spec)
    val = scalarize(tt, part.act_prec, spec, w)
    ok = (tt.mem <= spec.edge.mem_budget) & (val < BIG)
    use_res = ok & ((val < lag.value) | ~lag.feasible)
    chosen = jax.tree.map(lambda a, b: jnp.where(use_res, a, b), part, lag.partition)
    value = jnp.where(use_res, val, lag.value)
    return ConstrainedResult(value, chosen, lag.nu, jnp.minimum(lag.lower_bound, value),
                             lag.feasible | ok)
