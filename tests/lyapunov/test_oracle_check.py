"""The offline gap check (lyapunov.oracle_check) against brute force on tiny cards: its exact
lines are the exact memory-constrained minima, its bounds are valid, and it tightens the
oracle's where the oracle's rounding is coarse."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from costmodel.cards import ModelCard
from costmodel.costs import request_costs, total_terms
from costmodel.dp import Weights, _out_index, scalarize, slot_tables, tables_weighted
from costmodel.link import LinkState, Workload, make_link
from costmodel.partition import make_partition
from costmodel.profiles import get_profile
from costmodel.spec import make_spec
from lyapunov.oracle import SlotSolution, c_weights, slot_dpp, solve_slot
from lyapunov.oracle_check import _polygon_min, check_slot, exact_line, prefix_bounds
from lyapunov.queues import Queues
from tests.lyapunov.test_oracle import SPEC, brute_force, slot_params, with_budget
from tests.partitions import all_partitions

CARD = ModelCard("tiny-check", n_layers=3, n_heads=2, n_kv_heads=2, d_model=256, d_ff=1024,
                 vocab=512, ffn_type="swiglu", tied_embeddings=True)
PARTS = all_partitions(CARD.n_layers, CARD.n_heads)
PARTS_TP = all_partitions(CARD.n_layers, CARD.n_heads, tp_shares=(4, 8, 12))


def _spec(fraction):
    edge = get_profile("rpi5")
    full = make_spec(CARD, edge, "datacenter", Workload(16, 4))
    need = float(request_costs(make_partition([2, 2, 2], [0, 0, 0]), make_link(10, 20),
                               full).edge_memory_gb)
    edge = dataclasses.replace(edge, name="rpi5-small", mem_budget_gb=fraction * need)
    return make_spec(CARD, edge, "datacenter", Workload(16, 4))


_terms = jax.jit(jax.vmap(total_terms, in_axes=(0, None, None)))
_costs = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))


def _brute(parts, link, spec, w):
    """(the least weighted objective over the partitions whose edge memory fits, the
    latencies of the partitions that attain it)."""
    terms = _terms(parts, link, spec)
    obj = np.asarray(scalarize(terms, parts.act_prec, spec, w), np.float64)
    costs = _costs(parts, link, spec)
    fits = np.asarray(costs.edge_memory_gb) <= float(spec.edge.mem_budget) / 1e9
    fits &= np.asarray(costs.link_ok) & (obj < 1e29)
    if not fits.any():
        return np.inf, np.array([])
    best = obj[fits].min()
    at = fits & (obj <= best * (1 + 1e-6) + 1e-9)
    return best, np.asarray(terms.latency, np.float64)[at]


# The tp tables hold every share 1..15; the brute force only three, so in tp a line is
# compared where its minimizer lies among those (it is then never above the brute force).
@pytest.mark.parametrize("tp", [False, True])
def test_exact_line_is_the_exact_memory_constrained_minimum(tp):
    rng = np.random.default_rng(5)
    parts = PARTS_TP if tp else PARTS
    checked = 0
    for _ in range(8):
        spec = _spec(float(rng.uniform(0.3, 0.9)))
        link = make_link(float(10 ** rng.uniform(-0.5, 2)), float(rng.uniform(2, 80)),
                         cloud_share=float(rng.uniform(0.05, 1.0)))
        w = Weights(latency=jnp.float32(rng.uniform(0.5, 2.0)),
                    energy=jnp.float32(rng.uniform(0.0, 0.3)))
        tb = slot_tables(link, spec, (0, 1, 2), tp)
        budget = float(spec.edge.mem_budget) / 1e9
        best, lats = _brute(parts, link, spec, w)
        if not np.isfinite(best):
            continue
        # Coarse units (16): the prefix bounds are loose, so the pruning is exercised.
        free = exact_line(tb, w, budget, np.inf, units=16)
        assert free.found and free.complete
        if tp:  # more shares than the brute force holds: never above it
            assert free.value <= best * (1 + 1e-5) + 1e-6
            best = free.value
        else:
            assert free.value == pytest.approx(best, rel=1e-5)
            # the latency reported is a minimizer's
            assert np.min(np.abs(lats - free.latency)) <= 1e-5 * free.latency
        # Just above the minimum: a prefix bound too high by more than 1e-4 loses it.
        above = exact_line(tb, w, budget, best * (1 + 1e-4) + 1e-6, units=16)
        assert above.found and above.value == pytest.approx(best, rel=1e-5)
        below = exact_line(tb, w, budget, best * 0.99 - 1e-3, units=16)
        assert not below.found and below.value == pytest.approx(best * 0.99 - 1e-3)
        # a lower target keeps a subset of the suffixes (check_slot's slack)
        assert below.peak <= above.peak <= free.peak
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("tp", [False, True])
def test_prefix_bounds_never_exceed_a_prefix_that_fits(tp):
    """Every prefix that fits the budget (every option sequence of the first l layers, every
    precision and embedding side) costs at least the bound at its exact memory's whole units:
    what makes dropping a suffix safe. Coarse units (8), so that most options' memories are not
    whole units."""
    spec = _spec(0.6)
    link = make_link(5, 30, cloud_share=0.3)
    w = Weights(latency=jnp.float32(1.0), energy=jnp.float32(0.1))
    tb = slot_tables(link, spec, (0, 1, 2), tp)
    budget = float(spec.edge.mem_budget) / 1e9
    unit, pre = prefix_bounds(tb, w, budget, units=8)
    table, _ = (np.asarray(x, np.float64) for x in tables_weighted(tb, w))
    mem = np.asarray(tb.base[4, 0, 0], np.float64)
    n_p, n_l, n_s, n_o = table.shape
    out = _out_index(tp, n_o // (3 + 15 * tp) - 1)[1]
    rng = np.random.default_rng(0)
    checked = 0
    for layers in range(n_l + 1):
        for q in range(n_p):
            for s0 in range(2):
                # every sequence for short prefixes, a random sample for long ones
                if layers == 0:
                    seqs = np.zeros((1, 0), int)
                elif n_o ** layers <= 4096:
                    seqs = np.array(np.meshgrid(*[np.arange(n_o)] * layers)).reshape(layers, -1).T
                else:
                    seqs = rng.integers(0, n_o, (4096, layers))
                for seq in seqs:
                    side, cost, used = s0, 0.0, 0.0
                    for layer, o in enumerate(seq):
                        cost += table[q, layer, side, o]
                        used += mem[o]
                        side = out[o]
                    if cost >= 1e29 or used > budget:
                        continue
                    k = int(np.floor(used / unit * (1 + 1e-9)))
                    assert pre[layers][s0, q, side, k] <= cost * (1 + 1e-6) + 1e-9
                    checked += 1
    assert checked > 1000


def test_frontier_cap_gives_no_bound():
    spec = _spec(0.5)
    link = make_link(20, 20)
    tb = slot_tables(link, spec, (0, 1, 2), False)
    line = exact_line(tb, Weights(), float(spec.edge.mem_budget) / 1e9, np.inf, max_frontier=0)
    assert not line.complete and line.value == -np.inf


def test_polygon_minimum_of_a_concave_plus_envelope():
    """Against a dense grid: the minimum over [l_min, l_max] of g + the lines' envelope."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.uniform(0, 2), rng.uniform(0, 50)

        def g(lat, a=a, b=b):
            return a * lat - b / lat

        lines = [(float(x), float(v)) for x, v in zip(rng.uniform(a, a + 5, 6),
                                                      rng.uniform(0, 30, 6), strict=True)]
        lo, hi = rng.uniform(0.5, 2), rng.uniform(5, 40)
        grid = np.linspace(lo, hi, 200_001)
        env = np.max([v - x * grid for x, v in lines], axis=0)
        dense = float(np.min(g(grid) + env))
        got, at = _polygon_min(g, lines, lo, hi)
        assert lo <= at <= hi
        assert got <= dense + 1e-9
        assert got == pytest.approx(dense, abs=1e-3 * (1 + abs(dense)))


ALL_TINY = all_partitions(2, 3)


def _max_edge_gb(link):
    mem = _costs(ALL_TINY, link, SPEC).edge_memory_gb
    return float(np.asarray(mem).max())


def _slots(seed, n, lo):
    """n memory-bound slots of the tiny 2 x 3 card: (queues, link, spec, sp, brute-force
    optimum, its costs), the edge's budget a fraction in [lo, 0.9] of the largest memory."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        queues = Queues(*(jnp.float32(x) for x in rng.exponential([20.0, 5.0, 5.0, 1e3])))
        sp = slot_params(10.0, 1.0, 1.0, 0.5)
        bw = float(10 ** rng.uniform(-1, 2))
        link = LinkState(*(jnp.float32(x) for x in (bw, bw, rng.uniform(5, 80), 0.05)))
        spec = with_budget(SPEC, float(rng.uniform(lo, 0.9)) * _max_edge_gb(link))
        jb, _, costs = brute_force(queues, link, spec, sp, ALL_TINY)
        if np.isfinite(float(jb)):
            yield queues, link, spec, sp, float(jb), costs


def test_check_slot_bounds_are_valid_and_tighten_a_coarse_oracle():
    """With the oracle's memory cut into 2 units (a loose relaxation: gaps of 130-1300 %), the
    check's bound stays below the brute-force optimum, is never below the oracle's, and
    certifies 0.1 % in states the oracle does not."""
    n = improved = 0
    for queues, link, spec, sp, jb, _ in _slots(3, 10, 0.2):
        sol = solve_slot(queues, link, spec, sp, units=2)
        chk = check_slot(queues, link, spec, sp, sol, units=2, n_slopes=24, max_lines=40)
        tol = 1e-4 * (abs(jb) + 1.0)
        assert chk.lower_bound <= jb + tol
        assert chk.lower_bound >= float(sol.lower_bound) - tol
        assert chk.gap <= float(sol.gap) + 1e-6
        assert chk.certified == (chk.gap <= 1e-3)
        # a partition found below the checked one is never below the optimum
        assert chk.best_found >= jb - tol
        assert chk.best_found == np.inf or chk.best_found < float(sol.objective)
        n += 1
        improved += float(sol.gap) > 1e-3 and chk.certified
    assert n >= 6 and improved >= 1


@pytest.mark.parametrize("slack", [0.0, 0.9])
def test_check_slot_with_a_slack_stays_valid_and_certifies(slack):
    """The partition next above the optimum, in a slot whose arrivals (a term no partition
    changes) make the objective large, checked at the oracle's 0.1 % target on a 2-unit
    relaxation (so that exact lines are needed): the optimum is within 0.1 % of the checked
    point, the bound stays below the brute-force optimum at every slack, and the gap is
    certified."""
    n = 0
    for queues, link, spec, sp, jb, costs in _slots(11, 8, 0.4):
        got = _poor(queues, link, spec, sp, jb, costs, 0.0)
        if got is None or float(queues.q) < 1e-3:
            continue
        arrivals = 3000.0 * (got[1] - jb + 1.0) / float(queues.q)
        shift = float(queues.q) * arrivals  # Q A: the same for every partition
        poor, j_poor = _poor(queues, link, spec, sp, jb, costs, 0.0, arrivals)
        assert j_poor - (jb + shift) < 1e-3 * abs(j_poor)
        chk = check_slot(queues, link, spec, sp, poor, units=2, n_slopes=2, max_lines=20,
                         slack=slack)
        tol = 1e-5 * abs(jb + shift)
        assert chk.lower_bound <= jb + shift + tol
        assert chk.lines >= 1 and chk.certified and chk.gap <= 1e-3
        n += 1
    assert n >= 6


def test_check_slot_rejects_a_slack_outside_0_1():
    for queues, link, spec, sp, _, _ in _slots(3, 1, 0.2):
        sol = solve_slot(queues, link, spec, sp)
        with pytest.raises(ValueError, match="slack"):
            check_slot(queues, link, spec, sp, sol, slack=1.0)


def test_check_slot_refuses_a_solution_no_relaxation_holds():
    """A partition passed as feasible where nothing fits the edge (a privacy floor and a 1 KB
    budget: not even the relaxation's rounded-down memories): no bound can come of it, and the
    check says so instead of taking the empty relaxation's BIG for one."""
    for queues, link, spec, sp, jb, costs in _slots(3, 1, 0.2):
        poor, _ = _poor(queues, link, spec, sp, jb, costs, 0.0)
        # the privacy floor holds the embedding and layer 0 on the edge: nothing fits 1 KB
        tiny = with_budget(spec, 1e-6).replace(privacy_layers=np.int32(1))
        with pytest.raises(RuntimeError, match="no partition that fits"):
            check_slot(queues, link, tiny, sp, poor)


def test_check_finds_the_better_partition_of_a_poor_one():
    """A feasible partition well above the optimum is checked: the lines find partitions below
    it, never below the optimum, and reach the optimum itself."""
    n = reached = 0
    for queues, link, spec, sp, jb, costs in _slots(11, 8, 0.4):
        got = _poor(queues, link, spec, sp, jb, costs, 0.1)  # a tenth of the way up
        if got is None:
            continue
        poor, j_poor = got
        chk = check_slot(queues, link, spec, sp, poor, units=8, n_slopes=24, max_lines=20)
        tol = 1e-4 * (abs(jb) + 1.0)
        assert chk.lower_bound <= jb + tol
        assert jb - tol <= chk.best_found < j_poor
        n += 1
        reached += abs(chk.best_found - jb) <= tol
    assert n >= 6 and reached >= n // 2


def _poor(queues, link, spec, sp, jb, costs, frac, arrivals=0.0):
    """(a SlotSolution of the feasible partition ``frac`` of the way up the ones above the
    optimum ``jb`` (0: the next one up; ``jb`` at no arrivals), its objective at
    ``arrivals``), or None where there is none."""
    at_0 = np.asarray(slot_dpp(costs, queues, 0.0, sp))
    worse = np.flatnonzero(np.asarray(costs.feasible) & (at_0 > jb + 1e-3 * (abs(jb) + 1)))
    dpp = np.asarray(slot_dpp(costs, queues, arrivals, sp))
    if not worse.size:
        return None
    i = int(worse[np.argsort(dpp[worse])[int(frac * worse.size)]])
    part = jax.tree.map(lambda x, i=i: x[i], ALL_TINY)
    terms = total_terms(part, link, spec)
    c = float(scalarize(terms, part.act_prec, spec, c_weights(queues, sp)))
    poor = SlotSolution(part, jnp.float32(dpp[i]), jnp.float32(-np.inf), jnp.float32(0),
                        jnp.float32(0), terms.latency, jnp.float32(c), jnp.bool_(False),
                        jnp.bool_(True), jnp.int32(0), jnp.float32(np.inf))
    return poor, float(dpp[i])
