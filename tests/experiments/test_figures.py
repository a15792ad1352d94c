"""End-to-end checks of the experiments at tiny size: arrays, config and PNG written, numbers
consistent with the cost model they come from."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from costmodel import partition as P
from costmodel.costs import request_costs
from costmodel.link import make_link
from costmodel.strategies import STRATEGIES, strategy_partition
from experiments import fig01_latency_bandwidth as fig01
from experiments import fig09_robustness as fig09
from experiments.catalog import MODES, catalog, identity_progress
from experiments.common import evaluate_links, get_spec, links
from experiments.conditions import CONDITIONS, condition
from experiments.tables import read_rows, write_config, write_rows
from lyapunov import registry


def test_catalog_configs_are_frozen_and_named():
    reg = catalog()
    assert len(reg) == len(set(reg))
    numbers = [e.number for e in reg.values()]
    assert numbers == sorted(numbers)
    for exp in reg.values():
        for mode in MODES:
            cfg = exp.config(mode)
            assert dataclasses.is_dataclass(cfg)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(cfg, dataclasses.fields(cfg)[0].name, None)


def test_overrides_of_optional_fields_take_their_declared_type():
    """An optional field (``float | None``) that is None is set from a string as its declared
    type, "none" sets it back, and a bad value names the field; every experiment's fields have
    resolvable annotations."""
    from experiments import fig15_runtime as fig15
    from experiments.catalog import _hint, with_overrides

    cfg = with_overrides(fig15.QUICK, {"edge_memory_gb": "0.3", "privacy_layers": "2"}, "--set")
    assert cfg.edge_memory_gb == 0.3 and isinstance(cfg.edge_memory_gb, float)
    assert cfg.privacy_layers == 2
    assert with_overrides(cfg, {"edge_memory_gb": "none"}, "--set").edge_memory_gb is None
    assert with_overrides(cfg, {"checkpoint": "runs/x"}, "--set").checkpoint == "runs/x"
    with pytest.raises(ValueError, match="'edge_memory_gb': expected float, got 'abc'"):
        with_overrides(fig15.QUICK, {"edge_memory_gb": "abc"}, "--set")
    for exp in catalog().values():
        cfg = exp.config("quick")
        assert all(_hint(type(cfg), f.name) is not None for f in dataclasses.fields(cfg))


@pytest.mark.extended
def test_latency_vs_bandwidth_end_to_end(tmp_path):
    cfg = fig01.Config(models=("gpt2-xl",), devices=("orin-nx",),
                       conditions=("dc-contended",), n_bw=3)
    fig01.run(cfg, tmp_path, identity_progress)
    pngs = fig01.plot(tmp_path)
    assert pngs and all(p.exists() and p.stat().st_size > 0 for p in pngs)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["config"]["n_bw"] == 3
    rows = read_rows(tmp_path / "latency.csv")
    assert len(rows) == 3 * len(STRATEGIES)  # bandwidths x strategies
    cond = condition("dc-contended")
    spec = get_spec("gpt2-xl", "orin-nx", cond.cloud)
    for r in rows:
        link = make_link(r["bw_mbps"], cond.rtt_ms, cloud_share=cond.share_median)
        if r["strategy"] == "cloud-only":
            ref = request_costs(P.cloud_only(spec.n_layers), link, spec)
            np.testing.assert_allclose(r["latency_s"], float(ref.latency_s), rtol=1e-5)
            np.testing.assert_allclose(r["energy_j"], float(ref.energy_j), rtol=1e-5)
        if r["strategy"] == "edge-only":
            ref = request_costs(P.edge_only(spec.n_layers, spec.n_heads), link, spec)
            np.testing.assert_allclose(r["latency_s"], float(ref.latency_s), rtol=1e-5)
    # The head/FFN DP contains every other strategy: never slower than any feasible one.
    for bw in {r["bw_mbps"] for r in rows}:
        at = {r["strategy"]: r for r in rows if r["bw_mbps"] == bw}
        best_other = min(r["latency_s"] for s, r in at.items()
                         if s != "best-headwise" and r["feasible"])
        assert at["best-headwise"]["latency_s"] <= best_other * (1 + 1e-5)


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
def test_robustness_without_outages_is_nominal(tmp_path):
    cfg = dataclasses.replace(fig09.QUICK, outage_fracs=(0.0, 0.3), n_requests=20, seeds=2)
    fig09.run(cfg, tmp_path, identity_progress)
    assert fig09.plot(tmp_path)[0].exists()
    rows = read_rows(tmp_path / "robustness.csv")
    meta = json.loads((tmp_path / "config.json").read_text())
    for r in rows:
        if r["outage_frac"] == 0.0:
            assert r["completion"] == 1.0
            np.testing.assert_allclose(r["latency_mean_s"], meta["nominal_latency_s"], rtol=1e-9)
        elif r["policy"] == "checkpoint-resume-fast":
            # with the same fast schedule, resuming from the checkpoint (with edge fallback)
            # never completes fewer than restarting (the runtime's restart-safe defaults can:
            # their 5 s timeouts eat the deadline, which is what the figure shows)
            restart = [x for x in rows if x["seed"] == r["seed"] and x["outage_frac"] == 0.3
                       and x["policy"] == "restart"][0]
            assert r["completion"] >= restart["completion"]


@pytest.mark.slow
def test_segment_times_add_up():
    """Prefill + T decode steps is the latency of the best layer cut (found here with the
    cost model's own strategy), and a step is the latency added per token."""
    cfg = fig09.QUICK
    prefill, step, t, _, _, name = fig09.segment_times(cfg)
    spec = get_spec(cfg.model, cfg.device, cfg.cloud, cfg.privacy_layers)
    link = make_link(cfg.bw_mbps, cfg.rtt_ms, cloud_share=cfg.cloud_share)
    cut, costs = strategy_partition("best-layer-cut", link, spec)
    assert t == int(spec.new_tokens) and prefill > 0 and step > 0
    np.testing.assert_allclose(prefill + t * step, float(costs.latency_s), rtol=1e-5)
    on_edge = int(np.sum(np.asarray(cut.ffn) == P.EDGE))
    assert cfg.privacy_layers <= on_edge < spec.n_layers  # a proper cut: every pass crosses
    assert name.startswith(f"layer cut after layer {on_edge},")
    fewer = spec.replace(new_tokens=spec.new_tokens * 0 + t - 4)
    np.testing.assert_allclose(float(request_costs(cut, link, fewer).latency_s),
                               prefill + (t - 4) * step, rtol=0.02)


def _fake_trace_run(out, ratios):
    """A figure-3 summary with a known latency ratio best-cut / ours per condition."""
    rows = []
    for cond, ratio in ratios.items():
        for seed in range(5):
            jitter = 1.0 + 0.01 * seed
            for pol, lat in (("cloud-only", 10.0), ("best-cut", ratio), ("static-cut", 9.0),
                             ("dp-estimate", 1.0)):
                rows.append({"model": "m", "device": "d", "condition": cond, "policy": pol,
                             "seed": seed, "latency_mean_s": lat * jitter,
                             "latency_p95_s": 2 * lat * jitter, "energy_mean_j": lat,
                             "accuracy_drop_mean": 0.1, "edge_memory_mean_gb": 1.0,
                             "mem_budget_gb": 8.0})
    write_rows(out / "trace_latency" / "summary.csv", rows)
    from experiments import fig03_trace_latency as fig03

    write_config(out / "trace_latency", fig03.QUICK, ours="dp-estimate", conditions={})


def test_claims_verdicts_from_a_known_run(tmp_path):
    from experiments.claims import _state, build_claims, request_level_context, write_claims

    # Hand-worked states: mean 1.5 +- 0.05 vs a threshold of 1.4 ("ge") holds; 1.42 +- 0.05
    # straddles it; 1.3 +- 0.05 fails. For "le" (at most 1.0): 0.9 +- 0.05 holds.
    assert _state(1.5, 0.05, 1.4, "ge") == "holds"
    assert _state(1.42, 0.05, 1.4, "ge") == "inconclusive"
    assert _state(1.3, 0.05, 1.4, "ge") == "fails"
    assert _state(0.9, 0.05, 1.0, "le") == "holds"
    _fake_trace_run(tmp_path, {"good": 2.0, "bad": 1.0})
    claims = {c["key"]: c for c in build_claims(tmp_path)}
    lat = claims["latency"]
    # best existing = best-cut (lower than static-cut): ratio 2.0 in "good", 1.0 in "bad".
    np.testing.assert_allclose(lat["measured"]["m/d/good"]["mean"], 2.0, rtol=1e-9)
    np.testing.assert_allclose(lat["measured"]["m/d/bad"]["mean"], 1.0, rtol=1e-9)
    assert lat["verdict"] == "reproduced under stated conditions"
    assert lat["regime"].startswith("m/d/good")
    # p95 vs cloud-only: 1 - 2 / 20 = 90% everywhere -> reproduced.
    assert claims["p95"]["verdict"] == "reproduced"
    assert claims["memory"]["verdict"] == "reproduced"  # 1 GB of 8 GB
    assert claims["stability"]["verdict"] == "pending"
    # Request-level context from figure 2's table: the head/FFN split's 10 J against the best
    # layer-wise 12.5 J (the cut; edge-only 20 J) is 1 - 10 / 12.5 = 20% less energy.
    energy = [{"model": "m", "device": "d", "condition": "c", "bw_mbps": 20.0, "strategy": s,
               "objective": o, "feasible": 1, "energy_j": e}
              for s, o, e in (("best-headwise", "energy", 10.0), ("best-layer-cut", "energy", 12.5),
                              ("edge-only", "latency", 20.0), ("cloud-only", "latency", 30.0))]
    write_rows(tmp_path / "energy" / "energy.csv", energy)
    assert "at most 20% less edge energy" in request_level_context(tmp_path)["energy_request_level"]
    md, js = write_claims(tmp_path)
    assert "reproduced under stated conditions" in md.read_text()
    assert json.loads(js.read_text())[0]["key"] == "latency"


def test_figures_cli_lists_experiments(capsys):
    from experiments.figures import main

    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "latency_vs_bandwidth" in out and "regime_map" in out


@pytest.mark.extended
def test_conditions_keep_their_regimes():
    """One set of condition numbers serves every figure: at the median share, cloud-only is the
    fastest strategy on the idle datacenter for every model and device, and on the contended
    ones some device beats it with a layer-wise choice (LLaMA-7B, 20 Mbit/s)."""
    for name, cond in CONDITIONS.items():
        beaten = []
        for device in ("rpi5", "orin-nx", "galaxy-s23"):
            costs, _ = evaluate_links(get_spec("llama-7b", device, cond.cloud),
                                      links([20.0], cond.rtt_ms, cond.share_median))
            lat = {s: float(c.latency_s[0]) if c.feasible[0] else np.inf
                   for s, c in costs.items()}
            beaten.append(min(lat["edge-only"], lat["best-layer-cut"]) < lat["cloud-only"])
        assert any(beaten) == (name != "dc-idle"), (name, beaten)


def test_tables_derive_from_the_policy_registry():
    from experiments.claims import existing, ours_of
    from experiments.plotting import STRATEGY_POLICY, policy_line, strategy_color

    for name in registry.names():
        line = policy_line(name)
        assert line["label"] == registry.label_of(name)
        assert line["color"] == registry.color_of(name)
        assert policy_line(f"{name}/seed0") == line  # a checkpoint's seeds draw as their kind
    for strategy, pol in STRATEGY_POLICY.items():
        assert strategy_color(strategy) == registry.color_of(pol)
    assert existing() == registry.names(role="baseline")
    assert ours_of(["oracle", "dp-estimate", "dp-joint", "hier"]) == "hier"
    assert ours_of(["oracle", "dp-estimate", "dp-joint"]) == "dp-joint"


@pytest.mark.extended
def test_batched_rollout_vectorized_equals_one_by_one():
    """The batcher's two modes run the same rollouts (cheap policy, tiny scenario)."""
    import jax

    from experiments.common import stack
    from experiments.sim import policy, seed_keys, slot_scenario
    from lyapunov.simulate import batched_rollout

    built = [slot_scenario("gpt2-xl", "orin-nx", CONDITIONS[c], None, bw=_constant_bw())
             .build() for c in ("dc-idle", "mec-contended")]
    params, keys = stack(built), seed_keys(2)
    pol = policy("best-cut")
    vec = batched_rollout(pol, params, 6, keys, vectorize=True)
    seq = batched_rollout(pol, params, 6, keys, vectorize=False)
    for a, b in zip(jax.tree.leaves(vec[0]), jax.tree.leaves(seq[0]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    shared = batched_rollout(pol, built[1], 6, keys, shared_params=True)
    np.testing.assert_allclose(np.asarray(shared[0].latency_s[1]),
                               np.asarray(vec[0].latency_s[1]), rtol=1e-6)


def _constant_bw():
    from lyapunov import processes as proc

    return proc.BandwidthConfig(kind="markov", levels_mbps=(20.0,), transition=((1.0,),))


def test_learning_summary_gaps_and_verdicts():
    """Figure 13's summary: paired gaps in % of |reference| with CIs, and "beats every
    planner" only where the upper CI bound of the gap to each causal planner is below 0."""
    from experiments import fig13_learning as fig13

    rows = []
    for seed in range(4):
        for pol, v in (("oracle", 9.0), ("dp-bayes", 10.0), ("dp-estimate", 10.5),
                       ("best-cut", 11.0), ("hier", 9.5 + 0.01 * seed),
                       ("layerwise", 10.2 + 0.3 * (seed % 2))):
            rows.append({"policy": pol, "condition": "exact", "trace": "t", "seed": seed,
                         "dpp": v + 0.1 * seed})
    summ = {r["policy"]: r for r in fig13.summarize(rows)}
    assert summ["hier"]["beats_every_planner"] and not summ["layerwise"]["beats_every_planner"]
    assert not summ["dp-estimate"]["beats_every_planner"]
    np.testing.assert_allclose(summ["dp-estimate"]["gap_dp-bayes_pct"],
                               np.mean([100 * 0.5 / (10 + 0.1 * s) for s in range(4)]))
    assert "gap_dp-bayes_pct" in summ["oracle"] and summ["oracle"]["n"] == 4
    np.testing.assert_allclose(summ["hier"]["gap_dp-estimate_pct"],
                               np.mean([100 * (9.5 + 0.01 * s - 10.5) / (10.5 + 0.1 * s)
                                        for s in range(4)]))
    assert "learning" in catalog() and catalog()["learning"].number == 13


@pytest.mark.extended
def test_learning_planners_end_to_end(tmp_path):
    """Figure 13 at tiny size without learners (none trained): one row per planner, condition,
    trace and seed; the summary (gaps to the oracle) and the PNG written. Two planners, one
    condition: each planner is a compilation of its own (dp-bayes's rollouts run in
    tests/lyapunov/test_policies.py; the LAN row has tests/experiments/test_lan_condition.py)."""
    from experiments import fig13_learning as fig13

    cfg = dataclasses.replace(fig13.QUICK, n_slots=6, seeds=2, train_steps=0,
                              conditions=("exact",), lan="", planners=("oracle", "best-cut"))
    fig13.run(cfg, tmp_path / "learning", identity_progress)
    rows = read_rows(tmp_path / "learning" / "learning.csv")
    assert len(rows) == 2 * len(cfg.eval_traces) * 2
    summ = read_rows(tmp_path / "learning" / "learning_summary.csv")
    cut = next(r for r in summ if r["policy"] == "best-cut")
    assert np.isfinite(cut["gap_oracle_pct"]) and cut["n"] == 2
    assert all(np.isfinite(r["dpp"]) for r in rows)
    assert fig13.plot(tmp_path / "learning")[0].exists()


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
def test_lan_regime_map_tp_wins_for_peers_within_the_two_device_bound(tmp_path):
    """Identical peers at 10 Gbit/s and 0.05-0.1 ms: the tensor-parallel split is a class of its
    own (beats the paper's space), and no split's margin over the best layer-wise choice
    exceeds the two-device bound (2x for identical peers)."""
    from experiments import fig12_regime_map as fig12
    from experiments.claims import regime_context

    cfg = dataclasses.replace(fig12.QUICK, cases=(), lan_rtt_ms=(0.05, 0.1, 2),
                              lan_bw_mbps=(10000.0, 10000.0, 1),
                              lan_cases=(("llama-7b", "rpi5", "pi5-peer"),
                                         ("llama-7b", "orin-nx", "orin-peer")))
    fig12.run(cfg, tmp_path, identity_progress)
    rows = read_rows(tmp_path / "regime.csv")
    assert len(rows) == 4
    for r in rows:
        assert r["winner_tp"] == "tensor-parallel split" and r["margin_tp"] > 1.0 + cfg.tol
        np.testing.assert_allclose(r["t_edge_s"], r["t_cloud_s"], rtol=1e-4)  # peers
        assert r["bound"] <= 2.0 + 1e-4
        for col in ("split_margin", "split_margin_tp"):
            assert 1.0 - 1e-6 <= r[col] <= r["bound"] * (1 + 1e-5)
        assert r["split_margin_tp"] >= r["split_margin"] - 1e-6
        # the tp class's margin is over the head-level split, which is itself a split
        assert r["margin_tp"] <= r["bound"] * (1 + 1e-5)
    ctx = regime_context(read_rows(tmp_path / "summary.csv"))
    assert ctx["tp_split_max_margin"] > ctx["head_split_max_margin"]
    assert len(ctx["two_device_bound"]) == 2
    assert all("pi5-peer" in x or "orin-peer" in x for x in ctx["two_device_bound"])


@pytest.mark.extended
def test_a_user_card_reaches_a_figure_through_its_config(tmp_path, capsys):
    """`figures --card-file my.json --set memory.models=my-card` runs figure 6 on the user's
    card (a config field like any other); the rows name it and its numbers differ from the
    built-in card it was copied from only where the architecture does."""
    from splitwise_cli import main

    card = {"name": "my-card", "n_layers": 6, "n_heads": 8, "n_kv_heads": 2, "d_model": 512,
            "d_ff": 1536, "vocab": 8000, "ffn_type": "swiglu", "tied_embeddings": True}
    (tmp_path / "my.json").write_text(json.dumps(card))
    (tmp_path / "cfg.json").write_text(json.dumps({"memory": {"devices": ["rpi5"],
                                                              "conditions": ["dc-idle"]}}))
    out = tmp_path / "out"
    code = main(["figures", "--only", "memory", "--out", str(out), "--no-progress",
                 "--no-claims", "--card-file", str(tmp_path / "my.json"), "--config",
                 str(tmp_path / "cfg.json"), "--set", "memory.models=my-card"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "memory" / "config.json").read_text())["config"]
    assert cfg["models"] == ["my-card"] and cfg["devices"] == ["rpi5"]
    rows = [r for f in sorted((out / "memory").glob("*.csv")) for r in read_rows(f)]
    assert rows and {r["model"] for r in rows if "model" in r} == {"my-card"}
    assert list((out / "memory").glob("*.png"))


@pytest.mark.extended
def test_parallel_figures_equal_sequential_ones(tmp_path):
    """`figures --jobs 2` runs experiments in spawned workers: the same rows as one after
    another in this process, every experiment's record, and the summary in catalog order."""
    from experiments.catalog import run_figures

    only = ["speedup", "accuracy"]
    small = {"models": (("gpt2-xl",), "test"), "devices": (("rpi5",), "test"),
             "conditions": (("dc-idle",), "test")}
    kw = dict(show_progress=False, claims=False, overrides={n: small for n in only})
    seq = run_figures("quick", only, tmp_path / "seq", **kw)
    (tmp_path / "par").mkdir()  # the workers read the programs the first run compiled
    (tmp_path / "par" / ".jax_cache").symlink_to(tmp_path / "seq" / ".jax_cache")
    par = run_figures("quick", only, tmp_path / "par", jobs=2, **kw)
    assert [r["name"] for r in par["experiments"]] == [r["name"] for r in seq["experiments"]]
    assert all(r["status"] == "done" for r in par["experiments"])
    for name, csv in (("speedup", "speedup.csv"), ("accuracy", "accuracy.csv")):
        a = read_rows(tmp_path / "seq" / name / csv)
        b = read_rows(tmp_path / "par" / name / csv)
        # (json text compares NaN, an infeasible row's speedup, as equal to itself)
        assert json.dumps(a) == json.dumps(b) and len(a) > 0, name
