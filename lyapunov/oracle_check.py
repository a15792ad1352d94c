"""Offline check of the slot oracle's optimality gap, with the edge memory exact
(docs/design.md §4.3).

The oracle (``lyapunov.oracle``) certifies its gap in milliseconds against a relaxation in which
every option's memory is rounded down to a unit of about ``budget / units``. Near the budget that
relaxation admits partitions that overrun it by a few KB (the cliff), so on the 70B-shaped card
its bound can sit a per cent or more below the optimum while the partition found is within about
0.1 % of it. This module tightens the bound offline, in seconds a state:

- :func:`exact_line`: a lower bound on ``min lam l + c`` (any DP weights) over the partitions
  whose *exact* edge memory fits, and that minimum itself when it is below a target. Bounded
  enumeration: suffixes of partitions (layers ``L-1`` down to ``l``, per precision and
  embedding side, from each final side) are kept per residual side, Pareto-filtered on (cost,
  exact memory), and dropped once their cost plus the resource DP's forward value of the prefix
  (rounded down, ``costmodel.dp_memory.forward_values``: a lower bound for every prefix that fits
  the memory the suffix leaves) reaches the target. A dropped suffix has no completion below the
  target that fits; a dominated one is matched by its dominator; so every fitting partition
  below the target is found (proofs/oracle.md, Proposition 8).
- :func:`check_slot`: the slot objective ``J = g(l) + c`` is concave in latency, so over the
  feasible set it is at least its minimum over the polygon of lines ``lam l + c >= V(lam)``: the
  relaxation's lines on a grid of slopes over Proposition 7's range, and exact lines at
  ``lam = g'(l_v)``, where ``l_v`` minimizes ``J`` over the polygon so far (Kelley's cutting
  planes), until the gap is within the target, the lines stop moving the bound, or
  ``max_lines`` is reached. An exact line's target is the checked partition's own value at that
  slope (it fits, so the least value is at most that) less a slack, ``slack * target *
  |objective|``: the line is the exact minimum where a partition lies below that, and within
  the slack of it otherwise. The slack prunes the suffixes that could beat the checked
  partition by less than it, which a gap of ``target`` does not need to rule out: on the 70B
  card the slowest state's frontier 12,315 -> 2,721 suffixes a layer and its check 3.3 -> 1.3 s
  in the paper space, 31,954 -> 6,041 and 33 -> 4 s with tp, every state still certified
  (docs/oracle-scaling.md).

The cloud's memory budget is left out (a relaxation: every bound stays valid), so a partition an
exact line finds below its target fits the edge but may not fit the cloud. Not jitted: the
frontier's size is data-dependent (2 to over 20,000 suffixes a layer on the 70B card,
docs/oracle-scaling.md).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from costmodel import dp
from costmodel.dp_memory import default_shifts, forward_values, solve_tables_resource_fit
from costmodel.partition import CLOUD
from lyapunov.oracle import SlotSolution, c_weights

# Relative slack of the checks against float32 rounding, always on the side of keeping a suffix
# (the forward values are float32 sums; the budget test of the resource DP has 1e-5).
PRUNE_RTOL = 1e-5
BUDGET_RTOL = 1e-6


@struct.dataclass
class Line:
    """One exact line: every partition whose exact edge memory fits has ``lam l + c >= value``.

    found: some fitting partition lies below the target (then ``value`` is the least of them,
      the exact minimum, and ``latency`` its latency); else ``value`` is the target.
    peak: the largest frontier of one layer (suffixes over the residual sides); complete:
      False where it outgrew ``max_frontier`` (``value`` is then ``-inf``: no bound).
    """

    value: float
    found: bool
    peak: int
    complete: bool
    latency: float = float("nan")  # s, of the least partition found (nan if none)


def exact_line(tb: dp.SlotTables, w: dp.Weights, budget_gb: float, target: float,
               units: int = 512, shifts: int = 0, max_frontier: int = 60_000) -> Line:
    """A lower bound on the least weighted objective ``w`` over the partitions of ``tb`` whose
    exact edge memory fits ``budget_gb`` (the endpoints included), equal to it when it is below
    ``target`` (module docstring). ``units``/``shifts``: the resource DP of the prefix bound
    (``shifts`` 0: as the oracle chooses it)."""
    n_l = int(tb.acc_layer.shape[0])
    unit, pre = prefix_bounds(tb, w, budget_gb, units, shifts)
    table, ends = (np.asarray(x, np.float64) for x in dp.tables_weighted(tb, w))
    mem = np.asarray(tb.base[4, 0, 0], np.float64)  # [O] GB
    ends_mem = np.asarray(tb.ends[4], np.float64)  # [2, S] GB
    lat = np.asarray(tb.base[0], np.float64)  # [P, S, O] s
    ends_lat = np.asarray(tb.ends[0], np.float64)  # [2, S] s
    _, out = dp._out_index(tb.tp, (table.shape[-1] // dp.n_ffn_options(tb.tp)) - 1)
    n_p, _, n_s, _ = table.shape
    by_out = [np.flatnonzero(out == s) for s in range(n_s)]
    room = budget_gb * (1.0 + BUDGET_RTOL)
    cut = target + PRUNE_RTOL * abs(target)
    best, best_lat, peak = np.inf, float("nan"), 0
    for q in range(n_p):
        for s0 in range(2):
            if s0 == CLOUD and bool(tb.pinned):
                continue
            # The frontier after layer l: per residual side (the input side of layer l+1),
            # suffix costs, exact memories and latencies. Start: the endpoints, per final side.
            front = {s: (ends[s0, s:s + 1], ends_mem[s0, s:s + 1], ends_lat[s0, s:s + 1])
                     for s in range(n_s) if ends[s0, s] < dp.BIG / 2}
            for layer in range(n_l - 1, -1, -1):
                grown = {s: ([], [], []) for s in range(n_s)}
                pre_l = pre[layer][s0, q]  # [S, units + 1]
                for s_out, (cost, used, slow) in front.items():
                    opts = by_out[s_out]
                    # The memory (and so the prefix's level) does not depend on the input side.
                    m = used[:, None] + mem[None, opts]
                    level = np.floor((room - m) / unit * (1.0 + BUDGET_RTOL))
                    ok = level >= 0
                    idx = np.clip(level, 0, units).astype(int)
                    for s_in in range(n_s):
                        step = table[q, layer, s_in, opts]
                        fin = step < dp.BIG / 2
                        if not fin.any():
                            continue
                        c = cost[:, None] + step[None]
                        keep = ok & fin[None] & (c + pre_l[s_in][idx] < cut)
                        if not keep.any():
                            continue
                        t = slow[:, None] + lat[q, s_in, opts][None]
                        for acc, x in zip(grown[s_in], (c, m, t), strict=True):
                            acc.append(x[keep])
                front = {s: _pareto(*(np.concatenate(x) for x in parts))
                         for s, parts in grown.items() if parts[0]}
                size = sum(f[0].size for f in front.values())
                peak = max(peak, size)
                if size > max_frontier:
                    return Line(-np.inf, False, peak, False)
                if not front:  # no suffix is left: nothing below the target from (q, s0)
                    break
            if s0 in front:  # the residual starts on the embedding's side
                cost, used, slow = front[s0]
                cost = np.where(used <= room, cost, np.inf)
                i = int(np.argmin(cost)) if cost.size else 0
                if cost.size and cost[i] < best:
                    best, best_lat = float(cost[i]), float(slow[i])
    if best < target:
        return Line(best, True, peak, True, best_lat)
    return Line(float(target), False, peak, True)


def prefix_bounds(tb: dp.SlotTables, w: dp.Weights, budget_gb: float, units: int = 512,
                  shifts: int = 0):
    """(unit GB, pre float64 [L+1, 2, P, S, units+1]): ``pre[l][s0, q, s, k]`` is at most the
    weighted cost of every prefix (layers ``0..l-1``, started on side ``s0`` at precision ``q``,
    leaving the residual on ``s``) whose exact edge memory is at most ``k`` units: the rounded-
    down resource DP's forward values, minimized over the levels up to ``k`` (Proposition 8 of
    proofs/oracle.md). ``shifts`` 0: as the oracle chooses it."""
    shifts = int(shifts) or default_shifts(units, tb.acc_layer.shape[0])
    unit, _, _, v_last, v_in = _forward(tb, w, budget_gb, units, shifts)
    pre = np.concatenate([np.asarray(v_in), np.asarray(v_last)[None]]).astype(np.float64)
    return float(unit), np.minimum.accumulate(pre, axis=-1)


def _pareto(cost, used, slow):
    """The suffixes whose (cost, memory) no other beats in both (ties: one kept), with their
    latencies."""
    if cost.size == 0:
        return cost, used, slow
    order = np.lexsort((cost, used))
    cost, used, slow = cost[order], used[order], slow[order]
    keep = np.ones(cost.size, bool)
    keep[1:] = cost[1:] < np.minimum.accumulate(cost)[:-1]
    return cost[keep], used[keep], slow[keep]


# The resource DP rounded down: its forward values (the prefix bounds), and its least value (a
# lower bound over the partitions that fit the edge: a line of the polygon).
_forward = jax.jit(lambda tb, w, budget, units, shifts: forward_values(tb, w, budget, units,
                                                                        False, shifts),
                   static_argnums=(3, 4))
_tables = jax.jit(dp.slot_tables, static_argnums=(2, 3))
_fastest = jax.jit(lambda tb: dp.path_totals(
    tb, dp.solve_tables(tb, dp.Weights(latency=1.0)).partition)[0])  # the least latency, s
_relaxed = jax.jit(lambda tb, w, budget, units, shifts: solve_tables_resource_fit(
    tb, w, budget, units, False, shifts, n_fit=0).best.value, static_argnums=(3, 4))


@struct.dataclass
class SlotCheck:
    """Result of :func:`check_slot`, in the units of ``SlotSolution.objective``.

    lower_bound: a lower bound on the objective of every feasible partition (the better of the
      oracle's and the polygon's, which holds over every partition that fits the edge).
    gap: ``(objective - lower_bound) / |objective|``; certified: ``gap <= target``.
    lines: exact lines used; found_below: how many found a partition that fits the edge and
      whose objective is below ``objective - 0.9 target |objective|``.
    best_found: the least objective of the partitions the lines found below the checked one
      (``inf`` if none): they fit the edge (the cloud's budget not checked), so where they fit
      the cloud too the checked partition is at least ``objective - best_found`` above the
      optimum.
    peak: the largest frontier of any line; complete: no line outgrew its frontier cap.
    seconds: wall time.
    """

    lower_bound: float
    gap: float
    certified: bool
    lines: int
    found_below: int
    best_found: float
    peak: int
    complete: bool
    seconds: float


def check_slot(queues, link, spec, sp, sol: SlotSolution, tp: bool = False, target: float = 1e-3,
               units: int = 2048, n_slopes: int = 16, max_lines: int = 6,
               max_frontier: int = 60_000, precisions=(0, 1, 2), slack: float = 0.5) -> SlotCheck:
    """Tighten ``sol``'s lower bound (a ``solve_slot`` result for the same slot) with exact
    lines until its gap is within ``target`` (module docstring). ``units``: the rounded-down
    resource DP of the relaxed lines and of the prefix bounds (finer than the oracle's 512: a
    tighter polygon and fewer suffixes, at seconds a state); ``max_frontier``: the suffixes a
    layer may hold (a line that outgrows it gives no bound; it also caps the memory, ``options``
    times as many candidates); ``slack``: each exact line's target lies ``slack * target *
    |objective|`` below the checked partition's value (module docstring; 0: every line exact,
    the gap as tight as the lines can make it, at more suffixes). A certified gap is at most
    ``target`` either way. ``n_slopes``: the relaxed lines (16 certify what 64 did on the 70B
    and LLaMA-13B benchmark states, in about half the time: docs/oracle-scaling.md)."""
    t0 = time.perf_counter()
    obj = float(sol.objective)
    if not 0.0 <= slack < 1.0:
        raise ValueError(f"check_slot: slack must be in [0, 1) (a fraction of target), got {slack}")
    if not bool(sol.feasible):
        raise ValueError("check_slot: sol is not feasible (nothing to check)")
    a = float(sp.V * sp.penalty.latency)
    b = float(max(float(queues.q), 0.0) * float(sp.tau))

    def g(lat):
        return a * lat - b / lat

    cw = c_weights(queues, sp)
    tb = _tables(link, spec, tuple(int(q) for q in precisions), bool(tp))
    budget = float(spec.edge.mem_budget) / 1e9
    shifts = default_shifts(units, spec.n_layers)
    j_f = g(float(sol.latency_s)) + float(sol.c)
    shift = obj - j_f  # the objective minus J (terms that do not depend on the partition)

    def weights(lam):
        return dp.Weights(latency=jnp.float32(lam), energy=cw.energy, accuracy=cw.accuracy,
                          cloud_cost=cw.cloud_cost)

    l_s = float(_fastest(tb))
    lam_hi = a + b / l_s ** 2
    # From a (J's least slope: beyond the envelope's last breakpoint J does not fall), or from 0
    # and a geometric grid where a = 0.
    if lam_hi <= 0:  # J = c: one line
        slopes = np.zeros(1)
    elif a > 0:
        slopes = np.geomspace(a, lam_hi, n_slopes)
    else:
        slopes = np.concatenate([[0.0], np.geomspace(1e-6 * lam_hi, lam_hi, n_slopes - 1)])
    lines = [(float(lam), float(_relaxed(tb, weights(lam), budget, units, shifts)))
             for lam in slopes]
    if max(v for _, v in lines) >= dp.BIG / 2:  # the relaxed set holds sol: never empty
        raise RuntimeError("check_slot: the rounded-down resource DP found no partition that "
                           "fits, yet sol fits (an inconsistent relaxation: no bound)")

    # A partition below J(sol) has a latency under l_cap (c >= 0 and l >= l_s), so the polygon
    # is needed only over [l_s, l_cap] (with a = 0 the envelope's last line, of slope 0, bounds
    # J beyond its last breakpoint).
    l_cap = (j_f + b / l_s) / a if a > 0 else np.inf

    def polygon():  # (least J over the polygon, where; at most J(sol))
        low, at = _polygon_min(g, lines, l_s, l_cap)
        return min(low, j_f), at

    lb_j, l_v = polygon()
    lb_j = max(lb_j, float(sol.lower_bound) - shift)
    n_lines = found = peak = 0
    best_j = np.inf
    complete = True
    level = j_f - 0.9 * target * abs(obj)
    while (j_f - lb_j) > target * abs(obj) and n_lines < max_lines:
        lam = a + b / l_v ** 2
        # The exact line at lam: sol's own point fits, so the least value is at most its value
        # there; the enumeration finds it below the cut (found) or shows the cut to be a bound.
        at_sol = lam * float(sol.latency_s) + float(sol.c)
        cut = at_sol * (1 + 1e-6) + 1e-9 - slack * target * abs(obj)
        line = exact_line(tb, weights(lam), budget, cut, units, shifts, max_frontier)
        value = min(line.value, at_sol)
        if line.found and line.value < at_sol:  # a partition below the checked one's line
            best_j = min(best_j, g(line.latency) + line.value - lam * line.latency)
        n_lines += 1
        # Below the tangent of J's level set at l_v: a partition with J under that level.
        found += bool(line.found and value < level - g(l_v) + lam * l_v)
        peak = max(peak, line.peak)
        complete &= bool(line.complete)
        if not line.complete:
            break  # no bound, and the next line would be the same one
        if any(abs(lam - x) <= 1e-9 * lam and v >= value for x, v in lines):
            break  # the same line again: the polygon cannot move
        lines.append((lam, value))
        new_lb, l_v = polygon()
        lb_j = max(lb_j, new_lb)
    lower = lb_j + shift
    gap = (obj - lower) / abs(obj) if obj != 0 else float(obj > lower)
    best_found = best_j + shift if best_j < j_f else np.inf
    return SlotCheck(lower, max(gap, 0.0), gap <= target, n_lines, found, float(best_found), peak,
                     complete, time.perf_counter() - t0)


def _polygon_min(g, lines, l_min, l_max):
    """(min over l in [l_min, l_max] of g(l) + max_i (v_i - lam_i l), its argmin): the lines'
    upper envelope is convex and piecewise linear and ``g`` concave, so the minimum lies at a
    breakpoint of the envelope or at an end; with ``l_max`` infinite, beyond the last
    breakpoint the envelope is the line of the least slope, along which ``g`` (slope at least
    that) does not fall."""
    lam = np.array([x for x, _ in lines])
    val = np.array([v for _, v in lines])
    # Breakpoints of the pairwise intersections; those on the envelope are among them.
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = (val[:, None] - val[None, :]) / (lam[:, None] - lam[None, :])
    inside = np.isfinite(cross) & (cross > l_min) & (cross < l_max)
    pts = np.concatenate([[l_min], [l_max] if np.isfinite(l_max) else [], cross[inside]])
    env = np.max(val[None, :] - lam[None, :] * pts[:, None], axis=1)
    j = g(pts) + env
    i = int(np.argmin(j))
    return float(j[i]), float(pts[i])
