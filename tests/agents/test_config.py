"""Command-line flags to configs, and config validation (no training)."""

from __future__ import annotations

import argparse
import math

import pytest

from agents import evaluate, train
from agents.ppo import PPOConfig
from lyapunov.scenario_args import scenario_from_args


def _parse(add, argv):
    ap = argparse.ArgumentParser()
    add(ap)
    return ap.parse_args(argv)


def test_train_flags():
    args = _parse(train.add_args, [
        "--model", "gpt2-xl", "--device", "orin-nx", "--cloud", "mec",
        "--trace", "norway_bus_1", "norway_car_1", "--arrival-rate", "0.5", "--V", "100",
        "--steps", "50000", "--seeds", "3", "--out", "/tmp/x", "--layerwise",
        "--share", "0.1"])
    cfg = train.config_from_args(args)
    assert cfg.action.kind == "layerwise" and cfg.num_seeds == 3
    assert cfg.train_traces == ("norway_bus_1", "norway_car_1")
    sc = cfg.scenario
    assert (sc.model, sc.device, sc.cloud, sc.V, sc.arrival.rate) == (
        "gpt2-xl", "orin-nx", "mec", 100.0, 0.5)
    assert sc.link.bandwidth.kind == "trace" and sc.link.rtt_ms == 5.0  # the MEC's RTT
    assert sc.link.share.kind == "ar1" and sc.link.share.median_share == 0.1
    # 50000 steps / (16 envs * 32 slots) = 97.7 updates -> 100 (whole segments of 10)
    assert cfg.ppo.num_updates == 100 and cfg.ppo.reward_mode == "relative"
    assert train.config_from_json(train.config_to_json(cfg)) == cfg
    flat = train.config_from_args(_parse(train.add_args, ["--out", "/x", "--flat-head"]))
    assert flat.action.kind == "flat_head"
    assert train.config_from_args(
        _parse(train.add_args, ["--out", "/x", "--gamma", "0.9"])).ppo.reward_mode == "dpp"


def test_evaluate_flags_and_grid():
    args = _parse(evaluate.add_args, ["--policy", "oracle", "best-cut", "--trace",
                                      "norway_bus_1", "norway_metro_1", "--Vs", "1", "10",
                                      "--seeds", "2"])
    base = scenario_from_args(args, None)
    cases = evaluate.scenario_grid(base, traces=args.trace, Vs=args.Vs)
    assert len(cases) == 4
    labels = [c.label_dict for c in cases]
    assert {lab["bandwidth"] for lab in labels} == {"norway_bus_1", "norway_metro_1"}
    assert {lab["V"] for lab in labels} == {"1", "10"}
    assert all(c.scenario.link.bandwidth.kind == "trace" for c in cases)


def test_ppo_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        PPOConfig(num_envs=3, num_steps=5, num_minibatches=4)
    with pytest.raises(ValueError, match="gamma = 0"):
        PPOConfig(gamma=0.9, reward_mode="relative")
    assert PPOConfig().clip == 10.0 and PPOConfig(reward_mode="dpp").clip is None
    assert math.isclose(PPOConfig(num_envs=8, num_steps=16, num_minibatches=4).minibatch_size,
                        32)


def test_memory_and_mismatch_flags_round_trip():
    args = _parse(train.add_args, ["--out", "/x", "--no-memory", "--mismatch", "profile-error",
                                   "--mismatch", "throttling", "--mismatch-seed", "4"])
    cfg = train.config_from_args(args)
    assert cfg.net.memory is False
    assert cfg.scenario.mismatch.kinds == ("profile-error", "throttling")
    assert cfg.scenario.mismatch.seed == 4
    assert train.config_from_json(train.config_to_json(cfg)) == cfg
    assert train.config_from_args(_parse(train.add_args, ["--out", "/x"])).net.memory is True
