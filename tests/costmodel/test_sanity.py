"""Sanity of the device profiles against public end-to-end measurements
(/shared/data/device-measurements.md): edge-only decode and prefill rates predicted by the cost
model land within +-35 % of the published numbers.

Decode rate = 1 / costs.decode_token_time (one edge-only decode pass: every layer plus one LM
head call, at the stated KV context); prefill rate = S / costs.prefill_time.
"""

from __future__ import annotations

import pytest

from costmodel.cards import ModelCard
from costmodel.costs import decode_token_time, prefill_time
from costmodel.link import Workload
from costmodel.spec import make_spec

TOL = 0.35


def decode_rate(model, device, prompt=32, new=256, context=None):
    spec = make_spec(model, device, workload=Workload(prompt, new))
    return 1.0 / float(decode_token_time(spec, context))


def prefill_rate(model, device, prompt):
    spec = make_spec(model, device, workload=Workload(prompt, 1))
    return prompt / float(prefill_time(spec))


def within(predicted, measured, tol=TOL):
    return predicted == pytest.approx(measured, rel=tol)


def test_rpi5_decode_llama31_8b():
    # geerlingguy/ai-benchmarks issue 7 (ollama on the Pi 5 CPU): llama3.1 8B 2.17 tok/s.
    # Short prompt, a few hundred generated tokens: prompt 32, 256 new (mean context 160).
    assert within(decode_rate("llama3.1-8b", "rpi5"), 2.17)  # predicted 2.47


def test_rpi5_decode_llama_13b():
    # Same source: llama2 13B 1.36 tok/s (LLaMA-1 and Llama 2 13B share the architecture).
    # The 4.5-bit model (7.3 GB) exceeds the 8 GB board's assumed 7 GB budget, so the cost
    # model marks edge-only infeasible there; the rate itself is what is compared.
    assert within(decode_rate("llama-13b", "rpi5"), 1.36)  # predicted 1.43


def test_rpi5_prefill_llama_7b():
    # llama.cpp PR 6928: Llama-2-7B Q4_0 prompt processing about 8.1 tok/s on the Pi 5 (512-token
    # prompt, the llama-bench default).
    assert within(prefill_rate("llama-7b", "rpi5", 512), 8.1)  # predicted 7.97


def test_galaxy_s23_decode_llama_7b():
    # Qualcomm AI Hub Llama-v2-7B-Chat (w4a16, S23 Ultra NPU): 104.95 ms per generated token,
    # about 9.5 tok/s. The exported model has a fixed 1024-token context; reading a KV cache of
    # the full window is the conservative end (predicted 7.8 tok/s), a short prompt the other
    # (128 + 128 tokens: predicted 8.7 tok/s).
    assert within(decode_rate("llama-7b", "galaxy-s23", context=1024.0), 9.5)
    assert within(decode_rate("llama-7b", "galaxy-s23", prompt=128, new=128), 9.5)


def test_galaxy_s23_prefill_llama_7b():
    # Same card: 1917.8 ms for a 1024-token prompt, about 534 tok/s.
    assert within(prefill_rate("llama-7b", "galaxy-s23", 1024), 534.0)  # predicted 542


def test_orin_nx_decode_proxies():
    # No published Orin NX decode rate of a 7B model; proxy (nvidia-holoscan/holohub issue
    # 170): AGX Orin with llama.cpp, Llama-2-7B 4-bit 22.5 tok/s on 204.8 GB/s. Decode is
    # memory-bound, so the NX (102.4 GB/s) proxy is 22.5 * 102.4 / 204.8 = 11.25 tok/s.
    assert within(decode_rate("llama-7b", "orin-nx"), 22.5 * 102.4 / 204.8)  # predicted 10.2
    # dusty-nv/NanoLLM issue 38: TinyLlama-1.1B q4 with MLC 30-45 tok/s on the NX. Predicted
    # 51.7 tok/s: above the range (the per-phase overhead of 120 us is not enough to reach
    # MLC's 45 tok/s), within 35 % of its upper end.
    tinyllama = ModelCard("tinyllama-1.1b", 22, 32, 4, 2048, 5632, 32000, "swiglu", False,
                          source="TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json")
    rate = decode_rate(tinyllama, "orin-nx")
    assert 30.0 * (1 - TOL) <= rate <= 45.0 * (1 + TOL)
