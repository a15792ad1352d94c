"""Exact additive dynamic program over (layer, residual side) for one request.

Any weighted sum of latency, edge energy, cloud cost, accuracy drop and edge memory is additive
over layers with the residual stream's side as the only state carried from layer to layer
(costmodel.costs), plus endpoint terms that depend on the embedding side s0 and the final side
s_L. For each s0 a two-state Viterbi recursion with an inner minimum over (k_l, f_l) finds the
exact minimizer in O(L * H) per activation precision (docs/design.md §4, proofs/oracle.md).
The edge memory budget couples layers; it is relaxed with a multiplier nu (bisection), and the
result reports the duality gap, zero when the unconstrained minimizer already fits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from costmodel.costs import Terms, costs_from_terms, endpoint_terms, layer_terms
from costmodel.link import LinkState
from costmodel.partition import CLOUD, EDGE, Partition
from costmodel.spec import CostSpec

BIG = 1e30


@struct.dataclass
class Weights:
    """Weights of the additive objective: latency [1/s], energy [1/J], cloud cost [1/USD],
    accuracy drop [1/%], edge memory [1/GB]."""

    latency: jnp.ndarray = 1.0
    energy: jnp.ndarray = 0.0
    cloud_cost: jnp.ndarray = 0.0
    accuracy: jnp.ndarray = 0.0
    memory: jnp.ndarray = 0.0


def scalarize(tt: Terms, q, spec: CostSpec, w: Weights):
    """Weighted objective of (any shape of) additive terms; non-finite becomes BIG."""
    e, c = spec.edge, spec.cloud
    energy = e.p_active * tt.busy + e.p_tx * tt.tx + e.p_idle * tt.idle
    cloud_cost = c.price_gpu_s * tt.gpu_s + c.price_byte * (tt.up_bytes + tt.down_bytes)
    accuracy = 100.0 * (spec.act_rel[q] * tt.n_cross + spec.weight_rel * tt.acc_w)
    val = (w.latency * tt.latency + w.energy * energy + w.cloud_cost * cloud_cost
           + w.accuracy * accuracy + w.memory * tt.mem / 1e9)
    return jnp.where(jnp.isfinite(val), jnp.minimum(val, BIG), BIG)


@struct.dataclass
class DPResult:
    value: jnp.ndarray  # objective of `partition` under the weights used
    partition: Partition


def option_terms(q, link, spec: CostSpec) -> Terms:
    """Additive terms of every layer option, shape [L, 2, H+1, 3]: (layer, residual input
    side, edge heads k, FFN side f) at activation precision q."""
    n_h = spec.n_heads
    s = jnp.arange(2)[None, :, None, None]
    k = jnp.arange(n_h + 1)[None, None, :, None]
    f = jnp.arange(3)[None, None, None, :]
    return layer_terms(s, k, f, q, link, spec, spec.head_cum[:, None, :, None],
                       spec.ffn_w[:, None, None, None])


def option_allowed(spec: CostSpec):
    """bool [L, 2, H+1, 3]: the options the privacy floor allows (the floor's layers take
    their input on the edge and run every head and the FFN there)."""
    n_l, n_h = spec.n_layers, spec.n_heads
    s = jnp.arange(2)[None, :, None, None]
    k = jnp.arange(n_h + 1)[None, None, :, None]
    f = jnp.arange(3)[None, None, None, :]
    layer = jnp.arange(n_l)[:, None, None, None]
    on_edge = (s == EDGE) & (k == n_h) & (f == EDGE)
    return jnp.broadcast_to(~((layer < spec.privacy_layers) & ~on_edge), (n_l, 2, n_h + 1, 3))


def option_table(q, link, spec: CostSpec, w: Weights):
    """float [L, 2, H+1, 3]: weighted objective of each (layer, input side, edge heads, FFN
    side), BIG where the privacy floor forbids the option. The one option table of the
    solvers (this DP, the memory-resource DP, the slot oracle, the cvx program)."""
    table = scalarize(option_terms(q, link, spec), q, spec, w)
    if spec.privacy_layers:
        table = jnp.where(option_allowed(spec), table, BIG)
    return table


def solve_precision(q, link: LinkState, spec: CostSpec, w: Weights) -> DPResult:
    """Exact minimizer of the weighted objective for activation precision q."""
    n_l = spec.n_layers
    table = option_table(q, link, spec, w)
    to_edge = table[..., EDGE]  # [L, 2, H+1]
    to_cloud = table[..., 1:].reshape(n_l, 2, -1)  # f in {cloud, split}
    trans = jnp.stack([to_edge.min(-1), to_cloud.min(-1)], axis=-1)  # [L, s_in, s_out]
    arg_edge = to_edge.argmin(-1)
    arg_cloud = to_cloud.argmin(-1)  # index = k * 2 + (f - 1)

    def forward(v, tr):
        cand = v[:, None] + tr  # [s_in, s_out]
        return jnp.minimum(cand.min(0), BIG), cand.argmin(0)

    def run(s0):
        v0 = jnp.where(jnp.arange(2) == s0, 0.0, BIG)
        v_last, back = jax.lax.scan(forward, v0, trans)
        ends = scalarize(endpoint_terms(s0, jnp.arange(2), link, spec), q, spec, w)
        total = jnp.minimum(v_last + ends, BIG)
        if spec.privacy_layers:
            total = jnp.where(s0 == CLOUD, BIG, total)
        return total, back

    totals, backs = jax.vmap(run)(jnp.arange(2))  # [s0, s_last], [s0, L, s_out]
    best = totals.reshape(-1).argmin()
    s0, s_last = best // 2, best % 2
    back = backs[s0]

    def backward(s_out, bk):
        s_in = bk[s_out]
        return s_in, (s_in, s_out)

    _, (s_in, s_out) = jax.lax.scan(backward, s_last, back, reverse=True)
    layers = jnp.arange(n_l)
    a_e = arg_edge[layers, s_in]
    a_c = arg_cloud[layers, s_in]
    heads = jnp.where(s_out == EDGE, a_e, a_c // 2)
    ffn = jnp.where(s_out == EDGE, EDGE, 1 + a_c % 2)
    part = Partition(heads.astype(jnp.int32), ffn.astype(jnp.int32),
                     jnp.asarray(q, jnp.int32), s0 == EDGE)
    return DPResult(totals.reshape(-1)[best], part)


def solve(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2)) -> DPResult:
    """Exact minimizer over the given activation precisions (no memory constraint)."""
    res = jax.vmap(lambda q: solve_precision(q, link, spec, w))(jnp.asarray(precisions))
    i = res.value.argmin()
    return jax.tree.map(lambda x: x[i], res)


@struct.dataclass
class ConstrainedResult:
    value: jnp.ndarray  # objective (without the multiplier term) of `partition`
    partition: Partition
    nu: jnp.ndarray  # multiplier on edge memory [objective units per GB]
    lower_bound: jnp.ndarray  # Lagrangian dual bound on the constrained optimum
    feasible: jnp.ndarray  # a partition within the memory budget was found

    @property
    def gap(self):
        return self.value - self.lower_bound


def _value_and_mem(part: Partition, link, spec, w):
    from costmodel.costs import total_terms

    tt = total_terms(part, link, spec)
    return scalarize(tt, part.act_prec, spec, w), tt.mem / 1e9


def solve_memory(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
                 iters: int = 40, nu_max: float = 1e6) -> ConstrainedResult:
    """Minimize the objective subject to edge memory <= budget (Lagrangian bisection on nu).

    Exact (gap 0) when the unconstrained minimizer fits. Otherwise returns the best feasible
    Lagrangian minimizer found and the dual lower bound max_nu [min_p obj + nu (mem - budget)].
    """
    budget = spec.edge.mem_budget / 1e9

    def at(nu):
        wn = w.replace(memory=w.memory + nu)
        res = solve(link, spec, wn, precisions)
        val, mem = _value_and_mem(res.partition, link, spec, w)
        dual = val + nu * (mem - budget)
        return res.partition, val, mem, dual

    # One traced copy of the DP: step 0 tries nu = 0 (exact if it fits), step 1 nu = nu_max,
    # then geometric bisection between the largest infeasible and smallest feasible nu.
    def body(i, carry):
        lo, hi, best_p, best_v, best_dual, found, ok0 = carry
        nu = jnp.where(i == 0, 0.0, jnp.where(i == 1, nu_max, jnp.sqrt(lo * hi)))
        p, v, m, dual = at(nu)
        fits = m <= budget
        better = fits & (v < best_v)
        best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
        best_v = jnp.where(better, v, best_v)
        bisect = i >= 2
        lo = jnp.where(bisect & ~fits, nu, lo)
        hi = jnp.where(bisect & fits, nu, hi)
        return (lo, hi, best_p, best_v, jnp.maximum(best_dual, dual), found | fits,
                jnp.where(i == 0, fits, ok0))

    def cond(carry_i):
        i, carry = carry_i
        return (i < iters + 2) & ~((i >= 1) & carry[6]) & ~((i >= 2) & ~carry[5])

    def step(carry_i):
        i, carry = carry_i
        return i + 1, body(i, carry)

    empty = Partition(jnp.zeros(spec.n_layers, jnp.int32), jnp.zeros(spec.n_layers, jnp.int32),
                      jnp.int32(0), jnp.bool_(True))
    init = (jnp.float32(1e-9), jnp.float32(nu_max), empty, jnp.float32(BIG),
            jnp.float32(-BIG), jnp.bool_(False), jnp.bool_(False))
    _, (lo, hi, part, value, dual, found, ok0) = jax.lax.while_loop(cond, step, (0, init))
    lower = jnp.where(ok0, value, jnp.minimum(dual, value))
    return ConstrainedResult(value, part, jnp.where(ok0, 0.0, hi), lower, found)


def best_costs(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2)):
    """Convenience: the memory-feasible minimizer and its RequestCosts."""
    from costmodel.costs import privacy_ok, total_terms

    res = solve_memory(link, spec, w, precisions)
    tt = total_terms(res.partition, link, spec)
    return res, costs_from_terms(tt, res.partition.act_prec, link, spec,
                                 privacy_ok(res.partition, spec))
