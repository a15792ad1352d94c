"""The long-run reward (PPOConfig.reward_mode "longrun"): the formula on known steps, the
backlog it charges against the environment's own queue update, and its validation."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import train
from agents.ppo import PPOConfig, train_reward
from agents.slot_env import longrun_cost, lyapunov_adapter
from costmodel.partition import cloud_only, edge_only
from lyapunov import env as E
from tests.agents.small import SCENARIO


def _info(**kw):
    return SimpleNamespace(**{k: jnp.float32(v) for k, v in kw.items()})


def test_longrun_reward_equals_the_formula_on_a_hand_worked_step():
    # Q' = max(5 - 3 - 0.5, 0) + 4 = 5.5 (the environment reports it: backlog_next);
    # cost = 2 + 0.5 * 5.5 = 4.75; r = -(1 - 0.99) * 4.75 / 2 = -0.02375
    info = _info(penalty=2.0, backlog=5.0, service=3.0, failed=0.5, arrivals=4.0,
                 backlog_next=5.5)
    params = SimpleNamespace(slot=SimpleNamespace(V=jnp.float32(4.0)))
    cfg = PPOConfig(reward_mode="longrun", gamma=0.99, backlog_weight=0.5, reward_scale=2.0)
    r = train_reward(cfg, lyapunov_adapter(), params, None, jnp.float32(-123.0), info)
    assert math.isclose(float(r), -0.02375, rel_tol=1e-6)
    # default beta = 1 / V = 0.25: cost = 2 + 0.25 * 5.5 = 3.375; gamma 0, scale 1: r = -3.375
    cfg0 = PPOConfig(reward_mode="longrun", gamma=0.0)
    assert math.isclose(float(train_reward(cfg0, lyapunov_adapter(), params, None, 0.0, info)),
                        -3.375, rel_tol=1e-6)
    # the backlog never goes below 0 before the arrivals: Q' = max(1 - 3, 0) + 4 = 4
    drained = _info(penalty=0.0, backlog=1.0, service=3.0, failed=0.0, arrivals=4.0,
                    backlog_next=4.0)
    assert math.isclose(float(longrun_cost(drained, params, 1.0)), 4.0)


@pytest.mark.parametrize("part", ["edge", "cloud"])
def test_longrun_cost_charges_the_backlog_the_environment_carries(part):
    """On a real slot, Q' in the cost is the next state's backlog and p the step's penalty."""
    params = SCENARIO.build()
    k0, k1 = jax.random.split(jax.random.key(3))
    _, state = E.reset(k0, params)
    spec = params.spec
    # a loaded queue first, so that the service term matters
    state = state.replace(queues=state.queues.replace(q=jnp.float32(7.0)))
    a = edge_only(spec.n_layers, spec.n_heads) if part == "edge" else cloud_only(spec.n_layers)
    obs2, state2, reward, _, info = E.step(k1, state, a, params)
    beta = 0.3
    cost = longrun_cost(info, params, beta)
    np.testing.assert_allclose(float(cost), float(info.penalty) + beta * float(state2.queues.q),
                               rtol=1e-6)
    cfg = PPOConfig(reward_mode="longrun", gamma=0.9, backlog_weight=beta)
    r = train_reward(cfg, lyapunov_adapter(), params, obs2, reward, info)
    np.testing.assert_allclose(float(r), -0.1 * float(cost), rtol=1e-5)
    # and the DPP reward of the same step is untouched by the new mode
    cfg_dpp = PPOConfig(reward_mode="dpp")
    np.testing.assert_allclose(float(train_reward(cfg_dpp, lyapunov_adapter(), params, obs2,
                                                  reward, info)), float(reward), rtol=1e-6)


@pytest.mark.parametrize("beta", [0.0, -1.0, math.inf, math.nan])
def test_bad_backlog_weight_is_rejected_naming_the_field(beta):
    with pytest.raises(ValueError, match="backlog_weight"):
        PPOConfig(reward_mode="longrun", gamma=0.99, backlog_weight=beta)


def test_longrun_validation():
    with pytest.raises(ValueError, match="backlog_weight: only reward_mode 'longrun'"):
        PPOConfig(reward_mode="dpp", backlog_weight=1.0)
    with pytest.raises(ValueError, match="gamma"):
        PPOConfig(reward_mode="longrun", gamma=1.0)
    with pytest.raises(ValueError, match="reward_scale"):
        PPOConfig(reward_scale=0.0)
    assert PPOConfig(reward_mode="longrun", gamma=0.99).clip is None


def test_longrun_flags_round_trip():
    ap = argparse.ArgumentParser()
    train.add_args(ap)
    args = ap.parse_args(["--out", "/x", "--gamma", "0.99", "--reward-mode", "longrun",
                          "--backlog-weight", "0.25"])
    cfg = train.config_from_args(args)
    assert (cfg.ppo.reward_mode, cfg.ppo.gamma, cfg.ppo.backlog_weight) == ("longrun", 0.99, 0.25)
    assert train.config_from_json(train.config_to_json(cfg)) == cfg
    with pytest.raises(ValueError, match="backlog_weight"):
        train.config_from_args(ap.parse_args(["--out", "/x", "--gamma", "0.99", "--reward-mode",
                                              "longrun", "--backlog-weight", "-1"]))


@pytest.mark.slow  # two small trainings compiled (30-80 s on 2 shared cores)
def test_train_on_a_batch_of_scenarios_equals_one_at_a_time():
    """`make_train_on` with the scenario as data, vmapped over two V, gives each V's metrics of
    `make_train` with that scenario built in (the long-run reward reads V: beta = 1 / V)."""
    import dataclasses

    from agents import ppo
    from agents.train import build_env_params
    from tests.agents.small import CFG

    pcfg = dataclasses.replace(CFG.ppo, num_updates=2, gamma=0.99, reward_mode="longrun")
    cfg = dataclasses.replace(CFG, ppo=pcfg, num_seeds=1)
    env, params = lyapunov_adapter(), build_env_params(cfg)
    batched = ppo.make_train_on(pcfg, env, params, cfg.action, cfg.net)
    Vs = jnp.asarray([1.0, 30.0], jnp.float32)
    key = jax.random.key(5)

    def fit(V):
        return batched(key, params.replace(slot=params.slot.replace(V=V)))[1]

    both = jax.jit(jax.vmap(fit))(Vs)
    for i, V in enumerate((1.0, 30.0)):
        p_v = params.replace(slot=params.slot.replace(V=jnp.float32(V)))
        _, one = jax.jit(ppo.make_train(pcfg, env, p_v, cfg.action, cfg.net))(key)
        for k in ("train_reward", "backlog", "loss_value"):
            np.testing.assert_allclose(np.asarray(both[k][i]), np.asarray(one[k]), rtol=2e-3,
                                       atol=1e-5, err_msg=k)
    # the two V are two objectives: their long-run rewards differ
    assert not np.allclose(np.asarray(both["train_reward"][0]), np.asarray(both["train_reward"][1]))
