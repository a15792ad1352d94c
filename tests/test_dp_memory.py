"""The memory-resource DP against brute force on a tiny card with a binding memory budget."""

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.cards import ModelCard
from costmodel.costs import request_costs
from costmodel.dp import Weights, scalarize
from costmodel.dp_memory import solve_memory_exact
from costmodel.link import Workload, make_link
from costmodel.partition import make_partition
from costmodel.profiles import get_profile
from costmodel.spec import make_spec
from tests.partitions import all_partitions

CARD = ModelCard("tiny-mem", n_layers=3, n_heads=2, n_kv_heads=2, d_model=256, d_ff=1024,
                 vocab=512, ffn_type="swiglu", tied_embeddings=True)


BATCH = all_partitions(CARD.n_layers, CARD.n_heads)


def spec_with_budget(fraction):
    edge = get_profile("rpi5")
    full = make_spec(CARD, edge, "datacenter", Workload(16, 4))
    full_mem = float(request_costs(make_partition([2, 2, 2], [0, 0, 0]),
                                   make_link(10, 20), full).edge_memory_gb)
    edge = dataclasses.replace(edge, name="rpi5-small", mem_budget_gb=fraction * full_mem)
    return make_spec(CARD, edge, "datacenter", Workload(16, 4))


solve = jax.jit(solve_memory_exact, static_argnames=("precisions", "units"))
batched = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
@settings(max_examples=6, deadline=None)
@given(fraction=st.floats(0.3, 0.9), bw=st.floats(0.5, 200), rtt=st.floats(1, 80),
       share=st.floats(0.02, 1.0), w_energy=st.floats(0, 0.2))
def test_resource_dp_fits_and_brackets_brute_force(fraction, bw, rtt, share, w_energy):
    spec = spec_with_budget(fraction)
    link = make_link(bw, rtt, cloud_share=share)
    w = Weights(latency=1.0, energy=w_energy)
    res = solve(link, spec, w, units=1024)
    costs = batched(BATCH, link, spec)
    from costmodel.costs import total_terms

    terms = jax.vmap(total_terms, in_axes=(0, None, None))(BATCH, link, spec)
    obj = np.asarray(scalarize(terms, BATCH.act_prec, spec, w))
    fits = np.asarray(costs.memory_ok & costs.link_ok)
    best = obj[fits].min()
    got = request_costs(res.partition, link, spec)
    assert bool(got.memory_ok)
    # Never better than the true constrained optimum, never worse than rounding allows:
    assert float(res.value) >= best * (1 - 1e-5)
    assert float(res.lower_bound) <= best * (1 + 1e-5)
    # With 1024 units the rounding loss per layer is < budget/1024; on this card that always
    # leaves the optimum reachable unless it sits within 3 units of the budget.
    mem = np.asarray(costs.edge_memory_gb)
    slack = spec.edge.mem_budget / 1e9 * 3 / 1024
    safe = fits & (mem <= float(spec.edge.mem_budget) / 1e9 - slack)
    if safe.any():
        assert float(res.value) <= obj[safe].min() * (1 + 1e-5)


def test_unconstrained_budget_gives_zero_gap():
    spec = spec_with_budget(5.0)
    res = solve(make_link(20, 40), spec, Weights(), units=256)
    assert float(res.value - res.lower_bound) == pytest.approx(0.0, abs=1e-6)


CARD_TP = ModelCard("tiny-mem-tp", n_layers=2, n_heads=2, n_kv_heads=2, d_model=256,
                    d_ff=1024, vocab=512, ffn_type="swiglu", tied_embeddings=True)
BATCH_TP = all_partitions(CARD_TP.n_layers, CARD_TP.n_heads, tp_shares=tuple(range(1, 16)))


@pytest.mark.slow
@settings(max_examples=3, deadline=None)
@given(fraction=st.floats(0.3, 0.9), bw=st.floats(1000.0, 10000.0), rtt=st.floats(0.01, 0.5))
def test_resource_dp_with_tp_fits_and_brackets_brute_force(fraction, bw, rtt):
    # Two Pi 5 peers; the edge's budget binds.
    edge = get_profile("rpi5")
    full = make_spec(CARD_TP, edge, "pi5-peer", Workload(256, 4))
    full_mem = float(request_costs(make_partition([2, 2], [0, 0]), make_link(10, 20),
                                   full).edge_memory_gb)
    edge = dataclasses.replace(edge, name="rpi5-small", mem_budget_gb=fraction * full_mem)
    spec = make_spec(CARD_TP, edge, "pi5-peer", Workload(256, 4))
    link = make_link(bw, rtt)
    res = jax.jit(solve_memory_exact, static_argnames=("precisions", "units", "tp"))(
        link, spec, Weights(), units=1024, tp=True)
    costs = batched(BATCH_TP, link, spec)
    lat = np.asarray(costs.latency_s)
    best = lat[np.asarray(costs.feasible)].min()
    got = request_costs(res.partition, link, spec)
    assert bool(got.feasible)
    assert float(res.value) >= best * (1 - 1e-5)
    assert float(res.lower_bound) <= best * (1 + 1e-5)
