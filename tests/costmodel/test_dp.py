"""costmodel.dp against brute-force enumeration of every partition of tiny cards.

`solve`: its value is the minimum of the weighted objective over all link- and privacy-feasible
partitions (all head counts, FFN sides, precisions and embedding sides; with ``tp`` also every
tensor-parallel share), and equals the objective of request_costs at its own partition.
`solve_memory` with a binding budget: its partition fits; with a zero duality gap its value is the
constrained optimum, otherwise the optimum lies in [lower_bound, value]. Random weights and link
states, outages and privacy floors included.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from costmodel_reference import Link
from costmodel_testkit import (
    TINY_GQA,
    TINY_MHA,
    all_partitions,
    case,
    costs_jit,
    costs_many,
    objective,
    one_link,
    random_profile,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel import dp
from costmodel.profiles import get_profile

solve = jax.jit(dp.solve)
solve_memory = jax.jit(dp.solve_memory)
ALL = {c.name: all_partitions(c) for c in (TINY_GQA, TINY_MHA)}
# (card, privacy_layers); the floor is data in the spec: one compile of the DP per card.
SOLVE_CONFIGS = [(TINY_GQA, 0), (TINY_GQA, 1), (TINY_MHA, 0), (TINY_MHA, 2)]
MEMORY_CONFIGS = [(TINY_GQA, 1), (TINY_MHA, 0)]
RTOL = 1e-4


def _weights(w: dict) -> dp.Weights:
    return dp.Weights(**{k: jnp.float32(v) for k, v in w.items()})


def _close(a, b, scale):
    return abs(a - b) <= RTOL * max(abs(a), abs(b)) + 1e-6 * scale


def instance(seed: int, configs) -> dict:
    """A random instance: tiny card, registry or random profiles, link, workload, weights.

    Drawn from a seed (hypothesis draws the seed) so that examples are independent and diverse.
    Half are in the regime where head- and FFN-level splits win (a cloud as fast as the edge
    over a LAN link, latency-dominated weights, long prompts), so that the DP's inner choice
    over (k, f) matters; the other half spread over all links (outages included) and weights.
    """
    rng = np.random.default_rng(seed)

    def lu(lo, hi):
        return float(10 ** rng.uniform(np.log10(lo), np.log10(hi)))

    card, privacy = configs[rng.integers(len(configs))]
    edge = (random_profile("edge", seed) if rng.random() < 0.4
            else get_profile(str(rng.choice(["rpi5", "orin-nx", "galaxy-s23"]))))
    scales = dict(latency=(0.01, 10.0), energy=(1e-3, 1.0), cloud_cost=(1.0, 1e4),
                  accuracy=(1e-3, 1.0), memory=(1e-2, 100.0))
    w = {k: 0.0 if rng.random() < 0.3 else lu(*v) for k, v in scales.items()}
    x = dict(card=card, privacy=privacy, edge=edge, acc_seed=seed, new=int(rng.integers(1, 129)))
    if rng.random() < 0.5:
        bw = lu(100.0, 5000.0)
        w = {k: 1e-3 * v for k, v in w.items()} | {"latency": 1.0}
        twin = dataclasses.replace(edge, name="twin", role="cloud", price_per_gpu_s=1e-4)
        return x | dict(cloud=twin, link=Link(bw, bw, rng.uniform(0.0, 1.0), 1.0), w=w,
                        prompt=int(rng.integers(256, 2049)))
    cloud = (random_profile("cloud", seed) if rng.random() < 0.4
             else get_profile(str(rng.choice(["datacenter", "mec"]))))
    up = 0.0 if rng.random() < 0.25 else lu(0.05, 5000.0)
    down = up if rng.random() < 0.5 else (0.0 if rng.random() < 0.25 else lu(0.05, 5000.0))
    rtt = float(rng.choice([0.0, rng.uniform(0.0, 2.0), rng.uniform(0.0, 200.0)]))
    share = 1.0 if rng.random() < 0.3 else lu(0.01, 1.0)
    return x | dict(cloud=cloud, link=Link(up, down, rtt, share), w=w,
                    prompt=int(rng.integers(1, 2049)))


SEEDS = st.integers(0, 2**32 - 1)


def _case(x, edge=None):
    return case(x["card"], prompt=x["prompt"], new=x["new"], privacy=x["privacy"],
                acc_seed=x["acc_seed"], edge_profile=edge or x["edge"],
                cloud_profile=x["cloud"])[0]


@settings(max_examples=25, deadline=None)
@given(SEEDS)
def test_solve_equals_brute_force(seed):
    x = instance(seed, SOLVE_CONFIGS)
    spec = _case(x)
    link = one_link(x["link"])
    res = solve(link, spec, _weights(x["w"]))
    brute = objective(costs_many(ALL[x["card"].name], link, spec), x["w"])
    best = float(brute.min())
    assert np.isfinite(best)  # edge-only is always link- and privacy-feasible
    value = float(res.value)
    assert _close(value, best, abs(best) + 1.0), (value, best)
    # The returned partition is feasible and its objective is the returned value.
    own = costs_jit(res.partition, link, spec)
    assert bool(own.link_ok) and bool(own.privacy_ok)
    assert _close(float(objective(own, x["w"])), value, abs(value) + 1.0)


@settings(max_examples=15, deadline=None)
@given(SEEDS, st.floats(-0.3, 1.0))
def test_solve_memory_against_brute_force(seed, frac):
    x = instance(seed, MEMORY_CONFIGS)
    card, w = x["card"], x["w"]
    spec = _case(x)
    link = one_link(x["link"])
    # Budget: from just above the least memory of any link/privacy-feasible partition (frac = 0)
    # to the unconstrained optimum's memory (frac = 1; edge-only's if that uses none); frac < 0:
    # 70 % of the least, so nothing is feasible (unless that is 0: cloud-only).
    free = costs_jit(solve(link, spec, _weights(w)).partition, link, spec)
    everything = costs_many(ALL[card.name], link, spec)
    mem = np.asarray(everything.edge_memory_gb, float)
    min_mem = float(mem[np.isfinite(objective(everything, w))].min())
    ref_mem = float(free.edge_memory_gb) or float(mem.max())
    if frac < 0:
        budget = max(0.7 * min_mem, 1e-9)
    else:
        budget = max(min_mem * (1 + 1e-4) + frac * (ref_mem - min_mem), 1e-9)
    edge = dataclasses.replace(x["edge"], mem_budget_gb=budget)
    spec = _case(x, edge)
    res = solve_memory(link, spec, _weights(w))
    brute = objective(costs_many(ALL[card.name], link, spec), w, memory=True)
    best = float(brute.min())
    if not np.isfinite(best):
        assert not bool(res.feasible)
        return
    assert bool(res.feasible)
    own = costs_jit(res.partition, link, spec)
    assert float(own.edge_memory_gb) <= budget * (1 + 1e-6)
    value, lower = float(res.value), float(res.lower_bound)
    scale = abs(best) + 1.0
    assert _close(float(objective(own, w, memory=True)), value, scale)
    if value - lower <= 1e-6 * scale:
        assert _close(value, best, scale), (value, best)
    else:
        assert lower - RTOL * scale <= best <= value + RTOL * scale, (lower, best, value)


# Tensor-parallel space: the DP over the sides {edge, cloud, both} with every tp share against
# every partition of two-layer cards with all 15 shares (5 x 18 options a layer for TINY_GQA,
# 4 x 18 for TINY_MHA2; x 3 precisions x 2 embedding sides).
TINY_MHA2 = dataclasses.replace(TINY_MHA, name="tiny-mha2", n_layers=2)
TP_SHARES = tuple(range(1, 16))
ALL_TP = {c.name: all_partitions(c, TP_SHARES) for c in (TINY_GQA, TINY_MHA2)}
TP_CONFIGS = [(TINY_GQA, 0), (TINY_GQA, 1), (TINY_MHA2, 0)]
solve_tp = jax.jit(dp.solve, static_argnames=("precisions", "tp"))
solve_memory_tp = jax.jit(dp.solve_memory, static_argnames=("precisions", "iters", "tp"))


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
@settings(max_examples=8, deadline=None)
@given(SEEDS)
def test_solve_tp_equals_brute_force(seed):
    x = instance(seed, TP_CONFIGS)
    spec = _case(x)
    link = one_link(x["link"])
    w = _weights(x["w"])
    res = solve_tp(link, spec, w, tp=True)
    brute = objective(costs_many(ALL_TP[x["card"].name], link, spec), x["w"])
    best = float(brute.min())
    value = float(res.value)
    assert _close(value, best, abs(best) + 1.0), (value, best)
    own = costs_jit(res.partition, link, spec)
    assert bool(own.link_ok) and bool(own.privacy_ok)
    assert _close(float(objective(own, x["w"])), value, abs(value) + 1.0)
    # The paper's space is a subset: its optimum is never better.
    assert float(solve_tp(link, spec, w, tp=False).value) >= value - RTOL * (abs(value) + 1.0)


@pytest.mark.extended
@settings(max_examples=6, deadline=None)
@given(SEEDS, st.floats(0.0, 1.0))
def test_solve_memory_tp_with_binding_cloud_budget(seed, frac):
    # The cloud's budget binds (the edge's is ample): from just above the least cloud memory of
    # any link/privacy-feasible partition (frac = 0) to the unconstrained optimum's.
    x = instance(seed, TP_CONFIGS)
    card, w = x["card"], x["w"]
    edge = dataclasses.replace(x["edge"], mem_budget_gb=100.0)
    spec = _case(x, edge)
    link = one_link(x["link"])
    free = costs_jit(solve_tp(link, spec, _weights(w), tp=True).partition, link, spec)
    everything = costs_many(ALL_TP[card.name], link, spec)
    mem_c = np.asarray(everything.cloud_memory_gb, float)
    min_c = float(mem_c[np.isfinite(objective(everything, w))].min())
    ref_c = float(free.cloud_memory_gb)
    budget = max(min_c * (1 + 1e-4) + frac * max(ref_c - min_c, 0.0), 1e-9)
    x = x | dict(cloud=dataclasses.replace(x["cloud"], mem_budget_gb=budget))
    spec = _case(x, edge)
    res = solve_memory_tp(link, spec, _weights(w), tp=True)
    costs = costs_many(ALL_TP[card.name], link, spec)
    brute = np.where(np.asarray(costs.cloud_memory_ok), objective(costs, w, memory=True),
                     np.inf)
    best = float(brute.min())
    assert np.isfinite(best) and bool(res.feasible)
    own = costs_jit(res.partition, link, spec)
    assert bool(own.cloud_memory_ok) and bool(own.memory_ok)
    value, lower = float(res.value), float(res.lower_bound)
    scale = abs(best) + 1.0
    assert _close(float(objective(own, w, memory=True)), value, scale)
    if value - lower <= 1e-6 * scale:
        assert _close(value, best, scale), (value, best)
    else:
        assert lower - RTOL * scale <= best <= value + RTOL * scale, (lower, best, value)


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(SEEDS)
def test_path_totals_are_the_request_costs_of_every_partition(seed):
    """``dp.path_totals`` (the sums the DP minimizes, which the slot oracle prices its points
    with) equal request_costs for every partition of a tiny card in the tp space, outages and
    privacy floors included: latency (inf where a crossing meets a down link), energy, cloud
    cost, accuracy drop and both memories."""
    x = instance(seed, TP_CONFIGS)
    spec = _case(x)
    link = one_link(x["link"])
    parts = ALL_TP[x["card"].name]
    tables = dp.slot_tables(link, spec, (0, 1, 2), True)
    six = np.asarray(jax.jit(jax.vmap(dp.path_totals, in_axes=(None, 0)))(tables, parts))
    c = costs_many(parts, link, spec)
    want = np.stack([np.asarray(getattr(c, f), np.float64) for f in dp.SIX], 1)
    fin = np.isfinite(want[:, 0])
    np.testing.assert_array_equal(np.isfinite(six[:, 0]), fin)
    np.testing.assert_allclose(six[fin], want[fin], rtol=2e-5, atol=1e-9)
    assert fin.sum() > 0


@pytest.mark.parametrize("tp", [False, True])
def test_memory_can_bind_is_the_largest_memory_of_any_partition(tp):
    """``dp.memory_can_bind`` (where it is False the slot oracle compiles without its memory
    machinery) against every partition of tiny cards, in both option spaces, for registry and
    random profiles: False with both budgets a little above the largest edge and cloud memory
    any partition has, True as soon as one budget is below it (a partition would overrun)."""
    for seed in range(4):
        x = instance(seed, TP_CONFIGS if tp else MEMORY_CONFIGS)
        spec = _case(x)
        parts = (ALL_TP if tp else ALL)[x["card"].name]
        c = costs_many(parts, one_link(x["link"]), spec)
        edge = float(np.max(c.edge_memory_gb)) * 1e9
        cloud = float(np.max(c.cloud_memory_gb)) * 1e9

        def can_bind(e, cl, spec=spec):
            f = jnp.float32
            return dp.memory_can_bind(spec.replace(edge=spec.edge.replace(mem_budget=f(e)),
                                                   cloud=spec.cloud.replace(mem_budget=f(cl))))

        assert not can_bind(edge * (1 + 3e-5), cloud * (1 + 3e-5))
        assert can_bind(edge * (1 - 1e-6), cloud * (1 + 3e-5))
        assert can_bind(edge * (1 + 3e-5), cloud * (1 - 1e-6))
        assert not can_bind(edge * (1 + 3e-5), np.inf)  # a cloud without a memory budget
    # Under an outer trace (a params rebuilt inside a jitted function) the answer is concrete.
    assert jax.jit(lambda: jnp.int32(dp.memory_can_bind(spec)))() == dp.memory_can_bind(spec)


@pytest.mark.parametrize("tp", [False, True])
def test_per_layer_two_tables_equal_every_layer(tp):
    """With the accuracy weight 0 the DPs reduce two option tables (the privacy floor's layers'
    and the free layers') instead of one per layer (``dp.per_layer``): the same values and
    argmins as reducing every layer's weighted table, with a floor; with a weight, every layer
    (its own importances) as before."""
    x = instance(7, [(TINY_GQA, 1)])
    spec = _case(x)
    link = one_link(x["link"])
    tb = dp.slot_tables(link, spec, (0, 1, 2), tp)

    def reduce(t):
        return t.min(-1), t.argmin(-1)

    for acc in (0.0, 0.3):
        w = dp.Weights(latency=1.0, energy=0.1, accuracy=acc)
        got = jax.jit(lambda tb, w: dp.per_layer(tb, w, reduce))(tb, w)
        want = reduce(dp.tables_weighted(tb, w)[0])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # not vacuous: the floor layer's table differs from a free layer's
        assert not np.array_equal(np.asarray(got[0][:, 0]), np.asarray(got[0][:, 1]))
