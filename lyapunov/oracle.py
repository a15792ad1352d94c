"""Exact per-slot oracle: the partition that minimizes the slot's drift-plus-penalty expression.

The slot problem (docs/design.md §3-4) for queues ``(Q, Z_E, Z_A, Z_C)``, weight ``V``,
slot length ``tau`` and one link state is

    min_p  V pen(p) + Q (A - tau / l(p)) + sum_i Z_i (x_i(p) - x_bar_i)

over partitions ``p`` with edge memory within budget (privacy masks as in the DP), where
``pen = w_l l + w_e e + w_a a + w_c c`` (latency alone by default) and ``e, a, c`` are the
per-request edge energy, accuracy drop and cloud cost of ``p`` (so a budget ``x_bar`` is an
average per-request budget; a virtual queue with an infinite budget has no term). Dropping the
action-independent terms, the objective is

    J(p) = g(l(p)) + c(p),   g(l) = V w_l l - Q tau / l,
    c(p) = (V w_e + Z_E) e + (V w_a + Z_A) a + (V w_c + Z_C) c      (Z_i: 0 without budget)

with ``g`` concave and increasing on ``l > 0`` and ``c`` additive over layers. A concave
function increasing in both coordinates attains its minimum over a finite set at a vertex of
the lower-left convex hull of the achievable ``(l, c)`` pairs, and those vertices are the
minimizers of ``lambda l + c`` over ``lambda >= 0`` (``proofs/oracle.md``), each one exact
call of ``costmodel.dp.solve``. The hull is traced by Eisner-Severance breakpoint search: solve
at the two ends of the lambda range, intersect the two supporting lines, solve at the
intersection's slope; a point strictly below the chord is a new vertex and splits the interval.
An interval is also dropped when the concave ``J`` at the apex of its triangle (chord and the
two supporting lines, which contain every hull vertex in between) cannot beat the best vertex
so far: branch and bound, still exact. Intervals live on a fixed-size stack inside a
``lax.while_loop``, so the solver jits and vmaps.

The edge memory budget couples layers. When the unconstrained minimizer fits (``nu = 0``)
the answer is exact. Otherwise one more sweep runs with an exact resource DP over (side, memory
units) in which every option's memory is rounded *down* to a unit of about ``budget /
units`` (stretched so that an all-edge layer is a whole number of units, no rounding loss
there; the endpoints count exactly): the set contains every feasible partition, so its
minimum of ``J`` is a lower
bound, attained (and certified) whenever its minimizer fits. Each of its DP calls also traces
back the best partitions of its ``N_FIT`` best memory levels and offers the best one whose true
memory fits as a feasible point (a level a few units below an overrunning minimizer usually
holds a fitting partition of nearly the same value).

The Lagrangian ``J + nu (mem - budget)`` is again ``g(l) + (c + nu mem) - nu budget``
(additive), so the same sweep minimizes it exactly and gives the dual bound
``D(nu) <= min_{feasible} J``. Its multiplier is searched in a bracket (one end's minimizer too
big, the other's fitting) by cutting planes: the next ``nu`` is where the two ends' Lagrangian
lines meet (the geometric midpoint where that is not strictly inside), and the search ends when
a sweep attains that value, the dual's maximum (proofs/oracle.md, Proposition 6), keeping the
best memory-feasible vertex seen. That search runs only where the rounded-down sweep does not:
with ``units = 0``, for the cloud's budget, and when neither the rounded-down sweep nor the
rounded-up repair call after it (which runs where the sweep's best fitting point is more than
``REPAIR_GAP`` above its bound, or where it found none) offered anything that fits. On
memory-bound cards the dual's gap was 16-290 % where the rounded-down bound certified
0-1.3 %, so the search had cost 4-6 DP calls a decision for a bound that was never the better
one (docs/design.md §4.3). Where memory binds and the point is not certified, a move of two
layers' options with the edge memory exact may lower it (``_polish``, ``costmodel.dp_pairs``;
proofs/oracle.md, Remark 8a); the bound is untouched. ``exact`` says whether the best feasible
point meets the best lower bound within tolerance; ``lower_bound`` reports the bound. Where no
partition can exceed a budget (``costmodel.dp.memory_can_bind``; the static
``memory_can_bind=False``), none of this memory machinery is compiled: the nu = 0 sweep is the
whole answer.
The sweep's lambda range is narrowed to the slopes ``g`` can have at the optimum,
``[a, a + b / l_fast^2]`` (proofs/oracle.md, Proposition 7). (LLaMA-13B on a Pi 5 with memory
binding: 4-7 ms a slot, exact; the 70B-shaped card on an Orin NX: 9-25 ms, a certified gap
of at most 1.2 %; docs/design.md §4.3.)

Exactness holds over the lambda range ``[eps, 1/eps] * c_s / l_s`` (normalized by the latency
``l_s`` of the fastest partition and the ``c`` scale ``c_s``; the sweep runs on its
intersection with Proposition 7's range, which holds the optimum's slope), with ``eps = 1e-4``,
and up to float32 resolution (relative ``1e-5``): hull vertices whose latencies differ from a
neighbour's by less than ``eps`` relative, or that lie less than ``1e-5`` relative below a
chord, are not separated.
Tests compare with brute-force enumeration (``tests/lyapunov/test_oracle.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from costmodel import dp, dp_memory, dp_pairs
from costmodel.costs import RequestCosts, privacy_ok
from costmodel.link import LinkState
from costmodel.partition import Partition
from costmodel.spec import CostSpec
from lyapunov.queues import Budgets, Queues, dpp_objective, service_rate

BIG = dp.BIG
EPS_RANGE = 1e-4  # lambda range [EPS, 1/EPS] in normalized units
N_FIT = 16  # memory levels the resource DP traces back for a point that truly fits
RTOL = 1e-5  # relative tolerance: vertex detection, pruning and the exactness certificate
REPAIR_GAP = 0.02  # gap (relative, in the sweep's g + c) above which a rounded-up resource
# call repairs the feasible point (_end_sweep)


@struct.dataclass
class PenaltyWeights:
    """Penalty ``p = latency l + energy e + accuracy a + cloud_cost c`` of one request
    (weights >= 0; units 1/s, 1/J, 1/%, 1/USD times the penalty unit). Default: latency."""

    latency: jnp.ndarray = 1.0
    energy: jnp.ndarray = 0.0
    accuracy: jnp.ndarray = 0.0
    cloud_cost: jnp.ndarray = 0.0


@struct.dataclass
class SlotParams:
    """What the slot problem needs besides the queues and the link.

    V: penalty weight (>= 0). tau: slot length, s. budgets: time-average per-request budgets of
    the virtual queues (``inf``: none). penalty: the penalty mix.
    """

    V: jnp.ndarray
    tau: jnp.ndarray
    budgets: Budgets
    penalty: PenaltyWeights


def penalty_value(pw: PenaltyWeights, latency, energy, accuracy, cloud_cost):
    """``p = w_l l + w_e e + w_a a + w_c c`` with ``0 * inf = 0``."""
    out = 0.0
    for w, x in ((pw.latency, latency), (pw.energy, energy), (pw.accuracy, accuracy),
                 (pw.cloud_cost, cloud_cost)):
        on = w != 0
        out = out + jnp.where(on, w * jnp.where(on, x, 0.0), 0.0)
    return out


def _dpp(latency, energy, accuracy, cloud_cost, queues: Queues, arrivals, sp: SlotParams):
    mu = service_rate(latency, sp.tau)
    pen = penalty_value(sp.penalty, latency, energy, accuracy, cloud_cost)
    return dpp_objective(queues, sp.V, pen, arrivals, mu, energy, accuracy, cloud_cost,
                         sp.budgets)


def _point_dpp(pt: _Pt, queues: Queues, sp: SlotParams):
    """``slot_dpp`` (``A = 0``) of a point of the sweep."""
    return _dpp(pt.lat, pt.energy, pt.accuracy, pt.cloud_cost, queues, 0.0, sp)


def slot_dpp(costs: RequestCosts, queues: Queues, arrivals, sp: SlotParams):
    """The slot's DPP expression ``V p + Q (A - mu) + sum_i Z_i (x_i - x_bar_i)`` of a *feasible*
    partition with request costs ``costs`` (``lyapunov.queues.dpp_objective``)."""
    return _dpp(costs.latency_s, costs.energy_j, costs.accuracy_drop, costs.cloud_cost, queues,
                arrivals, sp)


def c_weights(queues: Queues, sp: SlotParams) -> dp.Weights:
    """Weights of the linear part ``c(p)``: ``V w_i + Z_i`` (``Z_i`` counted only with a
    finite budget and ``Z_i > 0``, as in ``dpp_objective``); latency weight 0."""
    def z(zi, bar):
        return jnp.where(jnp.isfinite(bar) & (zi > 0), zi, 0.0)

    b, pw = sp.budgets, sp.penalty
    return dp.Weights(latency=0.0,
                      energy=sp.V * pw.energy + z(queues.z_e, b.e_bar),
                      accuracy=sp.V * pw.accuracy + z(queues.z_a, b.a_bar),
                      cloud_cost=sp.V * pw.cloud_cost + z(queues.z_c, b.c_bar))


@struct.dataclass
class SlotSolution:
    """Result of :func:`solve_slot`.

    partition: the chosen partition (memory-feasible when ``feasible``).
    objective: its DPP expression with ``A = 0`` (``slot_dpp``; ``BIG`` when not feasible).
    lower_bound: a lower bound on the objective of every feasible partition (dual bound).
    lambda_: the latency weight (c units per second) of the line on which it was found (for a
      point from the two-layer move, the tangent's slope that move minimized).
    nu: the memory multiplier (c units per GB) of that line (0 when memory did not bind, or
      when the partition came from a resource-DP sweep).
    latency_s, c: its latency and linear part c(p).
    exact: the objective is the minimum over feasible partitions (within RTOL).
    feasible: some partition is feasible (memory, link, privacy).
    n_solves: exact DP calls used.
    gap: the certified relative optimality gap ``(objective - lower_bound) / |objective|``
      (0 when exact, ``inf`` when not feasible).
    """

    partition: Partition
    objective: jnp.ndarray
    lower_bound: jnp.ndarray
    lambda_: jnp.ndarray
    nu: jnp.ndarray
    latency_s: jnp.ndarray
    c: jnp.ndarray
    exact: jnp.ndarray
    feasible: jnp.ndarray
    n_solves: jnp.ndarray
    gap: jnp.ndarray


_PT_VALUES = ("lat", "energy", "accuracy", "cloud_cost", "c", "mem", "mem_c")
_PT_FLAGS = ("ok", "efit", "cfit")


@struct.dataclass
class _Pt:
    """One DP solution: partition, its latency, per-request edge energy, accuracy drop and
    cloud cost (what ``slot_dpp`` needs), c, edge and cloud memory (GB), feasible
    (everything), and whether it fits the edge's and the cloud's memory (with a finite
    latency and the privacy floor); read as attributes (``pt.lat``, ``pt.part``).

    Stored packed, three arrays: the values (float32, ``_PT_VALUES``), the flags (bool,
    ``_PT_FLAGS``) and the partition's integer leaves raveled (``layout``: their tree, shapes
    and dtypes). The solver's state holds four points, and XLA compiles a select of a point
    into one kernel per array: with a field per value and per partition leaf that had been
    about a quarter of the oracle's kernels (LLaMA-7B: 424 -> 364, and 12 % of its compile
    time; docs/design.md §4.3)."""

    values: jnp.ndarray
    flags: jnp.ndarray
    ints: jnp.ndarray
    layout: tuple = struct.field(pytree_node=False)

    @property
    def part(self):
        # Not jax.flatten_util.ravel_pytree, which does the same (its unravel as the static
        # layout): with it the same LLaMA-7B memory-bound decisions took 3.3-3.6 ms against
        # 3.1-3.3 ms, compile unchanged (alternating runs, 2026-12-05).
        tree, shapes, dtypes = self.layout
        out, k = [], 0
        for shape, dt in zip(shapes, dtypes, strict=True):
            n = int(np.prod(shape, dtype=int))
            out.append(self.ints[k:k + n].reshape(shape).astype(dt))
            k += n
        return jax.tree.unflatten(tree, out)

    def with_values(self, **kw):
        """A copy with the named values replaced."""
        return self.replace(values=jnp.stack([jnp.asarray(kw.get(n, self.values[i]), jnp.float32)
                                              for i, n in enumerate(_PT_VALUES)]))


for _i, _name in enumerate(_PT_VALUES):
    setattr(_Pt, _name, property(lambda self, i=_i: self.values[i]))
for _i, _name in enumerate(_PT_FLAGS):
    setattr(_Pt, _name, property(lambda self, i=_i: self.flags[i]))


def _make_pt(part, lat, energy, accuracy, cloud_cost, c, mem, ok, mem_c, efit, cfit) -> _Pt:
    leaves, tree = jax.tree.flatten(part)
    leaves = [jnp.asarray(x) for x in leaves]
    layout = (tree, tuple(x.shape for x in leaves), tuple(x.dtype for x in leaves))
    values = [lat, energy, accuracy, cloud_cost, c, mem, mem_c]
    return _Pt(jnp.stack([jnp.asarray(x, jnp.float32) for x in values]),
               jnp.stack([jnp.asarray(x, bool) for x in (ok, efit, cfit)]),
               jnp.concatenate([jnp.ravel(x).astype(jnp.int32) for x in leaves]), layout)


def _where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _evaluate(part: Partition, tables: dp.SlotTables, spec: CostSpec, cw: dp.Weights) -> _Pt:
    """The point of a partition, read from the slot's tables (``dp.path_totals``: the sums the
    DP minimizes, so the cost model is traced once per slot, in ``dp.slot_tables``)."""
    return _point(part, dp.path_totals(tables, part), spec, cw)


def _point(part: Partition, six, spec: CostSpec, cw: dp.Weights) -> _Pt:
    """The point of a partition with the six totals ``six`` (``dp.SIX``)."""
    lat_raw, energy, cloud_cost, accuracy, mem, mem_c = (six[i] for i in range(6))
    c = dp._finite(dp._wvec(cw) @ six)  # as dp.scalarize: latency weight 0, non-finite BIG
    link_ok = jnp.isfinite(lat_raw)
    lat = jnp.where(link_ok, lat_raw, BIG)
    base = (lat < BIG) & (c < BIG) & link_ok & privacy_ok(part, spec)
    efit = base & (mem * 1e9 <= spec.edge.mem_budget)
    cfit = base & (mem_c * 1e9 <= spec.cloud.mem_budget)
    return _make_pt(part, lat, energy, accuracy, cloud_cost, c, mem, efit & cfit, mem_c, efit,
                    cfit)


# Phases of the solver's state machine (one DP call per loop iteration, so the DP is compiled
# once): the two scale solves, then sweeps (low end, high end, stack), first at nu = 0, then
# over the rounded-down budget or along the search on nu while memory binds; _SUM: a
# certificate that nothing fits both budgets (mode 1: the least edge + cloud memory, before the
# rounded-down sweep; mode 2: the least cloud memory over the rounded-down edge budget, after
# that sweep found nothing that fits or before the cloud's multiplier search).
_FAST, _CHEAP, _LO, _HI, _SUM, _UP, _STACK, _DONE = range(8)
_GROWS = 4  # at most this many x1e6 growths of nu_max per multiplier (1e24)


@struct.dataclass
class _State:
    phase: jnp.ndarray
    mode: jnp.ndarray  # 0: Lagrangian sweeps (nu); 1: the sweep over the rounded-down budget;
    # 2: (phase _SUM only) the certificate over the rounded-down edge budget
    which: jnp.ndarray  # the memory nu prices: 0 the edge's, 1 the cloud's
    nu_e: jnp.ndarray  # with which == 1: the edge's multiplier, held fixed
    nu_i: jnp.ndarray  # -1: the nu = 0 sweep; 0: nu = nu_max; >= 1: bisection steps
    nu: jnp.ndarray
    lo: jnp.ndarray
    hi: jnp.ndarray
    l_s: jnp.ndarray
    c_s: jnp.ndarray
    m_s: jnp.ndarray
    nu_max: jnp.ndarray
    nu_max0: jnp.ndarray  # nu_max as first set (its growth is capped relative to it)
    p_fast: _Pt
    p_lo: _Pt
    stack: jnp.ndarray  # [cap, 6] rows (l1, c1, lam1, l2, c2, lam2); point 1 at smaller lambda
    size: jnp.ndarray
    n_sweep: jnp.ndarray
    sb_j: jnp.ndarray  # this sweep: best Lagrangian value g + c + nu mem, its point and lambda
    sb: _Pt
    sb_lam: jnp.ndarray
    f_j: jnp.ndarray  # overall: best true objective g + c of a feasible vertex
    f: _Pt
    f_lam: jnp.ndarray
    f_nu: jnp.ndarray
    lower: jnp.ndarray  # best dual bound on min over feasible of g + c
    complete: jnp.ndarray
    fits0: jnp.ndarray
    n_solves: jnp.ndarray
    # The edge multiplier's bracket ends' sweep minimizers (J = g + c unpriced, edge GB): the
    # next nu is where their two supporting lines of the dual meet (a cutting-plane step);
    # sec: the sweep just finished ran at such a nu.
    lo_j: jnp.ndarray
    lo_m: jnp.ndarray
    hi_j: jnp.ndarray
    hi_m: jnp.ndarray
    sec: jnp.ndarray


class _Problem(struct.PyTreeNode):
    link: LinkState
    spec: CostSpec
    cw: dp.Weights
    a: jnp.ndarray  # g(l) = a l - b / l
    b: jnp.ndarray
    budget: jnp.ndarray  # GB, edge
    budget_c: jnp.ndarray  # GB, cloud
    precisions: tuple = struct.field(pytree_node=False)
    cap: int = struct.field(pytree_node=False)
    nu_iters: int = struct.field(pytree_node=False)
    units: int = struct.field(pytree_node=False)
    tp: bool = struct.field(pytree_node=False, default=False)
    memory_can_bind: bool = struct.field(pytree_node=False, default=True)

    def g(self, lat):
        safe = jnp.where(lat > 0, lat, 1.0)
        return jnp.where(lat > 0, self.a * lat - self.b / safe, -BIG)

    def j_lagr(self, pt: _Pt, s):
        val = self.g(pt.lat) + pt.c + _price(pt, s)
        return jnp.where((pt.lat < BIG) & (pt.c < BIG), val, BIG)

    def j_true(self, pt: _Pt):
        return jnp.where(pt.ok, self.g(pt.lat) + pt.c, BIG)


def _price(pt: _Pt, s):
    """The multipliers' term of a point: nu times the edge's memory (GB), or with which == 1
    nu times the cloud's plus the held edge multiplier times the edge's."""
    return jnp.where(s.which == 1, s.nu * pt.mem_c + s.nu_e * pt.mem, s.nu * pt.mem)


def _lam_range(pb: _Problem, s: _State):
    """The sweep's lambda range: ``[EPS, 1/EPS]`` in normalized units, narrowed to the slopes
    the concave ``g`` can have where the optimum lies. The minimizer ``p*`` of ``g(l) + c``
    also minimizes ``lambda l + c`` at ``lambda = g'(l*)`` (``g`` lies below its tangent), and
    ``g'(l) = a + b / l^2`` falls with ``l``, which is at least the fastest latency ``l_s``:
    so ``lambda`` in ``[a, a + b / l_s^2]`` (proofs/oracle.md, Proposition 7). With a price on
    memory in ``c`` the same holds (``g`` is unchanged), and on any subset of partitions."""
    unit = (s.c_s + s.nu * s.m_s) / s.l_s
    unit = jnp.where(unit > 0, unit, 1.0 / s.l_s)  # c == 0 everywhere: lambda breaks ties only
    lo, hi = EPS_RANGE * unit, unit / EPS_RANGE
    g_lo = jnp.clip(pb.a * (1.0 - 1e-4), lo, hi)
    g_hi = jnp.clip((pb.a + pb.b / (s.l_s * s.l_s)) * (1.0 + 1e-4), lo, hi)
    return g_lo, jnp.maximum(g_hi, g_lo)


def _top(pb: _Problem, s: _State):
    """The interval on top of the stack, whether it can hold a better vertex, its slope."""
    l1, c1, lam1, l2, c2, lam2 = s.stack[jnp.maximum(s.size - 1, 0)]
    v1, v2 = lam1 * l1 + c1, lam2 * l2 + c2
    lx = (v2 - v1) / jnp.where(lam2 > lam1, lam2 - lam1, 1.0)  # apex of the triangle
    bound = pb.g(lx) + v1 - lam1 * lx
    tol = RTOL * (jnp.abs(s.sb_j) + jnp.abs(bound) + 1e-30)
    worth = ((s.size > 0) & (l1 - l2 > RTOL * l1) & (bound < s.sb_j - tol) & (l1 < BIG)
             & (c2 < BIG))
    lam = jnp.where(worth, (c2 - c1) / jnp.where(l1 > l2, l1 - l2, 1.0), lam1)
    return worth, lam, (l1, c1, lam1, l2, c2, lam2)


def _query(pb: _Problem, s: _State):
    """(solve now?, DP weights, lambda) for the current phase."""
    lam_lo, lam_hi = _lam_range(pb, s)
    worth, lam_star, _ = _top(pb, s)
    lam = jnp.select([s.phase == _LO, s.phase == _HI, s.phase == _UP],
                     [lam_lo, lam_hi, s.sb_lam], lam_star)
    norm = lam * s.l_s + s.c_s + s.nu * s.m_s
    norm = jnp.where(norm > 0, norm, 1.0)
    cw = pb.cw
    has_c = (cw.energy + cw.accuracy + cw.cloud_cost) > 0
    fast, cheap = s.phase == _FAST, s.phase == _CHEAP
    total = s.phase == _SUM
    w = dp.Weights(
        latency=jnp.select([fast, cheap], [1.0, 1e-6 * has_c], lam / norm),
        energy=jnp.select([fast, cheap], [0.0, cw.energy], cw.energy / norm),
        accuracy=jnp.select([fast, cheap], [0.0, cw.accuracy], cw.accuracy / norm),
        cloud_cost=jnp.select([fast, cheap], [0.0, cw.cloud_cost], cw.cloud_cost / norm),
        memory=jnp.where(fast | cheap | (s.mode >= 1), 0.0,
                         jnp.where(s.which == 1, s.nu_e, s.nu) / norm),
        cloud_memory=jnp.where(fast | cheap | (s.which == 0), 0.0, s.nu / norm))
    w = _where(total, dp.Weights(0.0, 0.0, 0.0, 0.0, 1.0 * (s.mode == 1), 1.0), w)
    need = (s.phase < _STACK) | ((s.phase == _STACK) & worth)
    return need, w, lam, worth


def _end_sweep(pb: _Problem, s: _State, complete_sweep) -> _State:
    """Fold a finished sweep into the overall result and pick what comes next: the next nu of
    the bisection, the sweep over the rounded-down budget (when memory binds and the dual
    bound has not closed the gap), or the end. The multiplier prices the edge's memory; it
    moves to the cloud's (the edge's held at 0) when the first sweep's minimizer fits the edge
    but not the cloud, or (the edge's held at the smallest edge-feasible multiplier found) when
    the edge's bisection found nothing that fits both."""
    first = s.nu_i == -1
    budget = jnp.where(s.which == 1, pb.budget_c, pb.budget)
    held = jnp.where(s.which == 1, s.nu_e * pb.budget, 0.0)
    lower = jnp.maximum(s.lower, s.sb_j - s.nu * budget - held)
    fits_e = jnp.where(s.which == 1, s.sb.cfit, s.sb.efit)
    complete = s.complete & complete_sweep
    fits0 = jnp.where(first, s.sb.ok, s.fits0)
    # The edge's multiplier search has reached the dual's maximum (a cutting-plane step that
    # attained its lines' value; see below).
    pred = s.lo_j + s.nu * (s.lo_m - budget)  # the bracket ends' lines' value at this nu
    dual = s.sb_j - s.nu * budget
    at_max = (s.sec & (s.which == 0) & (s.mode == 0) & (s.nu_i >= 1)
              & (dual >= pred - RTOL * (jnp.abs(pred) + jnp.abs(dual) + 1e-30)))
    # Where the edge's bisection ends (as below) with nothing that fits both.
    e_stop = (s.which == 0) & (s.mode == 0) & ~first & (
        ((s.nu_i == 0) & ~fits_e) | (s.nu_i + 1 > pb.nu_iters) | at_max)
    edge_hi = jnp.where((s.nu_i >= 1) & fits_e, s.nu, s.hi)
    # At the dual's maximum, hold the edge's multiplier just above it (where the fitting
    # bracket end's line is the lower), as the bisection's bracket would end.
    edge_hi = jnp.where(at_max, jnp.minimum(s.nu * (1.0 + 1e-4), edge_hi), edge_hi)
    to_cloud = (((first & s.sb.efit & ~s.sb.cfit)
                 | (e_stop & ~((s.nu_i == 0) & ~fits_e) & (s.f_j >= BIG)))
                & (pb.budget_c < jnp.inf))
    # The scales of the cloud's multiplier (as the edge's, set after the first solves).
    m_s = jnp.where(to_cloud, jnp.maximum(s.p_fast.mem_c, 1e-3), s.m_s)
    nu_max = jnp.where(to_cloud, s.nu_max * jnp.maximum(pb.budget, 1e-6)
                       / jnp.maximum(pb.budget_c, 1e-6), s.nu_max)
    s = s.replace(which=jnp.where(to_cloud, 1, s.which), m_s=m_s, nu_max=nu_max,
                  nu_e=jnp.where(to_cloud, jnp.where(first, 0.0, edge_hi), s.nu_e),
                  nu_i=jnp.where(to_cloud, -1, s.nu_i),
                  lo=jnp.where(to_cloud, 1e-12 * nu_max, s.lo),
                  hi=jnp.where(to_cloud, nu_max, s.hi))
    first = first & ~to_cloud
    fits = jnp.where(to_cloud, False, jnp.where(s.which == 1, s.sb.cfit, s.sb.efit))
    # nu_max did not make the minimizer fit: the objective's scale it was built from may be
    # too small (V = Q = 0: only c, possibly 0 at both scale points), so grow it (x 1e6)
    # before concluding that nothing fits; the memory-first minimizer is reached once
    # nu (mem - mem_min) outweighs every difference of J.
    grow = (s.nu_i == 0) & ~fits & ~to_cloud & (s.nu_max < 1e24 * s.nu_max0)
    nu_max = jnp.where(grow, s.nu_max * 1e6, s.nu_max)
    lo = jnp.where(((s.nu_i >= 1) & ~fits) | grow, s.nu, s.lo)
    hi = jnp.where(((s.nu_i >= 1) & fits) | grow, jnp.where(grow, nu_max, s.nu), s.hi)
    nu_i = jnp.where(grow, 0, s.nu_i + 1)
    nothing = (s.nu_i == 0) & ~fits & ~grow  # even the memory-first minimizer does not fit
    gap = s.f_j - lower > RTOL * (jnp.abs(s.f_j) + jnp.abs(lower) + 1e-30)
    # The bisection also ends once the gap is closed (a feasible point meets the bound).
    stop = (first & fits) | nothing | (nu_i > pb.nu_iters) | ((s.nu_i >= 1) & ~gap & ~grow)
    in_res = s.mode >= 1
    # Cutting plane on the edge's dual D(nu) = min_p J(p) + nu (mem(p) - budget) (concave,
    # piecewise linear): each sweep's minimizer gives the line J + nu (mem - budget) >= D;
    # the next nu is where the lines of the bracket ends' minimizers (one too big, one that
    # fits) meet, kept strictly inside the bracket (else the geometric midpoint). When a
    # sweep at such a nu attains the lines' value there, that nu maximizes D: the bound
    # cannot improve and the multiplier search ends (proofs/oracle.md, Proposition 6).
    edge_lagr = (s.which == 0) & (s.mode == 0)
    j0 = pb.g(s.sb.lat) + s.sb.c
    ok_pt = (s.sb.lat < BIG) & (s.sb.c < BIG) & edge_lagr
    set_hi = ok_pt & fits & (s.nu_i >= 0)
    set_lo = ok_pt & ~fits & ((s.nu_i == -1) | (s.nu_i >= 1))
    lo_j, lo_m = jnp.where(set_lo, j0, s.lo_j), jnp.where(set_lo, s.sb.mem, s.lo_m)
    hi_j, hi_m = jnp.where(set_hi, j0, s.hi_j), jnp.where(set_hi, s.sb.mem, s.hi_m)
    stop = stop | (at_max & ~to_cloud & ~grow)
    # The edge's minimizer at nu = 0 does not fit: straight to the rounded-down sweep, whose
    # bound is the tighter one (memory is lumpy: on memory-bound cards the Lagrangian's dual
    # gap was 16-290 % where the rounded-down bound certified 0-1.3 %), and whose fitting
    # candidates are the feasible points. The multiplier search runs only if that sweep finds
    # nothing that fits (below; it starts at nu_i = 0, so it never comes back here), with
    # units = 0, or for the cloud's budget (which == 1).
    to_res = first & ~fits & ~to_cloud & (s.which == 0) & (pb.units > 0)
    dm = lo_m - hi_m
    nu_c = (hi_j - lo_j) / jnp.where(dm > 0, dm, 1.0)
    use_c = edge_lagr & (nu_i >= 1) & (dm > 0) & (nu_c > lo) & (nu_c < hi) & jnp.isfinite(nu_c)
    nu = jnp.where(nu_i == 0, nu_max, jnp.where(use_c, nu_c, jnp.sqrt(lo * hi)))
    # The rounded-down sweep is not priced (nu = 0): its minimizer, when it fits, is then
    # certified optimal (pricing it with the best dual multiplier also gives a valid bound,
    # but loses that; proofs/oracle.md, Proposition 5).
    # With a cloud budget, the certificate that nothing fits both comes first (one plain DP
    # call, _after_sum; the rounded-down sweep's two calls cost more).
    res_phase = jnp.where(pb.budget_c < jnp.inf, _SUM, _LO)
    # Before the cloud's multiplier search, the certificate over the rounded-down edge budget
    # (_after_sum, mode 2; then the search runs as set up here).
    cloud_cert = to_cloud & (pb.units > 0)
    lagr = s.replace(phase=jnp.where(to_res, res_phase,
                                     jnp.where(cloud_cert, _SUM, jnp.where(stop, _DONE, _LO))),
                     mode=jnp.where(to_res, 1, jnp.where(cloud_cert, 2, 0)), nu_i=nu_i,
                     nu=jnp.where(to_res, 0.0, nu), lo=lo, hi=hi, lower=lower,
                     complete=complete, fits0=fits0, nu_max=nu_max, lo_j=lo_j, lo_m=lo_m,
                     hi_j=hi_j, hi_m=hi_m, sec=use_c & ~to_res)
    # After the rounded-down sweep (a lower bound; its feasible points were offered as it ran):
    # stop, unless none of them fits (while the relaxation holds partitions) or the best is far
    # above the bound; then one rounded-*up* resource call at the relaxed minimizer's lambda,
    # whose every partition fits the edge (a repair of the feasible point; the bound stays the
    # rounded-down sweep's), and after it (_after_up) the end, or where still nothing fits,
    # with a cloud budget the certificate over the rounded-down edge budget (mode 2) and the
    # edge's multiplier search from nu_max (the memory-first minimizer) as it would have run.
    # Where many mixed layers each round down by up to a unit, or a cliff sits at the budget,
    # the rounded-down sweep's best levels can all overrun but for a poor partition, or all of
    # them (LLaMA-13B on a Pi 5: 2 states in 48 at gaps of 13 % and 124 %; the 70B card with
    # the MEC 160 GB: 4 in 48 at 37 %, from the multiplier search; docs/design.md §4.3).
    again = (s.f_j >= BIG) & (lower < BIG)
    far = (s.f_j < BIG) & (s.f_j - lower > REPAIR_GAP * jnp.maximum(jnp.abs(s.f_j),
                                                                     jnp.abs(lower)))
    up = (again | far) & (s.mode == 1)
    res = s.replace(phase=jnp.where(up, _UP, _DONE), lower=lower, complete=complete)
    return _where(in_res, res, lagr)


def _after_fast(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    return s.replace(p_fast=pt, phase=jnp.int32(_CHEAP))


def _after_cheap(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    """The scales (from the fastest and the cheapest partition), then the nu = 0 sweep."""
    pf = s.p_fast
    l_s = jnp.where(pf.lat < BIG, pf.lat, 1.0)
    c_s = jnp.maximum(jnp.where(pf.c < BIG, pf.c, 0.0), jnp.where(pt.c < BIG, pt.c, 0.0))
    m_s = jnp.maximum(pf.mem, 1e-3)
    j_s = jnp.abs(pb.a) * l_s + pb.b / l_s + c_s + 1e-12
    nu_max = 1e6 * j_s / jnp.maximum(pb.budget, 1e-6)
    return s.replace(phase=jnp.int32(_LO), l_s=l_s, c_s=c_s, m_s=m_s, nu_max=nu_max,
                     nu_max0=nu_max, lo=1e-12 * nu_max, hi=nu_max, nu=jnp.float32(0.0),
                     nu_i=jnp.int32(-1))


def _after_lo(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    return s.replace(p_lo=pt, phase=jnp.int32(_HI))


def _after_hi(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    """Start the sweep's stack with [p_lo, p_hi]."""
    lam_lo, lam_hi = _lam_range(pb, s)
    p_lo, nu = s.p_lo, s.nu
    j_lo, j_hi = pb.j_lagr(p_lo, s), pb.j_lagr(pt, s)
    t_lo, t_hi = pb.j_true(p_lo), pb.j_true(pt)
    row = jnp.stack([p_lo.lat, p_lo.c + _price(p_lo, s), lam_lo, pt.lat, pt.c + _price(pt, s),
                     lam_hi])
    out = s.replace(
        phase=jnp.int32(_STACK), stack=s.stack.at[0].set(row), size=jnp.int32(1),
        n_sweep=jnp.int32(2), sb_j=jnp.minimum(j_lo, j_hi), sb=_where(j_hi < j_lo, pt, p_lo),
        sb_lam=jnp.where(j_hi < j_lo, lam_hi, lam_lo))
    better_f = (t_hi < s.f_j) | (t_lo < s.f_j)
    take_hi = t_hi < t_lo
    return out.replace(
        f_j=jnp.where(better_f, jnp.minimum(t_lo, t_hi), s.f_j),
        f=_where(better_f, _where(take_hi, pt, p_lo), s.f),
        f_lam=jnp.where(better_f, jnp.where(take_hi, lam_hi, lam_lo), s.f_lam),
        f_nu=jnp.where(better_f, nu, s.f_nu))


def _after_sum(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    """A certificate that no partition fits both budgets (proofs/oracle.md, Remark 3a). Mode 1
    (before the rounded-down sweep): ``pt`` minimizes edge + cloud memory over the allowed
    partitions, and even that sum exceeds the two budgets' sum. Mode 2 (after that sweep found
    nothing that fits): ``pt`` minimizes the cloud's memory over the rounded-down edge budget's
    set, which holds every partition that fits the edge, and even that exceeds the cloud's
    budget; mode 2 also runs before the cloud's multiplier search. Then the feasible set is
    empty (its minimum is BIG: infeasible and certified so); else the rounded-down sweep runs
    (mode 1) or the multiplier search (mode 2)."""
    first = s.mode == 1
    need = jnp.where(first, pt.mem + pt.mem_c, pt.mem_c)
    room = jnp.where(first, pb.budget + pb.budget_c, pb.budget_c)
    none = (pt.lat < BIG) & (need > room + RTOL * (jnp.abs(room) + 1e-30))
    return s.replace(phase=jnp.where(none, _DONE, _LO),
                     mode=jnp.where(first | none, s.mode, 0),
                     lower=jnp.where(none, jnp.float32(BIG), s.lower))


def _after_up(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    """After the rounded-up repair call (``_end_sweep``; its points were offered as feasible
    candidates as it ran): the end, or where still nothing fits, with a cloud budget the
    certificate over the rounded-down edge budget (_after_sum, mode 2), and the edge's
    multiplier search from nu_max (the memory-first minimizer) as it would have run."""
    again = s.f_j >= BIG
    cert = again & (pb.budget_c < jnp.inf)
    return s.replace(phase=jnp.where(cert, _SUM, jnp.where(again, _LO, _DONE)),
                     mode=jnp.where(cert, 2, jnp.where(again, 0, s.mode)),
                     nu_i=jnp.where(again, 0, s.nu_i), nu=jnp.where(again, s.nu_max, s.nu))


def _after_stack(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    """Pop; a point strictly below the chord is a new vertex that splits the interval."""
    _, _, (l1, c1, lam1, l2, c2, lam2) = _top(pb, s)
    nu = s.nu
    size = s.size - 1
    cp = pt.c + _price(pt, s)
    vline = lam * l1 + c1
    new = worth & (lam * pt.lat + cp < vline - RTOL * (jnp.abs(vline) + 1e-30)) & (pt.lat < BIG)
    jp, tp = pb.j_lagr(pt, s), pb.j_true(pt)
    better = new & (jp < s.sb_j)
    fbetter = new & (tp < s.f_j)
    cap = pb.cap
    push = new & (size + 2 <= cap)
    i_a, i_b = jnp.minimum(size, cap - 1), jnp.minimum(size + 1, cap - 1)
    stack = s.stack.at[i_a].set(jnp.where(push, jnp.stack([l1, c1, lam1, pt.lat, cp, lam]),
                                          s.stack[i_a]))
    stack = stack.at[i_b].set(jnp.where(push, jnp.stack([pt.lat, cp, lam, l2, c2, lam2]),
                                        stack[i_b]))
    size = size + 2 * push
    n_sweep = s.n_sweep + worth
    out = s.replace(
        stack=stack, size=size, n_sweep=n_sweep,
        sb_j=jnp.where(better, jp, s.sb_j), sb=_where(better, pt, s.sb),
        sb_lam=jnp.where(better, lam, s.sb_lam),
        f_j=jnp.where(fbetter, tp, s.f_j), f=_where(fbetter, pt, s.f),
        f_lam=jnp.where(fbetter, lam, s.f_lam), f_nu=jnp.where(fbetter, nu, s.f_nu))
    end = (size == 0) | (n_sweep >= cap)
    complete_sweep = (size == 0) & ~(new & ~push)
    # A conditional, not a select: the sweep's end is a separate computation, so XLA does not
    # copy its scalar logic into every leaf of the state (compile time).
    finish = _end_sweep if pb.memory_can_bind else _end_free
    return jax.lax.cond(end, lambda o: finish(pb, o, complete_sweep), lambda o: o, out)


def _end_free(pb: _Problem, s: _State, complete_sweep) -> _State:
    """``_end_sweep`` where no partition can exceed a memory budget (``memory_can_bind``
    false): the nu = 0 sweep is the only one; its bound is the lower bound and its best vertex,
    which fits, the answer."""
    return s.replace(phase=jnp.int32(_DONE), lower=jnp.maximum(s.lower, s.sb_j),
                     complete=s.complete & complete_sweep, fits0=s.sb.ok)


def _transition(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    """The state after one iteration's solve ``pt``, by phase (a ``lax.switch``: each phase's
    update is its own computation)."""
    s = s.replace(n_solves=s.n_solves + (s.phase < _STACK) + worth)
    phases = [_after_fast, _after_cheap, _after_lo, _after_hi, _after_sum, _after_up,
              _after_stack]
    if not pb.memory_can_bind:  # the phases only memory reaches: not compiled
        phases[_SUM] = phases[_UP] = _unreached
    return jax.lax.switch(jnp.clip(s.phase, 0, _STACK),
                          [functools.partial(f, pb) for f in phases], s, pt, lam, worth)


def _unreached(pb: _Problem, s: _State, pt: _Pt, lam, worth) -> _State:
    return s


def _sweep(pb: _Problem, solve, solve_resource, evaluate) -> _State:
    """Run the state machine to its end. ``solve(w)`` is the exact linear oracle (argmin of
    the weighted objective ``w``), ``solve_resource(w, up)`` the resource DP over the budget
    rounded down (``up`` false) or up (the repair call; used only when ``pb.units > 0``),
    which returns its minimizer and a partition that truly fits
    (``costmodel.dp_memory.solve_tables_resource_fit``); ``evaluate(part) -> _Pt`` prices them
    (after the branch)."""
    f32 = jnp.float32
    # The sentinel "no point yet": a point's pytree shape with latency and cost at BIG, so it
    # loses every comparison; it fills the state's point slots and stands for "no solve".
    shapes = jax.eval_shape(lambda w: evaluate(solve(w)), dp.Weights())
    no_point = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    no_point = no_point.with_values(lat=f32(BIG), c=f32(BIG))
    zero, big = f32(0.0), f32(BIG)
    s0 = _State(
        phase=jnp.int32(_FAST), mode=jnp.int32(0), which=jnp.int32(0), nu_e=zero,
        nu_i=jnp.int32(-1), nu=zero, lo=zero,
        hi=zero, l_s=f32(1.0), c_s=zero, m_s=f32(1.0), nu_max=zero, nu_max0=zero,
        p_fast=no_point,
        p_lo=no_point,
        stack=jnp.zeros((pb.cap, 6), f32), size=jnp.int32(0), n_sweep=jnp.int32(0),
        sb_j=big, sb=no_point, sb_lam=zero, f_j=big, f=no_point, f_lam=zero, f_nu=zero,
        lower=f32(-BIG), complete=jnp.bool_(True), fits0=jnp.bool_(False),
        n_solves=jnp.int32(0), lo_j=zero, lo_m=zero, hi_j=zero, hi_m=zero,
        sec=jnp.bool_(False))
    max_iter = (pb.nu_iters + 3 + 2 * _GROWS) * (3 * pb.cap + 3) + 2

    def cond(c):
        i, s = c
        return (s.phase != _DONE) & (i < max_iter)

    def plain(w):
        part = solve(w)
        return part, part

    def skip(w):
        return no_point.part

    def skip2(w):
        return no_point.part, no_point.part

    def body(c):
        i, s = c
        need, w, lam, worth = _query(pb, s)
        # An iteration that only pops an interval not worth a solve (``need`` false) calls no
        # DP: on memory-bound cards that had been one resource-DP call in three, run and thrown
        # away (docs/design.md §4.3).
        if pb.units > 0:
            # the rounded-down sweep and the certificate after it (the one before is plain)
            use_res = (s.mode >= 1) & ((s.phase != _SUM) | (s.mode == 2))
            up = s.phase == _UP
            part, fit = jax.lax.switch(jnp.where(need, 1 + use_res.astype(jnp.int32), 0),
                                       [skip2, plain, lambda w: solve_resource(w, up)], w)
            pt = evaluate(part)
            # The resource DP's point that truly fits (from its best memory levels) is a
            # feasible candidate, kept before the sweep's own update (which may end the sweep);
            # the plain DP's is its own point, not priced twice.
            pf = jax.lax.cond(use_res, evaluate, lambda _: pt, fit)
            tf = pb.j_true(pf)
            better = need & use_res & (tf < s.f_j)
            s = s.replace(f_j=jnp.where(better, tf, s.f_j), f=_where(better, pf, s.f),
                          f_lam=jnp.where(better, lam, s.f_lam),
                          f_nu=jnp.where(better, s.nu, s.f_nu))
        else:
            pt = evaluate(jax.lax.cond(need, solve, skip, w))
        pt = _where(need, pt, no_point)
        return i + 1, _transition(pb, s, pt, lam, worth)

    _, s = jax.lax.while_loop(cond, body, (jnp.int32(0), s0))
    return s.replace(complete=s.complete & (s.phase == _DONE))


def _polish(pb: _Problem, s: _State, tables: dp.SlotTables) -> _State:
    """The feasible point after a two-layer move with the edge memory exact, where that is
    better (``costmodel.dp_pairs``; docs/design.md §4.3): the moves minimize the objective's
    tangent at the point, ``g'(l) l + c`` (``g`` lies below it, so a move that lowers the
    tangent lowers ``J`` by at least as much); the best of them by the exact ``J`` within both
    budgets becomes a point (its totals are sums of the tables' rows, as ``_evaluate``'s) and
    is taken only if it passes the point's own fit tests and is lower. The bound is not
    touched."""
    pt = s.f
    lat = jnp.where((pt.lat > 0) & (pt.lat < BIG), pt.lat, 1.0)
    lam = pb.a + pb.b / (lat * lat)
    mv = dp_pairs.pair_moves(tables, pb.cw.replace(latency=lam), pt.part, pb.budget)
    j = pb.g(mv.six[:, 0]) + dp._finite(mv.six @ dp._wvec(pb.cw))
    fits = ((mv.value < BIG) & (mv.six[:, 4] <= pb.budget * (1.0 + dp_pairs.BUDGET_RTOL))
            & (mv.six[:, 5] <= pb.budget_c * (1.0 + dp_pairs.BUDGET_RTOL)))
    k = jnp.where(fits, j, BIG).argmin()
    new = _point(dp_pairs.apply_move(pt.part, mv.layers[k], mv.options[k], pb.tp), mv.six[k],
                 pb.spec, pb.cw)
    j_new = pb.j_true(new)
    take = j_new < s.f_j
    return s.replace(f=_where(take, new, pt), f_j=jnp.where(take, j_new, s.f_j),
                     f_lam=jnp.where(take, lam, s.f_lam))


def _certificate(s: _State):
    """(feasible, exact) of a finished sweep."""
    feasible = s.f_j < BIG
    exact_unc = s.fits0 & s.complete
    gap_ok = (s.f_j - s.lower) <= RTOL * (jnp.abs(s.f_j) + jnp.abs(s.lower) + 1e-30)
    return feasible, jnp.where(s.fits0, exact_unc, feasible & gap_ok & s.complete)


@functools.partial(jax.jit, static_argnames=("precisions", "max_solves", "nu_iters", "units",
                                            "tp", "shifts", "memory_can_bind", "polish"))
def solve_slot(queues: Queues, link: LinkState, spec: CostSpec, sp: SlotParams,
               precisions=(0, 1, 2), max_solves: int = 48, nu_iters: int = 20,
               units: int = 512, tp: bool = False, shifts: int = 0,
               memory_can_bind: bool = True, polish: bool = True) -> SlotSolution:
    """Exact minimizer of the slot's DPP expression (see the module docstring).

    Args:
      queues: Q, Z_E, Z_A, Z_C at the start of the slot (scalars; vmap for batches).
      link: the link state the slot's costs are computed with.
      spec: cost spec (the memory budget is ``spec.edge.mem_budget``).
      sp: V, tau, budgets and penalty weights.
      precisions: activation precisions allowed (static).
      max_solves: DP calls per hull sweep, also the stack size (static; reaching it clears
        ``exact``).
      nu_iters: bisection steps on the memory multiplier when memory binds (static).
      units: resolution of the rounded-down budget of the final sweep when memory binds
        (static; 0 skips that sweep, else at least 2).
      tp: the option space (static): False the paper's (no tensor-parallel FFN), True with tp
        FFNs and the residual on both sides (``costmodel.dp``).
      shifts: the resource DP's distinct rounded option memories (static; the unit coarsens
        if one option would span more, ``costmodel.dp_memory.resource_unit``); 0: automatic,
        ``min(units + 1, max(24, 2 * units / layers))`` (every shift on small cards, where a
        layer can be a large part of the budget; the cost is layers x shifts x units).
      memory_can_bind: (static) False promises that no partition of ``spec`` exceeds either
        memory budget (``costmodel.dp.memory_can_bind(spec)``, which ``EnvParams``
        checks): the program then holds no memory machinery (no resource DP, no multiplier
        search), about half the compile time; the same answers where the promise holds. Where
        it does not, the answer is the best vertex of the unconstrained sweep that fits (or
        infeasible), with the unconstrained bound: valid, not the constrained optimum.
      polish: (static) where memory binds and the point is not certified exact, try the
        two-layer moves with the edge memory exact (``_polish``); False skips them (for
        comparison: the bound is the same, the point may be up to about 0.1 % higher).

    Returns:
      SlotSolution. Jitted (called eagerly, every caller shares one compiled program per spec
      shape); vmap-able and inlined into an outer jit. One DP call site, so it compiles once.
    """
    f32 = jnp.float32
    cw = c_weights(queues, sp)
    pb = _Problem(link, spec, cw, f32(sp.V * sp.penalty.latency),
                  f32(jnp.maximum(queues.q, 0.0) * sp.tau), spec.edge.mem_budget / 1e9,
                  spec.cloud.mem_budget / 1e9, tuple(int(q) for q in precisions),
                  int(max_solves), int(nu_iters), int(units) if memory_can_bind else 0,
                  bool(tp), bool(memory_can_bind))

    # The option terms do not depend on the weights: computed once per slot, outside the loop.
    tables = dp.slot_tables(link, spec, pb.precisions, pb.tp)
    n_shift = int(shifts) or (dp_memory.default_shifts(pb.units, spec.n_layers) if pb.units
                              else 0)  # no resource DP without units

    def solve(w):
        return dp.solve_tables(tables, w).partition

    def solve_resource(w, up):
        res = dp_memory.solve_tables_resource_fit(tables, w, pb.budget, max(pb.units, 1), up,
                                                  n_shift, N_FIT, pb.budget_c)
        return res.best.partition, res.fit.partition

    s = _sweep(pb, solve, solve_resource, lambda part: _evaluate(part, tables, spec, cw))
    if pb.units > 0 and polish:
        s = jax.lax.cond(s.f.ok & ~_certificate(s)[1],
                         lambda s: _polish(pb, s, tables), lambda s: s, s)
    feasible, exact = _certificate(s)
    pt = s.f
    dpp = _point_dpp(pt, queues, sp)
    shift = jnp.where(feasible, dpp - s.f_j, 0.0)  # DPP (A = 0) minus the action-dependent J
    lb = jnp.minimum(s.lower + shift, jnp.where(feasible, dpp, BIG))
    return SlotSolution(
        partition=pt.part, objective=jnp.where(feasible, dpp, BIG),
        lower_bound=lb,
        lambda_=s.f_lam, nu=s.f_nu, latency_s=pt.lat, c=pt.c, exact=exact,
        feasible=feasible, n_solves=s.n_solves, gap=_rel_gap(dpp, lb, feasible, exact))


def _rel_gap(obj, lb, feasible, exact):
    gap = jnp.maximum(obj - lb, 0.0) / jnp.maximum(jnp.abs(obj), 1e-30)
    return jnp.where(feasible, jnp.where(exact, 0.0, gap), jnp.inf)


@struct.dataclass
class PointSolution:
    """Result of :func:`minimize_points`: index of the chosen point, its objective
    ``g(l) + c``, the lower bound, the exactness certificate, feasibility and DP-call count
    (here: argmin calls), as in :class:`SlotSolution`."""

    index: jnp.ndarray
    objective: jnp.ndarray
    lower_bound: jnp.ndarray
    exact: jnp.ndarray
    feasible: jnp.ndarray
    n_solves: jnp.ndarray


@functools.partial(jax.jit, static_argnames=("max_solves", "nu_iters"))
def minimize_points(lat, c, mem, a, b, budget, max_solves: int = 48,
                    nu_iters: int = 20) -> PointSolution:
    """The slot solver's sweep over an explicit finite set instead of the DP's partitions.

    Minimizes ``J = g(l) + c`` with ``g(l) = a l - b / l`` (``a, b >= 0``) over the points
    ``(lat [N] > 0, c [N] >= 0, mem [N])`` with ``mem <= budget``; the linear oracle is the
    argmin of ``lambda l + c + nu mem`` over the set. Everything else (hull search, branch and
    bound, the multiplier bisection and its dual bound, the certificate) is the code
    :func:`solve_slot` runs, without the resource-DP sweeps, which need the DP's structure.
    docs/design.md §4; the lemmas it rests on are checked on it in ``tests/proofs``.
    """
    f32 = jnp.float32
    lat, c, mem = (jnp.asarray(x, f32) for x in (lat, c, mem))
    cw = dp.Weights(latency=0.0, energy=1.0)  # c enters as the "energy" term
    pb = _Problem(None, None, cw, f32(a), f32(b), f32(budget), f32(jnp.inf), (0,),
                  int(max_solves), int(nu_iters), 0)

    def solve(w):
        return (w.latency * lat + w.energy * c + w.memory * mem).argmin()

    def evaluate(i):
        fits = mem[i] <= pb.budget
        zero = f32(0.0)
        return _make_pt(i, lat[i], zero, zero, zero, c[i], mem[i], fits, zero, fits,
                        jnp.bool_(True))

    s = _sweep(pb, solve, None, evaluate)
    feasible, exact = _certificate(s)
    return PointSolution(s.f.part, jnp.where(feasible, s.f_j, BIG),
                         jnp.minimum(s.lower, s.f_j), exact, feasible, s.n_solves)
