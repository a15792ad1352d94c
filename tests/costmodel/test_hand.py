"""Hand-worked cases of request_costs with the arithmetic in comments.

Card HAND: 2 layers, 2 heads (MHA), d = 1000, head dim 500, d_ff = 4000 (GELU: 2 matrices),
vocabulary 10 000, untied. Per query head and token: 4*d*dh = 2e6 FLOPs (Q and W_O slices) +
4*ctx*dh (scores, values); per K/V head and token 4*d*dh = 2e6 (K, V). Weights: 2*d*dh = 1e6
per head and per K/V head, 2*d*d_ff = 8e6 per FFN, V*d = 1e7 per embedding matrix.
Workload S = 100, T = 1: prefill n = 100 at ctx (S+1)/2 = 50.5; one decode pass n = 1 at
ctx S + (T+1)/2 = 101 reading the KV cache; the LM head runs T + 1 = 2 times.
Edge: 1e12 FLOP/s, 1e9 B/s, 1-byte weights and KV, no overhead; 10 W active, 1 W idle,
2 W radio. Cloud: 1e14 FLOP/s, 1e11 B/s, 2-byte weights and KV, no overhead; 1 USD per
GPU-second, 0.5 USD per GB. Link: 8 Mbit/s = 1e6 B/s both ways, RTT 100 ms (RTT/2 = 0.05 s).
No per-message software overhead, except in the cases that test it (`test_msg_overhead_*`, the
tensor-parallel cases at the end).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from costmodel_testkit import costs_jit

from costmodel.accuracy import AccuracyProfile
from costmodel.cards import ModelCard
from costmodel.link import Workload, make_link
from costmodel.partition import EDGE, TP, cloud_only, edge_only, layer_cut, make_partition
from costmodel.profiles import DeviceProfile
from costmodel.spec import make_spec

HAND = ModelCard("hand", 2, 2, 2, 1000, 4000, 10000, "gelu", False)
EDGE_P = DeviceProfile("hand-edge", "edge", peak_tflops=1.0, mem_bw_gbs=1.0, eff_compute=1.0,
                       eff_memory=1.0, overhead_us=0.0, weight_bits=8, kv_bits=8,
                       power_active_w=10.0, power_idle_w=1.0, power_tx_w=2.0, mem_budget_gb=1.0,
                       msg_overhead_us=0.0)
CLOUD_P = DeviceProfile("hand-cloud", "cloud", peak_tflops=100.0, mem_bw_gbs=100.0,
                        eff_compute=1.0, eff_memory=1.0, overhead_us=0.0, weight_bits=16,
                        kv_bits=16, power_active_w=0.0, power_idle_w=0.0, power_tx_w=0.0,
                        mem_budget_gb=80.0, rtt_ms=100.0, price_per_gpu_s=1.0,
                        price_per_gb=0.5, msg_overhead_us=0.0)
# act_rel: fp16 0, int8 1 %, int4 10 % per crossing; 8-bit weights cost 2 % over all blocks.
ACC = AccuracyProfile(np.array([0.0, 0.01, 0.1]), {"8": 0.02},
                      np.array([[0.1, 0.1], [0.1, 0.1]]), np.array([0.3, 0.3]), "hand")
SPEC = make_spec(HAND, EDGE_P, CLOUD_P, Workload(100, 1), 0, ACC)
LINK = make_link(8.0, 100.0)


def costs(p, link=LINK, spec=SPEC):
    return {k: float(v) for k, v in vars(costs_jit(p, link, spec)).items()}


def approx(x):
    return pytest.approx(x, rel=2e-5, abs=1e-12)


def test_cloud_only():
    c = costs(cloud_only(2))
    # Prompt: RTT/2 + 100 tokens * 4 B / 1e6 B/s = 0.05 + 4e-4 = 0.0504.
    # Cloud attention, prefill: FLOPs 100 * (2*(2e6 + 4*50.5*500) + 2*2e6) = 8.202e8 -> 8.202e-6
    #   s; bytes 2 B * 4e6 = 8e6 -> 8e-5 s (memory-bound): 8e-5. FFN: 2 * 100 * 8e6 = 1.6e9 ->
    #   1.6e-5 s; 2 * 8e6 B -> 1.6e-4 s: 1.6e-4.
    # Decode: attention bytes 8e6 + KV 2 groups * 2 * 500 * 101 * 2 B = 8.404e6 -> 8.404e-5;
    #   FFN 1.6e-4. Per layer 2.4e-4 + 2.4404e-4 = 4.8404e-4, two layers 9.6808e-4.
    # LM head: 2 B * 1e7 = 2e7 B -> 2e-4 s (FLOPs 2e7 -> 2e-7 s), twice: 4e-4.
    # Last token: RTT/2 + 4 B / 1e6 = 0.050004. Total: 0.0504 + 9.6808e-4 + 4e-4 + 0.050004.
    assert c["latency_s"] == approx(0.10177208)
    # = RTT/2 + prompt bytes / B + cloud compute + RTT/2 + 4 B / B.
    assert c["latency_s"] == approx(0.1 + 400 / 1e6 + 9.6808e-4 + 4e-4 + 4 / 1e6)
    # Edge: transmits the prompt 4e-4 s at 2 W, idle for the rest at 1 W.
    assert c["energy_j"] == approx(2 * 4e-4 + 1 * (0.10177208 - 4e-4))
    # 1.36808e-3 GPU-s at 1 USD + (400 B up + 2 tokens down = 8 B) * 0.5 USD/GB.
    assert c["cloud_gpu_s"] == approx(1.36808e-3)
    assert c["bytes_up"] == 400 and c["bytes_down"] == 8
    assert c["cloud_cost"] == approx(1.36808e-3 + 408 * 0.5e-9)
    assert c["edge_memory_gb"] == 0 and c["accuracy_drop"] == 0 and c["n_crossings"] == 0
    assert c["feasible"]


def test_cloud_share_scales_cloud_compute_only():
    # Half the GPU doubles every cloud block (no overhead here): + 1.36808e-3 s; the GPU-seconds
    # charged (time x share) stay the same.
    half = costs(cloud_only(2), make_link(8.0, 100.0, cloud_share=0.5))
    assert half["latency_s"] == approx(0.10177208 + 1.36808e-3)
    assert half["cloud_gpu_s"] == approx(1.36808e-3)


def test_edge_only():
    c = costs(edge_only(2, 2))
    # Attention prefill: FLOPs 8.202e8 -> 8.202e-4 s; bytes 1 B * 4e6 -> 4e-3 s: 4e-3.
    # FFN prefill: 1.6e9 FLOPs -> 1.6e-3 s; 8e6 B -> 8e-3 s: 8e-3.
    # Attention decode: 4e6 + KV 2 * 2 * 500 * 101 * 1 B = 4.202e6 B -> 4.202e-3; FFN 8e-3.
    # Per layer 0.024202, two layers 0.048404; LM head 1e7 B -> 0.01 s, twice: 0.02.
    assert c["latency_s"] == approx(0.068404)
    assert c["edge_compute_s"] == approx(0.068404)
    assert c["energy_j"] == approx(10 * 0.068404)
    # Weights 2 * (2e6 heads + 2e6 K/V + 8e6 FFN) + 2 * 1e7 embedding/LM head = 4.4e7 B;
    # KV cache 2 layers * 2 groups * 2 * 500 * (100 + 1) * 1 B = 404 000 B.
    assert c["edge_memory_gb"] == approx(0.044404)
    # All blocks (importance 1) at 8-bit: 100 * 0.02 = 2 %.
    assert c["accuracy_drop"] == approx(2.0)
    assert c["cloud_cost"] == 0 and c["bytes_up"] == 0 and c["n_crossings"] == 0


def test_single_layer_cut():
    c = costs(layer_cut(2, 2, 1))
    # Layer 0 on the edge: prefill 4e-3 + 8e-3, decode 4.202e-3 + 8e-3.
    # Layer 1: the input crosses edge -> cloud: prefill 100 * 1000 * 2 B = 2e5 B -> 0.05 + 0.2,
    #   then cloud attention 8e-5 and FFN 1.6e-4; decode 2000 B -> 0.052, 8.404e-5, 1.6e-4.
    # LM head on the cloud twice: 4e-4. The sampled token returns to the edge's embedding once
    # (T = 1): 0.050004; the last token to the edge: 0.050004.
    prefill = 0.012 + 0.25 + 8e-5 + 1.6e-4
    decode = 0.012202 + 0.052 + 8.404e-5 + 1.6e-4
    assert c["latency_s"] == approx(prefill + decode + 4e-4 + 2 * 0.050004)  # 0.42709404
    assert c["n_crossings"] == 1
    assert c["bytes_up"] == 202000 and c["bytes_down"] == 8
    # Energy: busy 0.024202 at 10 W; radio 202000 B / 1e6 = 0.202 s at 2 W; idle per phase:
    # prefill crossing phase 0.25008 - 0.2 = 0.05008, decode 0.05208404 - 0.002 = 0.05008404,
    # cloud FFNs 2 * 1.6e-4, endpoints 4e-4 + 0.100008.
    idle = 0.05008 + 0.05008404 + 3.2e-4 + 0.100408
    assert c["energy_j"] == approx(10 * 0.024202 + 2 * 0.202 + idle)  # 0.84691204
    # Layer 0 weights 1.2e7 B + its KV 202 000 B + the embedding 1e7 B (LM head on the cloud).
    assert c["edge_memory_gb"] == approx(0.022202)
    # Layer 0's blocks have importance 0.1 + 0.1 + 0.3 = 0.5: 100 * 0.02 * 0.5 = 1 %.
    assert c["accuracy_drop"] == approx(1.0)
    # At int8 the crossing costs 1 % more and the activations are half the bytes.
    c8 = costs(layer_cut(2, 2, 1, act_prec=1))
    assert c8["accuracy_drop"] == approx(2.0)
    assert c8["bytes_up"] == 101000


def test_split_heads_layer():
    # Layer 0: one head on the edge, one on the cloud, FFN on the edge; layer 1 on the edge.
    c = costs(make_partition([1, 2], [EDGE, EDGE]))
    # Prefill layer 0 attention: edge head + its K/V: bytes 2e6 -> 2e-3 s (FLOPs 4.101e8 ->
    #   4.101e-4 s); the cloud's half: 4e6 B -> 4e-5 s. The input goes up (2e5 B: 0.25 s) and
    #   the partial sum comes down (0.25 s): max(2e-3, 0.25 + 4e-5 + 0.25) = 0.50004.
    # Decode layer 0 attention: edge 2e6 + 101 000 B KV -> 2.101e-3; cloud 4e6 + 202 000 B ->
    #   4.202e-5; crossings 2 * (0.05 + 0.002): max(2.101e-3, 0.10404202) = 0.10404202.
    # Layer 0 FFN 8e-3 per pass; layer 1 as edge-only (0.012, 0.012202); LM head 0.02.
    prefill = 0.50004 + 0.008 + 0.012
    decode = 0.10404202 + 0.008 + 0.012202
    assert c["latency_s"] == approx(prefill + decode + 0.02)  # 0.66428402
    assert c["n_crossings"] == 2
    assert c["bytes_up"] == 202000 and c["bytes_down"] == 202000
    assert c["cloud_gpu_s"] == approx(4e-5 + 4.202e-5)
    # Edge memory: layer 0 one head + one K/V head (2e6) + FFN 8e6 + KV 101 000; layer 1
    # 1.2e7 + 202 000; embedding and LM head 2e7.
    assert c["edge_memory_gb"] == approx(0.042303)
    # Importance on the edge: everything but one head of layer 0 (0.1): 100 * 0.02 * 0.9.
    assert c["accuracy_drop"] == approx(1.8)


def test_outage():
    # Bandwidth 0: anything that crosses takes forever; edge-only is unaffected.
    down = make_link(0.0, 100.0)
    assert np.isinf(costs(cloud_only(2), down)["latency_s"])
    assert not costs(cloud_only(2), down)["link_ok"]
    assert not costs(layer_cut(2, 2, 1), down)["feasible"]
    assert costs(edge_only(2, 2), down)["latency_s"] == approx(0.068404)
    assert costs(edge_only(2, 2), down)["feasible"]


# GQA: 1 layer, 4 query heads on 2 K/V heads (group 2), d = 1000, head dim 250.
HAND_GQA = ModelCard("hand-gqa", 1, 4, 2, 1000, 4000, 1000, "gelu", False)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_gqa_split_group_pays_kv_on_both_sides(k):
    # A cloud with unlimited FLOPs is memory-bound: each attention block costs its weight bytes
    # (2 B * 2*d*dh = 1e6 B per query head and per K/V head) plus, in decode, its KV cache
    # (2 B * 2 * dh * ctx per K/V head). The edge holds heads 0..k-1, so ceil(k/2) K/V heads;
    # the cloud holds heads k..3, so 2 - floor(k/2) K/V heads: for k odd, the group split
    # across the sides is paid on both (3 K/V heads in all).
    cloud = DeviceProfile("mem-bound", "cloud", peak_tflops=1e9, mem_bw_gbs=1.0,
                          eff_compute=1.0, eff_memory=1.0, overhead_us=0.0, weight_bits=16,
                          kv_bits=16, power_active_w=0, power_idle_w=0, power_tx_w=0,
                          mem_budget_gb=80)
    acc = AccuracyProfile(np.zeros(3), {"8": 0.0}, np.full((1, 4), 0.1), np.array([0.6]), "u")
    spec = make_spec(HAND_GQA, EDGE_P, cloud, Workload(100, 1), 0, acc)
    c = costs(make_partition([k], [EDGE]), make_link(1000.0, 1.0), spec)
    kc, g_c, g_e = 4 - k, 2 - k // 2, -(-k // 2)
    ctx = 101  # decode context S + (T + 1) / 2
    prefill = 2 * (kc + g_c) * 2 * 1000 * 250 / 1e9
    decode = (2 * (kc + g_c) * 2 * 1000 * 250 + 2 * g_c * 2 * 250 * ctx) / 1e9
    assert c["cloud_gpu_s"] == approx(prefill + decode if kc else 0.0)
    # Edge memory: (k + g_e) * 5e5 weights at 1 B, FFN 8e6, embedding + LM head 2e6, KV cache
    # g_e * 2 * 250 * 101 at 1 B.
    mem = (k + g_e) * 5e5 + 8e6 + 2e6 + g_e * 2 * 250 * 101
    assert c["edge_memory_gb"] == approx(mem / 1e9)
    assert g_e + g_c == 2 + (k % 2)


def test_token_feedback_when_embedding_and_lm_head_differ():
    # Embedding on the cloud, everything else on the edge: the prompt goes up (0.0504 s), the
    # layer-0 input comes down (prefill 0.05 + 2e5 B / 1e6 = 0.25, decode 0.052), the sampled
    # token goes back up before the decode step (0.050004), the LM head runs on the edge.
    p = make_partition([2, 2], [EDGE, EDGE], embed_edge=False)
    c = costs(p)
    expected = 0.0504 + 0.25 + 0.052 + 0.050004 + 0.068404
    assert c["latency_s"] == approx(expected)
    assert c["bytes_up"] == 400 + 4 and c["bytes_down"] == 2e5 + 2000
    assert c["n_crossings"] == 1
    # The embedding matrix is not on the edge, the LM head is: 1e7 B less than edge-only.
    assert c["edge_memory_gb"] == approx(0.034404)


def test_msg_overhead_is_paid_by_every_crossing():
    # 30 us per message on each side: each crossing pays 60 us more. Cloud-only crosses twice
    # on its critical path (the prompt up, the last token down): + 1.2e-4 s.
    spec = make_spec(HAND, dataclasses.replace(EDGE_P, msg_overhead_us=30.0),
                     dataclasses.replace(CLOUD_P, msg_overhead_us=30.0), Workload(100, 1), 0, ACC)
    c = costs(cloud_only(2), spec=spec)
    assert c["latency_s"] == approx(0.10177208 + 1.2e-4)
    # The single cut crosses four times: the layer-1 input in prefill and in decode, the token
    # fed back, the last token: + 2.4e-4 s.
    c = costs(layer_cut(2, 2, 1), spec=spec)
    assert c["latency_s"] == approx(0.42709404 + 2.4e-4)


# Tensor parallelism between two identical devices: the HAND card on the edge above and a peer
# "cloud" with the same roofline (1e12 FLOP/s, 1e9 B/s, 1-byte weights and KV), a link of
# 8000 Mbit/s = 1e9 B/s both ways, RTT 0.1 ms (RTT/2 = 5e-5 s), 10 us per message on each side:
# one crossing of an fp16 residual costs 5e-5 + 2e-5 + bytes / 1e9: prefill 100 * 1000 * 2 B =
# 2e5 B -> X = 2.7e-4 s; decode 2000 B -> X = 7.2e-5 s.
# Per side, one head and its K/V head: prefill 2e6 B -> 2e-3 s (FLOPs 4.101e8 -> 4.1e-4 s);
# decode 2e6 + 101 000 B of K/V -> 2.101e-3 s. Half the FFN columns (phi = 8/16): 2 matrices
# x 0.5 x 1000 x 4000 = 4e6 weights -> 4e-3 s in both passes (FLOPs 8e8 -> 8e-4 s prefill).
PEER = DeviceProfile("hand-peer", "cloud", peak_tflops=1.0, mem_bw_gbs=1.0, eff_compute=1.0,
                     eff_memory=1.0, overhead_us=0.0, weight_bits=8, kv_bits=8,
                     power_active_w=0.0, power_idle_w=0.0, power_tx_w=0.0, mem_budget_gb=1.0,
                     price_per_gpu_s=1.0, price_per_gb=0.0, msg_overhead_us=10.0)
TP_SPEC = make_spec(HAND, dataclasses.replace(EDGE_P, msg_overhead_us=10.0), PEER,
                    Workload(100, 1), 0, ACC)
TP_LINK = make_link(8000.0, 0.1)


def test_tp_two_layers_between_peers():
    c = costs(make_partition([1, 1], [TP, TP], ffn_frac=[8, 8]), TP_LINK, TP_SPEC)
    # Prefill layer 0 (residual on the edge): the cloud holds a head, so the residual goes up
    # first (X): cloud attention ends at 2.7e-4 + 2e-3 = 2.27e-3, the edge's at 2e-3.
    # Exchange 1: edge ready at max(2e-3, 2.27e-3 + 2.7e-4) = 2.54e-3, cloud at
    # max(2.27e-3, 2e-3 + 2.7e-4) = 2.27e-3. FFN halves: 6.54e-3 and 6.27e-3. Exchange 2:
    # edge max(6.54e-3, 6.27e-3 + 2.7e-4) = 6.54e-3, cloud max(6.27e-3, 6.54e-3 + 2.7e-4) =
    # 6.81e-3. Barrier: 6.81e-3.
    # Prefill layer 1 (both hold it): 2e-3 + 2.7e-4 + 4e-3 + 2.7e-4 = 6.54e-3.
    # Decode layer 0: as prefill with 2.101e-3 and X = 7.2e-5: edge ready max(2.101e-3,
    # 2.173e-3 + 7.2e-5) = 2.245e-3, cloud 2.173e-3; FFN 6.245e-3 / 6.173e-3; exchange 2:
    # cloud max(6.173e-3, 6.245e-3 + 7.2e-5) = 6.317e-3. Decode layer 1: 2.101e-3 + 7.2e-5 +
    # 4e-3 + 7.2e-5 = 6.245e-3.
    # The residual ends on both sides: the LM head runs on the embedding's side (the edge),
    # 1e7 B -> 0.01 s, twice: 0.02. No token crosses.
    layers = 6.81e-3 + 6.54e-3 + 6.317e-3 + 6.245e-3
    assert c["latency_s"] == approx(layers + 0.02)  # 0.045912 (edge-only: 0.068404)
    # Messages of one pass: layer 0 enters (1 up) and exchanges twice each way (2 up, 2 down);
    # layer 1 only exchanges (2 up, 2 down): 9 crossings.
    assert c["n_crossings"] == 9
    # Up: 5 residuals a pass (2e5 B prefill, 2000 B decode); down: 4.
    assert c["bytes_up"] == approx(5 * 2e5 + 5 * 2000)
    assert c["bytes_down"] == approx(4 * 2e5 + 4 * 2000)
    # Edge compute: prefill 2 x (2e-3 + 4e-3), decode 2 x (2.101e-3 + 4e-3), LM head 0.02.
    assert c["edge_compute_s"] == approx(0.012 + 0.012202 + 0.02)
    assert c["cloud_gpu_s"] == approx(0.012 + 0.012202)
    # Energy: busy 0.044202 s at 10 W; radio 1.01e6 B / 1e9 = 1.01e-3 s at 2 W; idle per layer
    # phase (latency - busy - radio): 6.81e-3 - 6e-3 - 6e-4 = 2.1e-4, 6.54e-3 - 6e-3 - 4e-4 =
    # 1.4e-4, 6.317e-3 - 6.101e-3 - 6e-6 = 2.1e-4, 6.245e-3 - 6.101e-3 - 4e-6 = 1.4e-4.
    assert c["energy_j"] == approx(10 * 0.044202 + 2 * 1.01e-3 + 7e-4)  # 0.44474
    # Memory per layer and side: one head + one K/V head 2e6 B, half the FFN 4e6 B, K/V cache
    # 2 * 500 * 101 = 101 000 B; the edge also holds the embedding and the LM head (2e7 B).
    assert c["edge_memory_gb"] == approx(2 * 6.101e-3 + 0.02)  # 0.032202
    assert c["cloud_memory_gb"] == approx(2 * 6.101e-3)  # 0.012202
    # Edge importance: per layer one head (0.1) and half the FFN (0.5 * 0.3): 0.5 in all, at
    # 8-bit weights 100 * 0.02 * 0.5 = 1 %; at int8 each of the 9 crossings costs 1 % more.
    assert c["accuracy_drop"] == approx(1.0)
    c8 = costs(make_partition([1, 1], [TP, TP], 1, ffn_frac=[8, 8]), TP_LINK, TP_SPEC)
    assert c8["accuracy_drop"] == approx(10.0)
    assert c["feasible"] and c["cloud_memory_ok"]


def test_tp_then_edge_ffn_from_both():
    # Layer 1 takes the residual on both sides with its FFN on the edge: no input crosses; the
    # cloud's head sends its partial down: max(t_e, t_c + X), then the whole FFN on the edge
    # (8e6 B -> 8e-3 s). Prefill: max(2e-3, 2e-3 + 2.7e-4) + 8e-3 = 0.01027; decode:
    # 2.101e-3 + 7.2e-5 + 8e-3 = 0.010173. Layer 0 as above (6.81e-3, 6.317e-3); LM head 0.02.
    c = costs(make_partition([1, 1], [TP, EDGE], ffn_frac=[8, 0]), TP_LINK, TP_SPEC)
    assert c["latency_s"] == approx(6.81e-3 + 0.01027 + 6.317e-3 + 0.010173 + 0.02)
    assert c["n_crossings"] == 5 + 1


def test_tp_all_heads_on_one_side_and_cloud_budget():
    # All heads on the edge, FFN split 4/16 on the edge: nothing enters (the cloud holds no
    # heads); the edge runs both heads (2 x 2e6 B -> 4e-3 s prefill; decode 4e6 + 2 x 101 000
    # B -> 4.202e-3 s) and sends x + its partial up (X); the FFN shares are 0.25 and 0.75 of 8e6
    # B: 2e-3 and 6e-3 s. Prefill: edge ready 4e-3, cloud 4e-3 + 2.7e-4 = 4.27e-3; done 6e-3 and
    # 0.01027; exchange 2: edge max(6e-3, 0.01027 + 2.7e-4) = 0.01054. Decode: 4.202e-3,
    # cloud 4.274e-3; done 6.202e-3, 0.010274; edge 0.010346. One layer (card HAND_1).
    card = dataclasses.replace(HAND, name="hand-1", n_layers=1)
    acc = AccuracyProfile(ACC.act_rel, ACC.weight_rel, ACC.head_w[:1], ACC.ffn_w[:1], "hand-1")
    spec = make_spec(card, dataclasses.replace(EDGE_P, msg_overhead_us=10.0), PEER,
                     Workload(100, 1), 0, acc)
    c = costs(make_partition([2], [TP], ffn_frac=[4]), TP_LINK, spec)
    assert c["latency_s"] == approx(0.01054 + 0.010346 + 0.02)
    assert c["n_crossings"] == 3  # 1 up in exchange 1, 1 each way in exchange 2
    # The cloud holds 3/4 of the FFN (6e6 B) and nothing else: 6e-3 GB. A 5 MB budget does not
    # hold it: infeasible, though the edge fits.
    assert c["cloud_memory_gb"] == approx(6e-3)
    small = make_spec(card, dataclasses.replace(EDGE_P, msg_overhead_us=10.0),
                      dataclasses.replace(PEER, mem_budget_gb=0.005), Workload(100, 1), 0, acc)
    c = costs(make_partition([2], [TP], ffn_frac=[4]), TP_LINK, small)
    assert c["memory_ok"] and not c["cloud_memory_ok"] and not c["feasible"]
