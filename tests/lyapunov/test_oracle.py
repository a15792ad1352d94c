"""The exact per-slot oracle against brute-force enumeration (proofs/oracle.md: the parametric
hull sweep is exact; the head exchange argument; the memory multiplier's certificate).

Small cards (2 layers x 3 heads: 864 partitions with every precision and embedding side) so
that every partition can be enumerated; the oracle compiles once per spec shape.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel.accuracy import accuracy_profile
from costmodel.cards import ModelCard
from costmodel.costs import request_costs
from costmodel.dp import memory_can_bind
from costmodel.link import LinkState, Workload
from costmodel.partition import EDGE, edge_only
from costmodel.profiles import get_profile
from costmodel.spec import edge_head_order, make_spec
from lyapunov.oracle import PenaltyWeights, SlotParams, slot_dpp, solve_slot
from lyapunov.queues import Budgets, Queues
from tests.partitions import all_partitions

INF = math.inf
CARD = ModelCard("tiny-2x3", 2, 3, 3, 192, 768, 500, "swiglu", False)


def _accuracy(card, seed=0):
    """Distinct head importances (so that which heads go to the edge matters)."""
    acc = accuracy_profile(card)
    rng = np.random.default_rng(seed)
    head = rng.permutation(np.arange(1, card.n_layers * card.n_heads + 1, dtype=float))
    head = head.reshape(card.n_layers, card.n_heads)
    ffn = np.full(card.n_layers, head.sum() / card.n_layers)
    total = head.sum() + ffn.sum()
    return type(acc)(acc.act_rel, acc.weight_rel, head / total, ffn / total, "test")


ACC = _accuracy(CARD)
SPEC = make_spec(CARD, "rpi5", "datacenter", Workload(64, 16), accuracy=ACC)
SPEC_PRIV = make_spec(CARD, "rpi5", "mec", Workload(64, 16), privacy_layers=1, accuracy=ACC)
# No per-message software overhead: an idealized LAN where splitting the heads of a layer pays
# even for this tiny card (the regime test_head_exchange needs).
SPEC_LAN = make_spec(CARD, dataclasses.replace(get_profile("rpi5"), msg_overhead_us=0.0),
                     dataclasses.replace(get_profile("datacenter"), msg_overhead_us=0.0),
                     Workload(64, 16), accuracy=ACC)


ALL = all_partitions(CARD.n_layers, CARD.n_heads)


@jax.jit
def brute_force(queues, link, spec, sp, parts):
    """(min DPP over feasible partitions, argmin, all costs)."""
    costs = jax.vmap(request_costs, in_axes=(0, None, None))(parts, link, spec)
    j = jnp.where(costs.feasible, slot_dpp(costs, queues, 0.0, sp), jnp.inf)
    return j.min(), j.argmin(), costs


_costs = jax.jit(request_costs)
_dpp = jax.jit(slot_dpp)
_mem = jax.jit(lambda parts, link, spec: jax.vmap(request_costs, in_axes=(0, None, None))(
    parts, link, spec).edge_memory_gb)


def slot_params(V=1.0, tau=1.0, e_bar=INF, a_bar=INF, c_bar=INF, pen=(1.0, 0.0, 0.0, 0.0)):
    """SlotParams with float32 leaves everywhere (one compiled program for every test)."""
    f = jnp.float32
    return SlotParams(f(V), f(tau), Budgets(f(e_bar), f(a_bar), f(c_bar)),
                      PenaltyWeights(*(f(w) for w in pen)))


def with_budget(spec, budget_gb):
    return spec.replace(edge=spec.edge.replace(mem_budget=jnp.float32(budget_gb * 1e9)))




@st.composite
def slot_instances(draw):
    def opt(strategy):
        return draw(st.one_of(st.just(0.0), strategy))

    queues = Queues(*(jnp.float32(x) for x in (
        opt(st.floats(0.0, 1e3)), opt(st.floats(0.0, 100.0)),
        opt(st.floats(0.0, 100.0)), opt(st.floats(0.0, 1e4)))))
    budgets = [draw(st.one_of(st.just(INF), st.floats(0.0, hi))) for hi in (5.0, 5.0, 1e-3)]
    pen = tuple(draw(st.sampled_from(v)) for v in
                ((0.0, 1.0, 1.0), (0.0, 0.0, 0.1), (0.0, 0.0, 0.1), (0.0, 0.0, 100.0)))
    sp = slot_params(draw(st.sampled_from([0.0, 0.1, 1.0, 10.0, 100.0])),
                     draw(st.floats(0.05, 5.0)), *budgets, pen)
    outage = draw(st.floats(0, 1)) < 0.1
    bw = 0.0 if outage else 10 ** draw(st.floats(-1.0, 3.0))
    link = LinkState(jnp.float32(bw), jnp.float32(bw), jnp.float32(draw(st.floats(0.5, 150.0))),
                     jnp.float32(draw(st.floats(0.005, 1.0))))
    frac = draw(st.one_of(st.just(2.0), st.floats(0.0, 1.2)))  # > 1: the budget never binds
    return queues, link, sp, frac


def _check(queues, link, sp, spec, frac, parts=ALL, tp=False):
    mem = np.asarray(_mem(parts, link, spec))
    lo, hi = float(mem.min()), float(mem.max())
    budget = lo + frac * (hi - lo) + 1e-9
    spec = with_budget(spec, budget)
    jb, ib, costs = brute_force(queues, link, spec, sp, parts)
    sol = solve_slot(queues, link, spec, sp, tp=tp)
    any_ok = bool(np.asarray(costs.feasible).any())
    assert bool(sol.feasible) == any_ok
    if not any_ok:
        return sol, None
    jb = float(jb)
    best = jax.tree.map(lambda x: x[ib], costs)
    lat = float(best.latency_s)
    scale = (abs(jb) + float(sp.V) * lat + float(queues.q) * float(sp.tau) / lat
             + float(queues.z_e) * float(best.energy_j) + float(queues.z_c) * float(best.cloud_cost)
             + float(sp.V) * 100.0 * float(best.cloud_cost) + float(best.accuracy_drop) + 1e-6)
    tol = 2e-4 * scale
    own = _costs(sol.partition, link, spec)
    assert bool(own.feasible)
    assert abs(float(_dpp(own, queues, 0.0, sp)) - float(sol.objective)) <= tol
    assert float(sol.objective) >= jb - tol  # never better than the optimum
    assert float(sol.lower_bound) <= jb + tol  # the certificate is a valid lower bound
    if bool(sol.exact):
        assert abs(float(sol.objective) - jb) <= tol, (float(sol.objective), jb)
        assert float(sol.gap) == 0.0
    # The reported relative gap certifies: the optimum is within it of the objective.
    gap = float(sol.gap)
    assert gap >= 0.0
    assert float(sol.objective) - gap * abs(float(sol.objective)) <= jb + tol
    if frac > 1.0:  # memory never binds: the sweep alone is exact
        assert bool(sol.exact)
    if not memory_can_bind(spec):  # and the program without memory machinery agrees
        free = solve_slot(queues, link, spec, sp, tp=tp, memory_can_bind=False)
        for field in ("objective", "lower_bound", "exact", "feasible", "n_solves", "partition"):
            jax.tree.map(np.testing.assert_array_equal, getattr(free, field),
                         getattr(sol, field))
    return sol, jb


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slot_instances())
def test_oracle_matches_brute_force(inst):
    """Where the oracle claims exactness it equals the brute-force minimum of the slot DPP over
    all feasible partitions (every precision, embedding side, memory budgets that bind or not,
    outages); always: feasible, never below the optimum, a valid lower bound."""
    queues, link, sp, frac = inst
    _check(queues, link, sp, SPEC, frac)


def test_memory_free_program():
    """``memory_can_bind=False`` (the caller's promise that no partition overruns a budget):
    where the budgets are above every partition's memory (``frac`` 2, the largest), the
    memory machinery is not compiled (a smaller program) and the answers are those of the full
    program (``_check`` compares them on every instance where the promise holds); where the
    promise is broken (a budget that binds) the answer stays sound: feasible or reported
    infeasible, never below the optimum, a valid lower bound."""
    q = Queues(*(jnp.float32(x) for x in (200.0, 1.0, 0.0, 0.0)))
    link = LinkState(jnp.float32(20.0), jnp.float32(20.0), jnp.float32(30.0), jnp.float32(0.5))
    sp = slot_params(1.0, 1.0, 0.5)
    mem = np.asarray(_mem(ALL, link, SPEC))
    free_spec = with_budget(SPEC, 2.0 * float(mem.max()))
    assert not memory_can_bind(free_spec)
    for tp in (False, True):
        full = solve_slot.lower(q, link, free_spec, sp, tp=tp).as_text()
        free = solve_slot.lower(q, link, free_spec, sp, tp=tp, memory_can_bind=False).as_text()
        assert len(free) < 0.8 * len(full), (len(free), len(full))
    _check(q, link, sp, SPEC, 2.0)
    _check(q, link, sp, SPEC, 2.0, ALL_TP, tp=True)
    for frac in (0.3, 0.6, 0.9):
        budget = float(mem.min() + frac * (mem.max() - mem.min()))
        spec = with_budget(SPEC, budget)
        assert memory_can_bind(spec)
        jb, _, costs = brute_force(q, link, spec, sp, ALL)
        sol = solve_slot(q, link, spec, sp, memory_can_bind=False)
        if bool(sol.feasible):
            own = _costs(sol.partition, link, spec)
            assert bool(own.feasible)
            assert float(sol.objective) >= float(jb) - 1e-4 * abs(float(jb))
        assert float(sol.lower_bound) <= float(jb) + 1e-4 * abs(float(jb))


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
def test_oracle_matches_brute_force_privacy_floor():
    """Same with a privacy floor (embedding and layer 0 on the edge; cloud-only forbidden)."""
    rng = np.random.default_rng(1)
    parts = ALL
    for _ in range(8):
        queues = Queues(*(jnp.float32(x) for x in rng.exponential([50.0, 5.0, 5.0, 1e3])))
        sp = slot_params(float(rng.choice([0.0, 1.0, 10.0])), 1.0, 2.0, 1.0, 1e-4)
        bw = float(10 ** rng.uniform(-1, 3))
        link = LinkState(*(jnp.float32(x) for x in (bw, bw, rng.uniform(0.5, 20),
                                                    rng.uniform(0.01, 1.0))))
        sol, jb = _check(queues, link, sp, SPEC_PRIV, float(rng.choice([2.0, rng.uniform()])),
                         parts)
        if jb is None:
            continue
        p = sol.partition
        assert bool(p.embed_edge) and int(p.edge_heads[0]) == CARD.n_heads
        assert int(p.ffn[0]) == EDGE


def test_memory_binding_certificate():
    """When memory binds the oracle stays feasible and brackets the optimum, and the sweep over
    the rounded-down budget certifies exactness in most instances (where the Lagrangian dual
    bound alone almost never closes the gap: test_multiplier_search_reaches_the_dual_maximum)."""
    rng = np.random.default_rng(2)
    n_exact = n = 0
    for _ in range(12):
        queues = Queues(*(jnp.float32(x) for x in rng.exponential([20.0, 5.0, 5.0, 1e3])))
        sp = slot_params(10.0, 1.0, 1.0, 0.5)
        bw = float(10 ** rng.uniform(-1, 2))
        link = LinkState(*(jnp.float32(x) for x in (bw, bw, rng.uniform(5, 80), 0.05)))
        sol, jb = _check(queues, link, sp, SPEC, float(rng.uniform(0.05, 0.9)))
        if jb is not None:
            n += 1
            n_exact += bool(sol.exact)
    assert n >= 8 and n_exact >= 0.8 * n


def test_fallback_search_when_the_rounded_sweep_offers_nothing_that_fits(monkeypatch):
    """Where memory binds the oracle goes from the nu = 0 sweep straight to the rounded-down
    one, whose traced-back candidates supply the feasible point. Make them supply none (each
    call offers only its minimizer, which overruns where the relaxation is not exact): the
    multiplier search must then run (its feasible points carry nu > 0) and the answer stays
    feasible and sound against the unpatched oracle's (GPT-2 XL on an Orin NX holding half of
    it, states where the rounded-down minimizer overruns)."""
    from costmodel import dp_memory
    from costmodel.cards import get_card

    card = get_card("gpt2-xl")
    full = make_spec(card, "orin-nx", "mec", Workload(128, 32))
    link0 = LinkState(*(jnp.float32(x) for x in (10.0, 10.0, 20.0, 0.2)))
    need = float(_costs(edge_only(card.n_layers, card.n_heads), link0, full).edge_memory_gb)
    spec = with_budget(full, 0.5 * need)
    sp = SlotParams(jnp.float32(10.0), jnp.float32(2.0),
                    Budgets(jnp.float32(INF), jnp.float32(INF), jnp.float32(1e-4)),
                    PenaltyWeights(*(jnp.float32(w) for w in (1.0, 0.0, 0.0, 0.0))))
    rng = np.random.default_rng(0)
    states = []
    for i in range(6):
        bw = 10 ** rng.uniform(-0.5, 1.9)
        link = LinkState(*(jnp.float32(x) for x in (bw, bw, rng.uniform(10, 200),
                                                    rng.uniform(0.05, 0.5))))
        zc = [1e6, 1e7, 0.0, 1e5][i % 4]
        states.append((Queues(*(jnp.float32(x) for x in (rng.uniform(0, 20), 0, 0, zc))), link))
    ref = [solve_slot(q, link, spec, sp) for q, link in states]
    real = dp_memory.solve_tables_resource_fit
    # Every call (the rounded-down sweep's and the rounded-up repair's) offers the all-edge
    # partition as its fitting point, which overruns: nothing fits.
    overrun = edge_only(card.n_layers, card.n_heads)
    monkeypatch.setattr(dp_memory, "solve_tables_resource_fit", lambda *a, **k: (
        lambda r: r.replace(fit=r.fit.replace(partition=jax.tree.map(
            lambda x, y: jnp.broadcast_to(y, x.shape).astype(x.dtype), r.fit.partition,
            overrun))))(real(*a, **k)))
    solve_slot.clear_cache()
    n_search = 0
    try:
        for (q, link), r in zip(states, ref, strict=True):
            sol = solve_slot(q, link, spec, sp)
            assert bool(sol.feasible) and bool(r.feasible)
            own = _costs(sol.partition, link, spec)
            assert bool(own.feasible)
            tol = 1e-4 * abs(float(r.objective))
            assert abs(float(_dpp(own, q, 0.0, sp)) - float(sol.objective)) <= tol
            assert float(sol.objective) >= float(r.lower_bound) - tol
            assert float(sol.lower_bound) <= float(r.objective) + tol
            if not bool(r.exact):  # the rounded-down minimizer overran: the search ran
                n_search += 1
                assert float(sol.nu) > 0 and int(sol.n_solves) > int(r.n_solves)
    finally:
        solve_slot.clear_cache()
    assert n_search >= 2


def test_every_dp_call_is_a_counted_solve(monkeypatch):
    """The oracle runs a DP only where its state machine needs a solve: each call of the plain
    and of the resource DP, counted where it runs (a host callback inside the compiled loop),
    is one of ``n_solves``. (An iteration that only pops an interval not worth a solve had run
    one anyway, a resource-DP call in three on memory-bound cards.) Memory-bound instances of
    the test card, so that the rounded-down sweep runs."""
    from costmodel import dp, dp_memory

    calls = {"plain": 0, "resource": 0}

    def counted(kind, fn):
        def run(*a, **k):
            jax.debug.callback(lambda: calls.__setitem__(kind, calls[kind] + 1))
            return fn(*a, **k)
        return run

    monkeypatch.setattr(dp, "solve_tables", counted("plain", dp.solve_tables))
    monkeypatch.setattr(dp_memory, "solve_tables_resource_fit",
                        counted("resource", dp_memory.solve_tables_resource_fit))
    solve_slot.clear_cache()
    rng = np.random.default_rng(4)
    total = {"plain": 0, "resource": 0}
    try:
        for _ in range(8):
            queues = Queues(*(jnp.float32(x) for x in rng.exponential([20.0, 5.0, 5.0, 1e3])))
            bw = float(10 ** rng.uniform(-1, 2))
            link = LinkState(*(jnp.float32(x) for x in (bw, bw, rng.uniform(5, 80), 0.05)))
            mem = np.asarray(_mem(ALL, link, SPEC))
            spec = with_budget(SPEC, float(mem.min() + rng.uniform(0.1, 0.6) * np.ptp(mem)))
            calls.update(plain=0, resource=0)
            sol = solve_slot(queues, link, spec, slot_params(10.0, 1.0, 1.0, 0.5))
            jax.block_until_ready(sol.n_solves)
            jax.effects_barrier()
            assert calls["plain"] + calls["resource"] == int(sol.n_solves)
            for k in total:
                total[k] += calls[k]
    finally:
        solve_slot.clear_cache()
    assert total["resource"] >= 4  # the rounded-down sweep ran (where a pop could waste one)


def test_rounded_up_call_repairs_a_poor_fitting_point(monkeypatch):
    """Where the rounded-down sweep's fitting candidates are poor (many mixed layers each
    rounded down: its best memory levels all overrun but for a far worse partition), one
    rounded-up resource call at the relaxed minimizer's slope supplies a point that fits and is
    near the bound. LLaMA-13B on a Pi 5 (7 GB), a state where the candidates alone gave an
    objective of 1268 against an optimum of -279.2 (the oracle at 2048 units, exact)."""
    from costmodel.cards import get_card
    from lyapunov import oracle

    card = get_card("llama-13b")
    spec = make_spec(card, dataclasses.replace(get_profile("rpi5"), mem_budget_gb=7.0), "mec",
                     Workload(128, 32))
    q = Queues(*(jnp.float32(x) for x in (3.0055892, 0.0, 0.0, 1e7)))
    link = LinkState(*(jnp.float32(x) for x in (40.138596, 40.138596, 21.127926, 0.20125268)))
    sp = SlotParams(jnp.float32(10.0), jnp.float32(2.0),
                    Budgets(jnp.float32(INF), jnp.float32(INF), jnp.float32(1e-4)),
                    PenaltyWeights(*(jnp.float32(w) for w in (1.0, 0.0, 0.0, 0.0))))
    sol = solve_slot(q, link, spec, sp)
    own = _costs(sol.partition, link, spec)
    assert bool(sol.feasible) and bool(own.feasible)
    assert float(sol.objective) <= -279.0 and float(sol.lower_bound) <= -279.19
    monkeypatch.setattr(oracle, "REPAIR_GAP", float("inf"))  # only where nothing fits
    solve_slot.clear_cache()
    try:
        worse = solve_slot(q, link, spec, sp)
    finally:
        solve_slot.clear_cache()
    assert float(worse.objective) > 1000.0 and int(worse.n_solves) < int(sol.n_solves)


def test_multiplier_search_reaches_the_dual_maximum():
    """Without the rounded resource sweeps (units=0) the lower bound is the best Lagrangian dual
    bound the multiplier search found; the cutting-plane search (proofs/oracle.md, Proposition
    6) stops only at the dual's maximum, so the bound is at least the brute-force dual
    max_nu min_p [DPP(p) + nu (mem(p) - budget)] on a dense grid of nu (and at most the
    optimum), where memory binds."""
    rng = np.random.default_rng(3)
    n = 0
    for _ in range(10):
        queues = Queues(*(jnp.float32(x) for x in rng.exponential([20.0, 5.0, 5.0, 1e3])))
        sp = slot_params(10.0, 1.0, 1.0, 0.5)
        bw = float(10 ** rng.uniform(-1, 2))
        link = LinkState(*(jnp.float32(x) for x in (bw, bw, rng.uniform(5, 80), 0.05)))
        mem = np.asarray(_mem(ALL, link, SPEC), np.float64)
        budget = mem.min() + rng.uniform(0.05, 0.9) * (mem.max() - mem.min()) + 1e-9
        spec = with_budget(SPEC, budget)
        jb, _, costs = brute_force(queues, link, spec, sp, ALL)
        sol = solve_slot(queues, link, spec, sp, units=0)
        if not np.isfinite(float(jb)) or bool(sol.exact):
            continue  # nothing fits, or the unpriced minimizer fits (memory does not bind)
        n += 1
        relaxed = np.asarray(costs.link_ok & costs.privacy_ok & costs.cloud_memory_ok)
        j = np.asarray(slot_dpp(costs, queues, 0.0, sp), np.float64)[relaxed]
        m = mem[relaxed]
        spread = np.abs(j).max() + 1.0
        nus = np.concatenate([[0.0], spread * np.logspace(-8, 6, 4000) / max(budget, 1e-9)])
        dual = (j[None, :] + nus[:, None] * (m[None, :] - budget)).min(axis=1).max()
        tol = 2e-4 * (abs(float(jb)) + abs(dual) + 1e-6)
        assert float(sol.lower_bound) >= dual - tol, (float(sol.lower_bound), dual)
        assert float(sol.lower_bound) <= float(jb) + tol
    assert n >= 5


def test_head_exchange():
    """Exchange argument: with distinct head importances, the k heads the oracle's partition
    puts on the edge (costmodel.spec.edge_head_order semantics: the first k of the order) are
    the k least important ones, and no other choice of *which* heads (brute force over all
    subsets, same counts, same latency and energy) gives a smaller slot DPP."""
    order = edge_head_order(ACC.head_w, CARD.group_size)
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(10):
        # A LAN-class link to a heavily shared cloud: the regime where splitting the heads of a
        # layer between the two sides (tensor parallelism) pays off.
        queues = Queues(jnp.float32(rng.exponential(20.0)), jnp.float32(0.0),
                        jnp.float32(rng.exponential(5.0)), jnp.float32(0.0))
        sp = slot_params(1.0, 1.0, INF, 0.1, INF, (1.0, 0.0, 0.1, 0.0))
        link = LinkState(*(jnp.float32(x) for x in (3000.0, 3000.0, 0.02,
                                                    rng.uniform(0.003, 0.006))))
        sol = solve_slot(queues, link, SPEC_LAN, sp)
        assert bool(sol.exact)
        heads = np.asarray(sol.partition.edge_heads)
        # accuracy weight of the linear part: V * w_a + Z_A
        w_acc = float(sp.V) * 0.1 + float(queues.z_a)
        rel = 100.0 * float(SPEC.weight_rel)
        for layer, k in enumerate(heads):
            chosen = set(order[layer, :k].tolist())
            least = set(np.argsort(ACC.head_w[layer])[:k].tolist())
            assert chosen == least
            cum = float(SPEC.head_cum[layer, k])
            assert math.isclose(cum, ACC.head_w[layer, sorted(chosen)].sum(), rel_tol=1e-5)
            checked += int(0 < k < CARD.n_heads)
    # Brute force over every subset assignment of every layer, counts included: the DPP of a
    # partition whose edge heads are any other subset of the same count is the count's DPP
    # plus the accuracy weight times the importance it adds over the spec's cumulative one.
    _, _, costs = brute_force(queues, link, SPEC_LAN, sp, ALL)
    j_count = np.asarray(_dpp(costs, queues, 0.0, sp))
    j_count = np.where(np.asarray(costs.feasible), j_count, np.inf)
    best_subset = np.inf
    counts = np.asarray(ALL.edge_heads)
    for i in np.flatnonzero(np.isfinite(j_count)):
        extra = 0.0
        for layer, k in enumerate(counts[i]):
            sums = [ACC.head_w[layer, list(s)].sum()
                    for s in itertools.combinations(range(CARD.n_heads), int(k))]
            extra += rel * (min(sums) - float(SPEC.head_cum[layer, k]))
        best_subset = min(best_subset, j_count[i] + w_acc * extra)
    assert float(sol.objective) <= best_subset + 1e-4 * (abs(best_subset) + 1.0)
    assert checked >= 5


def test_latency_only_picks_fastest():
    """Known value: with the default latency penalty and no budgets, c == 0 and g is increasing,
    so for every Q and V the oracle returns a minimum-latency partition."""
    link = LinkState(*(jnp.float32(x) for x in (20.0, 20.0, 30.0, 0.3)))
    _, _, costs = brute_force(Queues.zeros(), link, SPEC, slot_params(), ALL)
    lat_min = float(jnp.where(costs.feasible, costs.latency_s, jnp.inf).min())
    for q, v in ((0.0, 1.0), (100.0, 0.0), (5.0, 10.0)):
        sp = slot_params(v)
        sol = solve_slot(Queues(jnp.float32(q), *(jnp.float32(0.0),) * 3), link, SPEC, sp)
        assert bool(sol.exact)
        assert math.isclose(float(sol.latency_s), lat_min, rel_tol=1e-5)


# Tensor-parallel space: a Pi 5 with a second Pi 5 as the "cloud" on a LAN, every partition of
# the card with every tp share (4 x 18 options a layer: 31 104 partitions).
ALL_TP = all_partitions(CARD.n_layers, CARD.n_heads, tp_shares=tuple(range(1, 16)))
# Long prompts and no per-message overhead, so that tensor parallelism pays on this tiny card.
SPEC_PEER = make_spec(CARD, dataclasses.replace(get_profile("rpi5"), msg_overhead_us=0.0),
                      dataclasses.replace(get_profile("pi5-peer"), msg_overhead_us=0.0),
                      Workload(512, 16), accuracy=ACC)


def with_cloud_budget(spec, budget_gb):
    return spec.replace(cloud=spec.cloud.replace(mem_budget=jnp.float32(budget_gb * 1e9)))


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
def test_oracle_tp_matches_brute_force():
    """With tp: exact where it claims exactness, feasible iff some partition is, a valid lower
    bound; including budgets on the edge and on the cloud that bind."""
    rng = np.random.default_rng(4)
    cloud_mem = np.asarray(jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))(
        ALL_TP, LinkState(*(jnp.float32(x) for x in (1e3, 1e3, 0.5, 1.0))),
        SPEC_PEER).cloud_memory_gb)
    n_tp = n_exact = 0
    for i in range(8):
        queues = Queues(*(jnp.float32(x) for x in rng.exponential([20.0, 5.0, 5.0, 1e3])))
        sp = slot_params(float(rng.choice([0.0, 1.0, 10.0])), 1.0, 5.0, INF, INF,
                         (1.0, float(rng.choice([0.0, 0.1])), 0.0, 0.0))
        bw = float(10 ** rng.uniform(3, 4))
        link = LinkState(*(jnp.float32(x) for x in (bw, bw, rng.uniform(0.01, 0.1), 1.0)))
        spec = SPEC_PEER
        frac = 2.0 if i % 2 == 0 else float(rng.uniform(0.2, 0.9))
        if i % 3 == 2:  # the cloud's budget binds (the edge's does not)
            spec = with_cloud_budget(spec, float(np.quantile(cloud_mem, rng.uniform(0.1, 0.6))))
            frac = 2.0
        sol, jb = _check(queues, link, sp, spec, frac, ALL_TP, tp=True)
        if jb is not None:
            n_exact += bool(sol.exact)
            n_tp += bool((np.asarray(sol.partition.ffn) == 3).any())
    assert n_tp >= 2 and n_exact >= 5


def _check_certified(sol, jb, link, spec):
    """An infeasible answer is certified cheaply (bound BIG, a few DP calls: fast, cheap, the
    nu = 0 sweep's ends, the certificate); a feasible one fits both budgets and is no better
    than brute force's optimum ``jb``."""
    if not bool(sol.feasible):
        assert float(sol.lower_bound) >= 1e29 and not bool(sol.exact)
        assert int(sol.n_solves) <= 12
    else:
        own = _costs(sol.partition, link, spec)
        assert bool(own.memory_ok) and bool(own.cloud_memory_ok)
        assert float(sol.objective) >= float(jb) - 1e-4 * (abs(float(jb)) + 1.0)


def test_no_partition_fits_both_budgets_certified_cheaply():
    """Both budgets so small that even the partition of least edge + cloud memory needs more
    than their sum: brute force finds nothing feasible, and the oracle says so (not feasible,
    bound BIG) after the nu = 0 sweep and one certificate solve, before any rounded-down sweep
    or multiplier search;
    the same budgets with room for the least-memory partition leave the answer feasible where
    brute force is."""
    link = LinkState(*(jnp.float32(x) for x in (1000.0, 1000.0, 0.5, 1.0)))
    queues = Queues(*(jnp.float32(x) for x in (20.0, 0.0, 0.0, 0.0)))
    sp = slot_params(1.0, 1.0)
    costs = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))(ALL_TP, link, SPEC_PEER)
    total = np.asarray(costs.edge_memory_gb) + np.asarray(costs.cloud_memory_gb)
    least = float(total.min())
    for share, fits in ((0.45, False), (0.6, True)):
        spec = with_budget(with_cloud_budget(SPEC_PEER, share * least), share * least)
        jb, _, _ = brute_force(queues, link, spec, sp, ALL_TP)
        sol = solve_slot(queues, link, spec, sp, tp=True)
        assert bool(sol.feasible) == bool(np.isfinite(float(jb)))
        if not fits:
            assert not np.isfinite(float(jb))
        _check_certified(sol, jb, link, spec)


def test_no_edge_feasible_partition_fits_the_cloud_certified_cheaply():
    """The edge (4.5-bit weights) and the cloud (16-bit) hold a layer in different sizes, so the
    least edge + cloud memory (all on the edge) fits the two budgets' sum while no partition
    that fits the edge fits the cloud: the least cloud memory over the rounded-down edge set is
    above the cloud's budget. Brute force finds nothing feasible, and the oracle says so (not
    feasible, bound BIG) after that one resource-DP certificate, without the multiplier search;
    with the cloud's budget at that least cloud memory the answer is feasible where brute force
    is (proofs/oracle.md, Remark 3a)."""
    link = LinkState(*(jnp.float32(x) for x in (50.0, 50.0, 20.0, 0.5)))
    queues = Queues(*(jnp.float32(x) for x in (20.0, 0.0, 0.0, 0.0)))
    sp = slot_params(1.0, 1.0)
    costs = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))(ALL, link, SPEC)
    e, c = np.asarray(costs.edge_memory_gb), np.asarray(costs.cloud_memory_gb)
    budget = 0.5 * float(e.max())
    least_c = float(c[e <= budget].min())  # the least cloud memory of an edge-feasible partition
    assert float((e + c).min()) <= budget + 0.99 * least_c  # the sum certificate cannot tell
    for share, fits in ((0.99, False), (1.0, True)):
        spec = with_budget(with_cloud_budget(SPEC, share * least_c), budget)
        jb, _, _ = brute_force(queues, link, spec, sp, ALL)
        assert bool(np.isfinite(float(jb))) == fits
        sol = solve_slot(queues, link, spec, sp)
        assert bool(sol.feasible) == fits
        _check_certified(sol, jb, link, spec)


@pytest.mark.slow
def test_oracle_tp_both_budgets_binding_is_sound():
    """Both budgets binding at once (the edge cannot hold the model, the cloud can hold only a
    part of it): the multipliers, one at a time, may find no partition that fits both. Then the
    oracle says so (not feasible, not exact) and still gives a valid lower bound; it never
    returns a partition that breaks either budget as feasible."""
    queues = Queues(*(jnp.float32(x) for x in (20.0, 0.0, 0.0, 0.0)))
    sp = slot_params(1.0, 1.0)
    link = LinkState(*(jnp.float32(x) for x in (1000.0, 1000.0, 0.5, 1.0)))
    mem = np.asarray(_mem(ALL_TP, link, SPEC_PEER))
    spec = with_budget(with_cloud_budget(SPEC_PEER, 0.6 * float(mem.max())),
                       0.75 * float(mem.max()))
    jb, _, costs = brute_force(queues, link, spec, sp, ALL_TP)
    assert bool(np.asarray(costs.feasible).any())
    sol = solve_slot(queues, link, spec, sp, tp=True)
    assert float(sol.lower_bound) <= float(jb) + 1e-4 * (abs(float(jb)) + 1.0)
    if bool(sol.feasible):
        own = _costs(sol.partition, link, spec)
        assert bool(own.memory_ok) and bool(own.cloud_memory_ok)
        assert float(sol.objective) >= float(jb) - 1e-4 * (abs(float(jb)) + 1.0)
    else:
        assert not bool(sol.exact)
