"""Evaluation harness: seeds run one after another give each seed the same trajectory as a
run of that seed alone (common random numbers do not depend on which seeds run together), and
the oracle is never worse than a fixed baseline on the same paths."""

from __future__ import annotations

import jax

from agents.evaluate import run_policy
from lyapunov.policies import get_policy
from tests.agents.test_train import SCENARIO


def test_seed_rows_do_not_depend_on_the_batch():
    params = SCENARIO.build()
    keys = ("dpp_mean", "backlog_mean", "latency_mean_s", "arrivals_mean")
    for name in ("oracle", "cloud-only"):
        pol = get_policy(name)
        both = run_policy(pol, params, 24, [0, 3])
        alone = run_policy(pol, params, 24, [3])
        assert [r["seed"] for r in both] == [0, 3]
        for k in keys:
            assert both[1][k] == alone[0][k], (name, k)
        assert both[0]["arrivals_mean"] != both[1]["arrivals_mean"] or \
            both[0]["dpp_mean"] != both[1]["dpp_mean"]
        assert both[0]["decision_time_s"] > 0
    oracle = run_policy(get_policy("oracle"), params, 24, [0, 3])
    cloud = run_policy(get_policy("cloud-only"), params, 24, [0, 3])
    for o, c in zip(oracle, cloud, strict=True):
        assert o["arrivals_mean"] == c["arrivals_mean"]  # same arrival path
    jax.clear_caches()
