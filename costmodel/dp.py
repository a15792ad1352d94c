"""Exact additive dynamic program over (layer, residual side) for one request.

Any weighted sum of latency, edge energy, cloud cost, accuracy drop and edge and cloud memory
is additive over layers with the residual stream's side as the only state carried from layer
to layer (costmodel.costs), plus endpoint terms that depend on the embedding side s0 and the
final side s_L. For each s0 a Viterbi recursion over the sides with an inner minimum over the
layer option finds the exact minimizer in O(L * H * F) per activation precision
(docs/design.md §4.2, proofs/cost-model.md §3). Two option spaces, chosen by the static flag
``tp``: the paper's (sides {edge, cloud}, options (k, f) with f in {edge, cloud, split}) and
the tensor-parallel one (sides {edge, cloud, both}, options (k, f, phi) adding f = tp with the
edge's share phi in 1/16 .. 15/16). The memory budgets couple layers; they are relaxed with
multipliers (bisection), and the result reports the duality gap, zero when the unconstrained
minimizer already fits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from costmodel.costs import (
    Terms,
    cloud_memory,
    costs_from_terms,
    endpoint_terms,
    layer_terms,
    sides,
    structure_terms,
)
from costmodel.link import LinkState
from costmodel.partition import BOTH, CLOUD, EDGE, TP, TP_GRID, Partition
from costmodel.spec import CostSpec

BIG = 1e30


@struct.dataclass
class Weights:
    """Weights of the additive objective: latency [1/s], energy [1/J], cloud cost [1/USD],
    accuracy drop [1/%], edge memory [1/GB], cloud memory [1/GB]."""

    latency: jnp.ndarray = 1.0
    energy: jnp.ndarray = 0.0
    cloud_cost: jnp.ndarray = 0.0
    accuracy: jnp.ndarray = 0.0
    memory: jnp.ndarray = 0.0
    cloud_memory: jnp.ndarray = 0.0


def scalarize(tt: Terms, q, spec: CostSpec, w: Weights):
    """Weighted objective of (any shape of) additive terms; non-finite becomes BIG."""
    e, c = spec.edge, spec.cloud
    energy = e.p_active * tt.busy + e.p_tx * tt.tx + e.p_idle * tt.idle
    cloud_cost = c.price_gpu_s * tt.gpu_s + c.price_byte * (tt.up_bytes + tt.down_bytes)
    accuracy = 100.0 * (spec.act_rel[q] * tt.n_cross + spec.weight_rel * tt.acc_w)
    val = (w.latency * tt.latency + w.energy * energy + w.cloud_cost * cloud_cost
           + w.accuracy * accuracy + w.memory * tt.mem / 1e9
           + w.cloud_memory * tt.mem_cloud / 1e9)
    return jnp.where(jnp.isfinite(val), jnp.minimum(val, BIG), BIG)


@struct.dataclass
class DPResult:
    value: jnp.ndarray  # objective of `partition` under the weights used
    partition: Partition


def n_sides(tp: bool) -> int:
    """Residual side states of the DP: edge and cloud, and both with tp."""
    return 3 if tp else 2


def n_ffn_options(tp: bool) -> int:
    """FFN options of a layer: edge, cloud, split, and with tp one per share 1..TP_GRID-1."""
    return 3 + (TP_GRID - 1) * bool(tp)


def option_grid(tp: bool):
    """int arrays (f [F], j [F], side_out [F]) of the FFN options: option o < 3 is the FFN side
    o (share 0); option o >= 3 is tp with edge share j = o - 2 (units of 1/TP_GRID)."""
    o = np.arange(n_ffn_options(tp))
    f = np.where(o < 3, o, TP)
    j = np.where(o < 3, 0, o - 2)
    out = np.select([f == EDGE, f == TP], [EDGE, BOTH], CLOUD)
    return f, j, out


def option_terms(q, link, spec: CostSpec, tp: bool = False) -> Terms:
    """Additive terms of every layer option, shape [L, S, H+1, F]: (layer, residual input side,
    edge heads k, FFN option) at activation precision q; S = 2, F = 3 in the paper's space
    (sides edge/cloud; FFN edge/cloud/split), S = 3, F = 3 + TP_GRID - 1 with tp (side both;
    tp shares 1..TP_GRID-1, `option_grid`)."""
    n_h = spec.n_heads
    f, j, _ = option_grid(tp)
    s = jnp.arange(n_sides(tp))[None, :, None, None]
    k = jnp.arange(n_h + 1)[None, None, :, None]
    f = jnp.asarray(f)[None, None, None, :]
    j = jnp.asarray(j)[None, None, None, :]
    return layer_terms(s, k, f, q, link, spec, spec.head_cum[:, None, :, None],
                       spec.ffn_w[:, None, None, None], j)


# Relative margin of ``memory_can_bind``: its bound must clear a budget by more than the
# float32 sum of ~100 layers' memories can be off (as ``dp_memory.BUDGET_RTOL``).
MEMORY_MARGIN = 1e-5


@jax.jit
def _memory_bounds(spec: CostSpec):
    """(edge, cloud) bytes: the largest memory any partition can have on each side."""
    link = LinkState(*(jnp.float32(1.0),) * 4)  # memory does not depend on the link
    on_edge, on_cloud = jnp.int32(EDGE), jnp.int32(CLOUD)
    _, mem = structure_terms(spec.n_heads, EDGE, spec, 0.0, 0.0)
    edge = spec.n_layers * mem + endpoint_terms(on_edge, on_edge, link, spec).mem
    cloud = (spec.n_layers * cloud_memory(0, CLOUD, spec)
             + endpoint_terms(on_cloud, on_cloud, link, spec).mem_cloud)
    return edge, cloud


def memory_can_bind(spec: CostSpec) -> bool:
    """Whether some partition's edge or cloud memory can exceed its budget, decided on the host
    from a concrete ``spec`` (or a batch of them: whether any can): the largest memory any
    partition can have on each side (every layer all-edge, resp. all-cloud: a layer's memory
    on a side grows with its heads and its FFN share there, in either option space; the
    embedding and the LM head both on that side) against each budget, with a margin
    (``MEMORY_MARGIN``). Where it is False, every partition fits both budgets and the slot
    oracle needs none of its memory machinery (``lyapunov.oracle.solve_slot``'s
    ``memory_can_bind``; docs/design.md §4.3). One small jitted program: 0.06 s to compile,
    where the same ops run eagerly took 0.64 s in a fresh process (under an outer trace it is
    evaluated eagerly, so that the answer stays concrete)."""
    edge, cloud = _memory_bounds(spec)
    if isinstance(edge, jax.core.Tracer):
        with jax.ensure_compile_time_eval():
            edge, cloud = _memory_bounds(spec)
    edge, cloud = np.asarray(edge), np.asarray(cloud)
    keep = 1.0 - MEMORY_MARGIN
    return bool(np.any(edge > np.asarray(spec.edge.mem_budget) * keep)
                or np.any(cloud > np.asarray(spec.cloud.mem_budget) * keep))


def option_allowed(spec: CostSpec, tp: bool = False):
    """bool [L, S, H+1, F]: the options the privacy floor allows (the floor's layers take
    their input on the edge and run every head and the FFN there)."""
    n_l, n_h, n_s, n_f = spec.n_layers, spec.n_heads, n_sides(tp), n_ffn_options(tp)
    s = jnp.arange(n_s)[None, :, None, None]
    k = jnp.arange(n_h + 1)[None, None, :, None]
    o = jnp.arange(n_f)[None, None, None, :]
    layer = jnp.arange(n_l)[:, None, None, None]
    on_edge = (s == EDGE) & (k == n_h) & (o == EDGE)
    return jnp.broadcast_to(~((layer < spec.privacy_layers) & ~on_edge), (n_l, n_s, n_h + 1, n_f))


def option_table(q, link, spec: CostSpec, w: Weights, tp: bool = False):
    """float [L, S, H+1, F]: weighted objective of each (layer, input side, edge heads, FFN
    option), BIG where the privacy floor forbids the option. The one option table of the
    solvers (this DP, the memory-resource DP, the slot oracle, the cvx program)."""
    table = scalarize(option_terms(q, link, spec, tp), q, spec, w)
    return jnp.where(option_allowed(spec, tp), table, BIG)


def option_index(part: Partition, tp: bool):
    """int [L]: each layer's option index ``k * F + f`` (``option_grid``'s order), the inverse
    of ``option_partition``."""
    f_idx = jnp.where(part.ffn == TP, part.ffn_frac + 2, part.ffn)
    return part.edge_heads * n_ffn_options(tp) + f_idx


def option_partition(heads, opts, q, embed_edge, tp: bool) -> Partition:
    """The Partition of per-layer (edge heads, FFN option index) choices."""
    f, j, _ = option_grid(tp)
    return Partition(heads.astype(jnp.int32), jnp.asarray(f, jnp.int32)[opts],
                     jnp.asarray(q, jnp.int32), embed_edge, jnp.asarray(j, jnp.int32)[opts])


def solve_precision(q, link: LinkState, spec: CostSpec, w: Weights, tp: bool = False) -> DPResult:
    """Exact minimizer of the weighted objective for activation precision q (with the tp
    options and the side state BOTH if ``tp``, else the paper's space)."""
    return solve_tables(slot_tables(link, spec, (q,), tp), w)


@struct.dataclass
class SlotTables:
    """Everything the DP needs about one (link, spec), for any weights (docs/design.md §4.2).

    A layer option's terms depend on the layer only through its accuracy weight (head and FFN
    importances), and its edge and cloud memory on nothing but the option, so the option table
    of weights ``w`` is ``base(w)[q, side_in, option] + w_acc * acc_layer[layer, option]``:
    computed once per slot, each DP call is then a weighted sum of these and the recursion.

    base: float [6, P, S, O]: latency, energy, cloud cost, accuracy (the crossing part), edge
      memory (GB), cloud memory (GB) of each (precision, input side, option = k * F + f).
    acc_layer: float [L, O]: the accuracy drop (%) of the option's edge-precision weights.
    ends: float [6, 2, S]: the same six of the endpoints (embedding side s0, final side).
    allowed: bool [L, S, O]: the options the privacy floor allows (all where there is none).
    pinned: bool []: the floor pins the embedding to the edge (privacy_layers > 0).
    precisions: int [P].
    """

    base: jnp.ndarray
    acc_layer: jnp.ndarray
    ends: jnp.ndarray
    allowed: jnp.ndarray
    pinned: jnp.ndarray
    precisions: jnp.ndarray
    tp: bool = struct.field(pytree_node=False, default=False)


def _six(tt: Terms, q, spec: CostSpec, acc_w=True):
    e, c = spec.edge, spec.cloud
    energy = e.p_active * tt.busy + e.p_tx * tt.tx + e.p_idle * tt.idle
    cost = c.price_gpu_s * tt.gpu_s + c.price_byte * (tt.up_bytes + tt.down_bytes)
    acc = 100.0 * spec.act_rel[q] * tt.n_cross
    if acc_w:
        acc = acc + 100.0 * spec.weight_rel * tt.acc_w
    return jnp.stack(jnp.broadcast_arrays(tt.latency, energy, cost, acc, tt.mem / 1e9,
                                          tt.mem_cloud / 1e9))


def slot_tables(link: LinkState, spec: CostSpec, precisions=(0, 1, 2),
                tp: bool = False) -> SlotTables:
    """The weight-free tables of one slot (``SlotTables``)."""
    n_l, n_h, n_s = spec.n_layers, spec.n_heads, n_sides(tp)
    f, j, _ = option_grid(tp)
    s = jnp.arange(n_s)[:, None, None]
    k = jnp.arange(n_h + 1)[None, :, None]
    fo, jo = jnp.asarray(f)[None, None, :], jnp.asarray(j)[None, None, :]
    zero_cum = jnp.zeros((1, n_h + 1, 1))

    def per_q(q):
        tt = layer_terms(s, k, fo, q, link, spec, zero_cum, 0.0, jo)  # acc_w: without weights
        return _six(tt, q, spec, acc_w=False).reshape(6, n_s, -1)

    qs = jnp.asarray(precisions, jnp.int32)
    base = jax.vmap(per_q, out_axes=1)(qs)  # [6, P, S, O]
    acc_w, _ = structure_terms(jnp.arange(n_h + 1)[None, :, None], jnp.asarray(f)[None, None],
                               spec, spec.head_cum[:, :, None], spec.ffn_w[:, None, None],
                               jnp.asarray(j)[None, None])
    acc_layer = (100.0 * spec.weight_rel * acc_w).reshape(n_l, -1)
    ends = _six(endpoint_terms(jnp.arange(2)[:, None], jnp.arange(n_s)[None, :], link, spec),
                0, spec)
    allowed = option_allowed(spec, tp).reshape(n_l, n_s, -1)
    return SlotTables(base, acc_layer, ends, allowed, spec.privacy_layers > 0, qs, bool(tp))


def _wvec(w: Weights):
    return jnp.stack([jnp.asarray(x, jnp.float32) for x in (
        w.latency, w.energy, w.cloud_cost, w.accuracy, w.memory, w.cloud_memory)])


def _finite(val):
    return jnp.where(jnp.isfinite(val), jnp.minimum(val, BIG), BIG)


def _weigh(six, w: Weights):
    """The weighted sum over the leading axis of six terms (``SIX``), inf where a term is not
    finite (as ``scalarize``: a non-finite term makes the option BIG)."""
    fin = jnp.isfinite(six)
    return jnp.where(fin.all(0), jnp.tensordot(_wvec(w), jnp.where(fin, six, 0.0), 1), jnp.inf)


def _base_weighted(tb: SlotTables, w: Weights):
    """float [P, S, O]: the layer-free part of the weighted option table."""
    return _weigh(tb.base, w)


def _ends_weighted(tb: SlotTables, w: Weights):
    """float [2, S]: the weighted endpoints, BIG where not finite."""
    return _finite(_weigh(tb.ends, w))


def tables_weighted(tb: SlotTables, w: Weights):
    """(table [P, L, S, O], ends [2, S]) of the weighted objective, BIG where not finite or
    not allowed; ``option_table`` of every precision at once."""
    base = _base_weighted(tb, w)
    acc = jnp.where(w.accuracy != 0, w.accuracy * tb.acc_layer, 0.0)
    table = _finite(base[:, None] + acc[None, :, None, :])
    return jnp.where(tb.allowed[None], table, BIG), _ends_weighted(tb, w)


def layer_rows(tb: SlotTables, w: Weights, qi, s_in):
    """float [L, O]: row ``s_in[l]`` of layer l's weighted option table at precision index
    ``qi`` (the rows along one path), without building the whole table."""
    n_l = tb.acc_layer.shape[0]
    acc = jnp.where(w.accuracy != 0, w.accuracy * tb.acc_layer, 0.0)
    rows = _finite(_base_weighted(tb, w)[qi][s_in] + acc)
    return jnp.where(tb.allowed[jnp.arange(n_l), s_in], rows, BIG)


def per_layer(tb: SlotTables, w: Weights, reduce):
    """``reduce`` (a function of a table [P, L', S, O] to arrays [P, L', ...]) applied to the
    weighted option table, [P, L, ...]. Where the accuracy weight is 0 a layer's table does
    not depend on the layer but through the privacy floor (``SlotTables``: only the accuracy
    weights are per layer), so only two tables are reduced, the floor's and the free layers',
    instead of L (a conditional: both branches compile, one runs; under ``vmap`` with a
    batched weight both run)."""
    n_l = tb.acc_layer.shape[0]

    def every(_):
        return reduce(tables_weighted(tb, w)[0])

    def two(_):
        free = _finite(_base_weighted(tb, w))[:, None]  # [P, 1, S, O]
        floor = jnp.where(tb.allowed[0][None, None], free, BIG)  # layer 0 is a floor layer
        r_free, r_floor = reduce(free), reduce(floor)  # if the floor holds any
        is_floor = ~tb.allowed.reshape(n_l, -1).all(-1)  # [L]

        def pick(a, b):
            sel = is_floor.reshape((1, n_l) + (1,) * (a.ndim - 2))
            return jnp.where(sel, b, a)

        return jax.tree.map(pick, r_free, r_floor)

    return jax.lax.cond(w.accuracy == 0, two, every, None)


def _out_index(tp: bool, n_h: int):
    """Per residual output side, the static option indices (k * F + f) that end there."""
    _, _, out = option_grid(tp)
    out = np.tile(out, n_h + 1)
    return [np.flatnonzero(out == so) for so in range(n_sides(tp))], out


def _out_slices(tp: bool):
    """Per residual output side, the contiguous slice of FFN options (``option_grid``) that
    end there: edge; cloud and split; with tp, the tp shares (side both)."""
    return [slice(0, 1), slice(1, 3)] + ([slice(3, n_ffn_options(tp))] if tp else [])


def solve_tables(tb: SlotTables, w: Weights) -> DPResult:
    """Exact minimizer of the weighted objective over every precision of ``tb`` (the DP of
    ``solve``; ties as there: first precision, then embedding side, final side, option)."""
    ends = _ends_weighted(tb, w)  # [2, S]
    n_p, n_s, n_o = tb.base.shape[1:]
    n_f = n_ffn_options(tb.tp)
    n_h = n_o // n_f - 1
    _, out = _out_index(tb.tp, n_h)

    def transitions(table):  # [P, L', S, O] -> [P, L', S, S_out]: the options ending on each
        t5 = table.reshape(table.shape[:3] + (n_h + 1, n_f))  # side are a slice
        return jnp.stack([t5[..., sl].min((-2, -1)) for sl in _out_slices(tb.tp)], -1)

    trans = per_layer(tb, w, transitions)

    def forward(v, tr):  # v [2, P, S]; tr [P, S, S]
        cand = v[..., :, None] + tr[None]
        return jnp.minimum(cand.min(-2), BIG), cand.argmin(-2)

    v0 = jnp.where(jnp.arange(n_s)[None, None, :] == jnp.arange(2)[:, None, None], 0.0, BIG)
    v0 = jnp.broadcast_to(v0, (2, n_p, n_s))
    v_last, back = jax.lax.scan(forward, v0, jnp.moveaxis(trans, 1, 0))  # back [L, 2, P, S]
    total = jnp.minimum(v_last + ends[:, None, :], BIG)  # [2, P, S]
    # the privacy floor: the embedding on the edge
    total = jnp.where((jnp.arange(2) == CLOUD)[:, None, None] & tb.pinned, BIG, total)
    flat = jnp.moveaxis(total, 1, 0).reshape(-1)  # order: precision, s0, final side
    best = flat.argmin()
    qi, s0, s_last = best // (2 * n_s), (best // n_s) % 2, best % n_s
    bk = back[:, s0, qi]  # [L, S]

    def backward(s_out, b):
        s_in = b[s_out]
        return s_in, (s_in, s_out)

    _, (s_in, s_out) = jax.lax.scan(backward, s_last, bk, reverse=True)
    rows = layer_rows(tb, w, qi, s_in)  # [L, O]
    rows = jnp.where(jnp.asarray(out)[None, :] == s_out[:, None], rows, BIG)
    opt = rows.argmin(-1)
    part = option_partition(opt // n_f, opt % n_f, tb.precisions[qi], s0 == EDGE, tb.tp)
    return DPResult(flat[best], part)


SIX = ("latency_s", "energy_j", "cloud_cost", "accuracy_drop", "edge_memory_gb",
       "cloud_memory_gb")  # the rows of SlotTables.base and of path_totals


def path_totals(tb: SlotTables, part: Partition):
    """float [6] (``SIX``: latency, edge energy, cloud cost, accuracy drop, edge and cloud
    memory in GB) of ``part`` read from the slot's tables: the per-layer options' rows plus the
    endpoints', the sums the DP minimizes (equal to ``costs.total_terms`` up to float32
    rounding, and to its ``inf`` latency where a crossing option meets a down link). The
    partition must be in the tables' option space (its precision among ``tb.precisions``)."""
    s_in, s_last = sides(part)
    opt = option_index(part, tb.tp)
    qi = jnp.argmax(tb.precisions == part.act_prec)
    rows = tb.base[:, qi, s_in, opt]  # [6, L]
    acc = tb.acc_layer[jnp.arange(opt.shape[0]), opt].sum()
    s0 = jnp.where(part.embed_edge, EDGE, CLOUD)
    return rows.sum(-1) + tb.ends[:, s0, s_last] + jnp.zeros(6).at[3].set(acc)


def solve(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
          tp: bool = False) -> DPResult:
    """Exact minimizer over the given activation precisions (no memory constraint); ``tp``
    (static) adds the tensor-parallel FFN options and the side state BOTH."""
    return solve_tables(slot_tables(link, spec, precisions, tp), w)


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


def solve_memory(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
                 iters: int = 40, nu_max: float = 1e6, tp: bool = False) -> ConstrainedResult:
    """Minimize the objective subject to edge memory <= budget and cloud memory <= the cloud's
    budget (Lagrangian bisection on the multipliers).

    Exact (gap 0) when the unconstrained minimizer fits both. Otherwise: a geometric bisection
    on the edge multiplier nu (the cloud's at 0); if that finds nothing that also fits the
    cloud, a bisection on the cloud multiplier with nu fixed at the smallest edge-feasible
    value found. Returns the best partition found that fits both budgets and the dual lower
    bound max [min_p obj + nu (mem - budget) + nu_c (mem_cloud - budget_cloud)] over the
    multipliers tried.
    """
    budget = spec.edge.mem_budget / 1e9
    cbudget = spec.cloud.mem_budget / 1e9
    f32 = jnp.float32
    # The cost model is traced once, outside the loop: each step is a DP on the slot's tables,
    # its point priced from them (path_totals: the sums the DP minimizes).
    tables = slot_tables(link, spec, precisions, tp)

    def at(nu, nu_c):
        wn = w.replace(memory=w.memory + nu, cloud_memory=w.cloud_memory + nu_c)
        res = solve_tables(tables, wn)
        six = path_totals(tables, res.partition)
        val, mem, mem_c = _finite(_wvec(w) @ six), six[4], six[5]
        dual = val + nu * (mem - budget) + nu_c * (mem_c - cbudget)
        return res.partition, val, mem, mem_c, dual

    # One traced copy of the DP in a state machine. Phase 0 (edge): step 0 tries nu = 0
    # (exact if it fits both), step 1 nu = nu_max, then geometric bisection between the
    # largest edge-infeasible and the smallest edge-feasible nu. Phase 1 (cloud): step 0
    # nu_c = nu_max, then bisection on nu_c. Phase 2: done.
    def step(c):
        (i, phase, st, lo, hi, lo_c, hi_c, nu_fix, best_p, best_v, best_dual, ok0) = c
        in_e = phase == 0
        nu = jnp.where(in_e, jnp.where(st == 0, 0.0, jnp.where(st == 1, nu_max,
                                                              jnp.sqrt(lo * hi))), nu_fix)
        nu_c = jnp.where(in_e, 0.0, jnp.where(st == 0, nu_max, jnp.sqrt(lo_c * hi_c)))
        p, v, m, mc, dual = at(nu, nu_c)
        efit, cfit = m <= budget, mc <= cbudget
        ok = efit & cfit & (v < BIG)
        better = ok & (v < best_v)
        best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
        best_v = jnp.where(better, v, best_v)
        best_dual = jnp.maximum(best_dual, dual)
        found = best_v < BIG
        ok0 = jnp.where(in_e & (st == 0), ok, ok0)
        # Phase 0 transitions.
        lo = jnp.where(in_e & (st >= 2) & ~efit, nu, lo)
        hi = jnp.where(in_e & (((st >= 2) & efit) | (st == 1)), jnp.where(st == 1, nu_max, nu),
                       hi)
        e_end = (st >= iters + 1) | ((st == 0) & efit)  # bisection over, or nu = 0 fits edge
        e_next = jnp.select([(st == 0) & ok, (st == 1) & ~efit, e_end & found, e_end],
                            [2, 2, 2, 1], 0)
        nu_fix_new = jnp.where(st == 0, 0.0, hi)
        # Phase 1 transitions.
        lo_c = jnp.where(~in_e & (st >= 1) & ~cfit, nu_c, lo_c)
        hi_c = jnp.where(~in_e & (((st >= 1) & cfit) | (st == 0)),
                         jnp.where(st == 0, nu_max, nu_c), hi_c)
        c_next = jnp.where(((st == 0) & ~cfit) | (st >= iters), 2, 1)
        nxt = jnp.where(in_e, e_next, c_next)
        st = jnp.where(nxt != phase, 0, st + 1)
        nu_fix = jnp.where(in_e & (nxt == 1), nu_fix_new, nu_fix)
        return (i + 1, nxt, st, lo, hi, lo_c, hi_c, nu_fix, best_p, best_v, best_dual, ok0)

    def cond(c):
        return (c[1] < 2) & (c[0] < 2 * iters + 4)

    empty = Partition(jnp.zeros(spec.n_layers, jnp.int32), jnp.zeros(spec.n_layers, jnp.int32),
                      jnp.int32(0), jnp.bool_(True), jnp.zeros(spec.n_layers, jnp.int32))
    init = (0, jnp.int32(0), jnp.int32(0), f32(1e-9), f32(nu_max), f32(1e-9), f32(nu_max),
            f32(0.0), empty, f32(BIG), f32(-BIG), jnp.bool_(False))
    out = jax.lax.while_loop(cond, step, init)
    hi, part, value, dual, ok0 = out[4], out[8], out[9], out[10], out[11]
    lower = jnp.where(ok0, value, jnp.minimum(dual, value))
    return ConstrainedResult(value, part, jnp.where(ok0, 0.0, hi), lower, value < BIG)


def best_costs(link: LinkState, spec: CostSpec, w: Weights, precisions=(0, 1, 2),
               tp: bool = False):
    """Convenience: the memory-feasible minimizer and its RequestCosts."""
    from costmodel.costs import privacy_ok, total_terms

    res = solve_memory(link, spec, w, precisions, tp=tp)
    tt = total_terms(res.partition, link, spec)
    return res, costs_from_terms(tt, res.partition.act_prec, link, spec,
                                 privacy_ok(res.partition, spec))
