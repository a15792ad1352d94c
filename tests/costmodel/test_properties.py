"""Properties of request_costs on random partitions and link states (hypothesis)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from costmodel_reference import Link
from costmodel_testkit import (
    EDGES,
    TINY_GQA,
    TINY_MHA,
    all_partitions,
    case,
    costs_jit,
    costs_many,
    links,
    log_uniform,
    one_link,
    one_partition,
    partitions,
    random_accuracy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.accuracy import accuracy_profile
from costmodel.cards import get_card
from costmodel.costs import structure_terms
from costmodel.link import Workload, make_link
from costmodel.partition import EDGE, cloud_only, edge_only
from costmodel.profiles import get_profile
from costmodel.spec import edge_head_order, make_spec

SMOL = get_card("smollm2-135m")
CARDS = st.sampled_from([TINY_GQA, TINY_MHA, SMOL])
SETTINGS = settings(max_examples=20, deadline=None)


@st.composite
def card_and_partition(draw):
    card = draw(CARDS)
    return card, draw(partitions(card.n_layers, card.n_heads))


def _lat(part, lk, spec):
    return float(costs_jit(one_partition(part), one_link(lk), spec).latency_s)


@SETTINGS
@given(card_and_partition(), links(), st.floats(1.0, 100.0),
       st.sampled_from(EDGES), st.sampled_from(("datacenter", "mec")))
def test_latency_non_increasing_in_bandwidth(cp, lk, factor, edge, cloud):
    card, part = cp
    spec, _ = case(card, edge, cloud)
    faster = dataclasses.replace(lk, up_mbps=lk.up_mbps * factor + (factor > 1),
                                 down_mbps=lk.down_mbps * factor + (factor > 1))
    slow, fast = _lat(part, lk, spec), _lat(part, faster, spec)
    assert fast <= slow * (1 + 1e-6) or (math.isinf(slow) and not math.isinf(fast))


@SETTINGS
@given(CARDS, links(outage=False), st.floats(0.05, 10.0), st.floats(0.05, 10.0),
       st.floats(0.1, 1.0))
def test_cloud_only_independent_of_edge_compute(card, lk, flops_x, bw_x, eff):
    rpi = get_profile("rpi5")
    other = dataclasses.replace(rpi, peak_tflops=rpi.peak_tflops * flops_x,
                                mem_bw_gbs=rpi.mem_bw_gbs * bw_x, eff_compute=eff,
                                eff_memory=eff, overhead_us=rpi.overhead_us * flops_x,
                                power_active_w=rpi.power_active_w * bw_x)
    part = cloud_only(card.n_layers)
    a = costs_jit(part, one_link(lk), case(card, edge_profile=rpi)[0])
    b = costs_jit(part, one_link(lk), case(card, edge_profile=other)[0])
    for f in ("latency_s", "energy_j", "cloud_cost", "cloud_gpu_s", "bytes_up"):
        np.testing.assert_allclose(float(getattr(a, f)), float(getattr(b, f)), rtol=1e-6)
    assert float(a.edge_compute_s) == 0 and float(a.edge_memory_gb) == 0


@SETTINGS
@given(CARDS, links(), links(), st.sampled_from(EDGES))
def test_edge_only_independent_of_link(card, lk1, lk2, edge):
    spec, _ = case(card, edge)
    part = edge_only(card.n_layers, card.n_heads)
    a, b = costs_jit(part, one_link(lk1), spec), costs_jit(part, one_link(lk2), spec)
    for f in ("latency_s", "energy_j", "edge_memory_gb", "accuracy_drop"):
        assert float(getattr(a, f)) == float(getattr(b, f))
    assert bool(a.link_ok) and float(a.cloud_cost) == 0 and float(a.bytes_up) == 0
    # All of it is edge compute at active power.
    np.testing.assert_allclose(float(a.energy_j),
                               get_profile(edge).power_active_w * float(a.latency_s), rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(CARDS, st.sampled_from(EDGES), st.integers(1, 4096), st.integers(1, 512))
def test_edge_only_memory_is_full_model(card, edge, prompt, new):
    prof = get_profile(edge)
    spec = make_spec(card, prof, workload=Workload(prompt, new),
                     accuracy=random_accuracy(card, 0))
    c = costs_jit(edge_only(card.n_layers, card.n_heads), make_link(10.0, 10.0), spec)
    # card.total_params counts the embedding once if tied (LM head = embedding), twice if not;
    # every weight at the edge precision, plus the K/V cache of every K/V head of every layer
    # for S + T tokens.
    weights = card.total_params * prof.weight_bits / 8
    kv = card.n_layers * card.n_kv_heads * 2 * card.head_dim * (prompt + new) * prof.kv_bits / 8
    np.testing.assert_allclose(float(c.edge_memory_gb), (weights + kv) / 1e9, rtol=1e-5)
    # All blocks at edge precision: accuracy drop = 100 * weight cost (importances sum to 1).
    acc = random_accuracy(card, 0)
    np.testing.assert_allclose(float(c.accuracy_drop), 100 * acc.weight_cost(prof.weight_bits),
                               rtol=1e-5)


def test_published_parameter_counts():
    # Totals from the model cards' sources: GPT-2 XL 1.5 B, LLaMA 6.7 B / 13.0 B, Llama 3.1
    # 8.03 B, SmolLM2 134.5 M (LayerNorm/RMSNorm weights and biases excluded, < 0.1 %).
    for name, total in [("gpt2-xl", 1.558e9), ("llama-7b", 6.738e9), ("llama-13b", 13.016e9),
                        ("llama3.1-8b", 8.03e9), ("smollm2-135m", 134.5e6)]:
        np.testing.assert_allclose(get_card(name).total_params, total, rtol=5e-3, err_msg=name)


@SETTINGS
@given(card_and_partition(), st.integers(0, 100), st.integers(1, 9))
def test_memory_monotone_in_edge_heads(cp, layer_pick, extra):
    card, (heads, ffn, q, emb, frac) = cp
    spec, _ = case(card)
    layer = layer_pick % card.n_layers
    more = list(heads)
    more[layer] = min(card.n_heads, heads[layer] + extra)
    lk = Link(10.0, 10.0, 10.0, 1.0)
    a = costs_jit(one_partition((heads, ffn, q, emb, frac)), one_link(lk), spec)
    b = costs_jit(one_partition((more, ffn, q, emb, frac)), one_link(lk), spec)
    assert float(b.edge_memory_gb) >= float(a.edge_memory_gb)
    assert float(b.edge_memory_gb) > float(a.edge_memory_gb) or more == list(heads)
    # The cloud's memory moves the other way.
    assert float(b.cloud_memory_gb) <= float(a.cloud_memory_gb)
    assert float(b.cloud_memory_gb) < float(a.cloud_memory_gb) or more == list(heads)


@settings(max_examples=10, deadline=None)
@given(CARDS, links(outage=False), st.sampled_from(EDGES), st.integers(0, 2))
def test_cloud_only_has_no_accuracy_cost(card, lk, edge, q):
    # Nothing runs at edge precision and only token ids cross: 0 at every activation precision
    # (the default accuracy terms, fp16 costs 0 per crossing anyway).
    spec = make_spec(card, edge, accuracy=accuracy_profile(card))
    c = costs_jit(cloud_only(card.n_layers, q), one_link(lk), spec)
    assert float(c.accuracy_drop) == 0 and float(c.n_crossings) == 0


@settings(max_examples=5, deadline=None)
@given(st.floats(0.0, 200.0), st.sampled_from(EDGES), st.sampled_from(("datacenter", "mec")))
def test_outage_only_edge_only_is_feasible(rtt, edge, cloud):
    # Bandwidth 0 both ways: every partition that sends anything (activations, the prompt, a
    # token) has infinite latency; the only feasible one is all-edge (no crossing at all).
    spec, _ = case(TINY_GQA, edge, cloud)
    parts = all_partitions(TINY_GQA)
    c = costs_many(parts, one_link(Link(0.0, 0.0, rtt, 1.0)), spec)
    all_edge = (np.all(np.asarray(parts.edge_heads) == TINY_GQA.n_heads, axis=1)
                & np.all(np.asarray(parts.ffn) == EDGE, axis=1) & np.asarray(parts.embed_edge))
    link_ok = np.asarray(c.link_ok)
    np.testing.assert_array_equal(link_ok, all_edge)
    assert np.all(np.asarray(c.n_crossings)[link_ok] == 0)
    assert np.all(np.isinf(np.asarray(c.latency_s)[~link_ok]))


@settings(max_examples=5, deadline=None)
@given(links(outage=False))
def test_privacy_floor(lk):
    # privacy_layers = 1 on TINY_GQA: the embedding and layer 0 (all heads, FFN) on the edge.
    spec, _ = case(TINY_GQA, privacy=1)
    parts = all_partitions(TINY_GQA)
    c = costs_many(parts, one_link(lk), spec)
    heads, ffn = np.asarray(parts.edge_heads), np.asarray(parts.ffn)
    expected = (heads[:, 0] == TINY_GQA.n_heads) & (ffn[:, 0] == EDGE) & np.asarray(
        parts.embed_edge)
    np.testing.assert_array_equal(np.asarray(c.privacy_ok), expected)
    assert not np.any(np.asarray(c.feasible) & ~expected)
    cloud = costs_jit(cloud_only(TINY_GQA.n_layers), one_link(lk), spec)
    assert not bool(cloud.privacy_ok) and not bool(cloud.feasible)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, SMOL.n_heads), st.integers(1, 512), st.integers(1, 64))
def test_gqa_split_group_pays_kv_on_both_sides(k, prompt, new):
    # SmolLM2: 9 query heads on 3 K/V heads. Compute-bound profiles without overhead make the
    # edge busy time and the cloud GPU-seconds exactly FLOPs / rate, so the FLOPs of each side
    # can be read back. k heads on the edge in every layer, FFN on the edge.
    edge = dataclasses.replace(get_profile("rpi5"), mem_bw_gbs=1e9, overhead_us=0.0)
    cloud = dataclasses.replace(get_profile("datacenter"), mem_bw_gbs=1e9, overhead_us=0.0)
    spec = make_spec(SMOL, edge, cloud, Workload(prompt, new), 0, random_accuracy(SMOL, 1))
    part = one_partition(([k] * SMOL.n_layers, [EDGE] * SMOL.n_layers, 0, True))
    c = costs_jit(part, make_link(100.0, 1.0), spec)
    d, dh = SMOL.d_model, SMOL.head_dim
    # K/V heads per side, hand-worked for 3 query heads per K/V head: the edge holds every
    # group one of its k heads touches, the cloud every group one of its 9 - k heads touches,
    # so a split group (k = 1, 2, 4, 5, 7, 8) is held on both sides.
    g_e = (0, 1, 1, 1, 2, 2, 2, 3, 3, 3)[k]
    g_c = (3, 3, 3, 2, 2, 2, 1, 1, 1, 0)[k]
    # The library's edge count, read back from the edge memory of one layer option (weights
    # (k + g_e) 2 d dh and the FFN at the edge weight precision, KV cache g_e 2 dh (S + T)).
    wb, kvb = float(spec.edge.weight_bytes), float(spec.edge.kv_bytes)
    _, mem = structure_terms(jnp.int32(k), jnp.int32(EDGE), spec, 0.0, 0.0)
    per_group = wb * 2 * d * dh + kvb * 2 * dh * (prompt + new)
    rest = wb * (k * 2 * d * dh + spec.n_ffn_mats * d * spec.d_ff)
    assert (float(mem) - rest) / per_group == pytest.approx(g_e, abs=1e-3)

    def attn_flops(q_heads, kv_heads):
        # Prefill (n = S, ctx (S+1)/2) plus T decode passes (n = 1, ctx S + (T+1)/2).
        per = [(n, ctx) for n, ctx in ((prompt, (prompt + 1) / 2),)]
        per += [(1, prompt + (new + 1) / 2)] * new
        return sum(n * (q_heads * (4 * d * dh + 4 * ctx * dh) + kv_heads * 4 * d * dh)
                   for n, ctx in per if q_heads)

    cloud_rate = cloud.peak_tflops * 1e12 * cloud.eff_compute
    np.testing.assert_allclose(float(c.cloud_gpu_s) * cloud_rate,
                               SMOL.n_layers * attn_flops(SMOL.n_heads - k, g_c), rtol=1e-4)
    ffn = 2 * SMOL.ffn_params * (prompt + new)
    lm = 2 * SMOL.vocab * d * (new + 1)
    edge_rate = edge.peak_tflops * 1e12 * edge.eff_compute
    np.testing.assert_allclose(float(c.edge_compute_s) * edge_rate,
                               SMOL.n_layers * (attn_flops(k, g_e) + ffn) + lm, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([(6, 1), (6, 2), (6, 3), (9, 3)]))
def test_edge_head_order_least_important_first(seed, shape):
    n_heads, group = shape
    w = np.random.default_rng(seed).uniform(0, 1, (3, n_heads))
    order = edge_head_order(w, group)
    for layer in range(3):
        o = order[layer]
        assert sorted(o) == list(range(n_heads))
        # K/V groups are contiguous and in ascending order of summed importance; heads in a
        # group in ascending importance.
        groups = o.reshape(-1, group) // group
        assert np.all(groups == groups[:, :1])
        sums = w[layer].reshape(-1, group).sum(1)[groups[:, 0]]
        assert np.all(np.diff(sums) >= 0)
        assert np.all(np.diff(w[layer][o].reshape(-1, group), axis=1) >= 0)
        if group == 1:
            # The k heads on the edge are the k least important: the minimum possible weight.
            np.testing.assert_allclose(np.cumsum(w[layer][o]), np.cumsum(np.sort(w[layer])))


@settings(max_examples=10, deadline=None)
@given(CARDS, log_uniform(0.1, 1000.0), st.floats(0.0, 100.0))
def test_costs_are_non_negative(card, bw, rtt):
    spec, _ = case(card, "galaxy-s23", "mec")
    for part in (edge_only(card.n_layers, card.n_heads), cloud_only(card.n_layers)):
        c = costs_jit(part, make_link(bw, rtt), spec)
        for f in ("latency_s", "energy_j", "cloud_cost", "accuracy_drop", "edge_memory_gb"):
            assert float(getattr(c, f)) >= 0
