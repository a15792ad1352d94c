"""Evaluation harness: seeds run one after another give each seed the same trajectory as a
run of that seed alone (common random numbers do not depend on which seeds run together), and
every policy sees the same arrival path for a given seed."""

from __future__ import annotations

import pytest

from agents.evaluate import run_policy
from lyapunov.policies import get_policy
from tests.agents.small import SCENARIO


@pytest.mark.extended
def test_seed_rows_do_not_depend_on_the_batch():
    params = SCENARIO.build()
    keys = ("dpp_mean", "backlog_mean", "latency_mean_s", "arrivals_mean")
    rows = {}
    # (a causal planner: the oracle's rollout compiles for minutes and adds nothing here)
    for name in ("best-cut", "cloud-only"):
        pol = get_policy(name)
        both = run_policy(pol, params, 24, [0, 3])
        assert [r["seed"] for r in both] == [0, 3]
        if name == "best-cut":  # (one more rollout program per policy checked)
            alone = run_policy(pol, params, 24, [3])
            for k in keys:
                assert both[1][k] == alone[0][k], (name, k)
        assert both[0]["arrivals_mean"] != both[1]["arrivals_mean"]  # seeds differ
        assert both[0]["decision_time_s"] > 0
        rows[name] = both
    for o, c in zip(rows["best-cut"], rows["cloud-only"], strict=True):
        assert o["arrivals_mean"] == c["arrivals_mean"]  # same arrival path
