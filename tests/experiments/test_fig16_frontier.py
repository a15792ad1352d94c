"""Figure 16 (far-sighted learners against the DPP frontier): the frontier and dominance test
on constructed points, the summary's verdicts, and the figure end to end at tiny size."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from experiments import fig16_frontier as fig16
from experiments.catalog import catalog, identity_progress
from experiments.tables import read_config, read_rows

# DPP points (backlog, half-width, penalty, half-width) on p = 4 / b, and one dominated point
DPP = [(1.0, 0.1, 4.0, 0.2), (2.0, 0.1, 2.0, 0.2), (4.0, 0.1, 1.0, 0.1), (8.0, 0.2, 0.5, 0.05),
       (3.0, 0.1, 3.0, 0.1)]


def test_frontier_is_the_pareto_set_and_interpolates_in_log_log():
    fb, fp = fig16.frontier([d[0] for d in DPP], [d[2] for d in DPP])
    np.testing.assert_allclose(fb, [1, 2, 4, 8])  # (3, 3) is dominated by (2, 2)
    np.testing.assert_allclose(fp, [4, 2, 1, 0.5])
    # p = 4 / b is a line in log-log axes: the interpolation is exact between the points
    assert math.isclose(fig16.frontier_value(fb, fp, 3.0), 4.0 / 3.0, rel_tol=1e-9)
    assert math.isclose(fig16.frontier_value(fb, fp, 8.0), 0.5)
    # undefined outside the swept backlogs
    assert math.isnan(fig16.frontier_value(fb, fp, 0.5))
    assert math.isnan(fig16.frontier_value(fb, fp, 20.0))


def test_classify_flags_a_point_below_the_frontier_and_not_one_above():
    # below: F_lo(3.1) interpolates (1.9, 1.8) and (3.9, 0.9) in log-log: 1.8 (3.1 / 1.9)
    # ^ (ln 0.5 / ln(3.9 / 1.9)) = 1.12 > 0.5 + 0.1
    below = fig16.classify((3.0, 0.1, 0.5, 0.1), DPP)
    assert below["verdict"] == "beyond"
    assert math.isclose(below["frontier_lo"], 1.8 * (3.1 / 1.9) ** (math.log(0.5)
                                                                   / math.log(3.9 / 1.9)))
    assert math.isclose(below["margin"], below["frontier_lo"] - 0.6)
    assert math.isclose(below["margin_mean"], 4.0 / 3.0 - 0.5, rel_tol=1e-9)
    # above: p - hp = 1.9 > F_hi(2.9), between (2.1, 2.2) and (4.1, 1.1): 1.57
    above = fig16.classify((3.0, 0.1, 2.0, 0.1), DPP)
    assert above["verdict"] == "dominated" and above["margin"] < 0
    # on the frontier with a wide CI: neither
    assert fig16.classify((3.0, 0.5, 4.0 / 3.0, 0.5), DPP)["verdict"] == "inconclusive"
    # the backlog's CI counts: the low penalty at a backlog that may be 7 is not beyond
    # (F_lo(7) = 0.9 * 3.9 / 7 = 0.50 < 0.6 + 0.05)
    assert fig16.classify((3.0, 4.0, 0.6, 0.05), DPP)["verdict"] == "inconclusive"
    assert fig16.classify((3.0, 0.1, 0.6, 0.05), DPP)["verdict"] == "beyond"
    # a backlog no swept V reaches: nothing to compare with (nor a free, growing queue's)
    assert fig16.classify((0.5, 0.1, 10.0, 1.0), DPP)["verdict"] == "outside"
    assert fig16.classify((20.0, 1.0, 0.0, 0.0), DPP)["verdict"] == "outside"


def test_summary_verdicts_and_the_verdict_line():
    rows = []
    for s in range(3):
        for b, _, p, _ in DPP[:4]:
            rows.append({"policy": "oracle", "param": "V", "value": 1.0 / b, "persistence": 0.9,
                         "seed": s, "penalty_mean": p + 0.01 * s, "backlog_mean": b + 0.01 * s,
                         "growth": 0.01 * s, "infeasible_frac": 0.0})
        rows.append({"policy": "hier-longrun", "param": "beta", "value": 1.0,
                     "persistence": 0.9, "seed": s, "penalty_mean": 0.3 + 0.01 * s,
                     "backlog_mean": 3.0 + 0.01 * s, "growth": 0.0, "infeasible_frac": 0.0})
        rows.append({"policy": "hier-dpp", "param": "V", "value": 1.0, "persistence": 0.9,
                     "seed": s, "penalty_mean": 3.0 + 0.01 * s, "backlog_mean": 3.0,
                     "growth": 0.0, "infeasible_frac": 0.0})
        # free and unstable: the queue grows 0.3 a slot, faster than any DPP point's (<= 0.02)
        rows.append({"policy": "hier-longrun", "param": "beta", "value": 0.1,
                     "persistence": 0.9, "seed": s, "penalty_mean": 0.0, "backlog_mean": 5.0,
                     "growth": 0.3 + 0.01 * s, "infeasible_frac": 0.0})
    summ = {(r["policy"], r["value"]): r for r in fig16.summarize(rows)
            if r["policy"] in fig16.LEARNERS}
    assert summ[("hier-longrun", 1.0)]["verdict_all"] == "beyond"
    # geometrically below the frontier too, but its queue grows: no long-run point
    assert summ[("hier-longrun", 0.1)]["verdict_all"] == "unstable"
    assert summ[("hier-dpp", 1.0)]["verdict_all"] == "dominated"
    assert "verdict_causal" not in summ[("hier-dpp", 1.0)]  # no causal controller in these rows
    # paired over seeds: the same answers, with the seeds' common spread cancelled
    assert summ[("hier-longrun", 1.0)]["paired_verdict_all"] == "beyond"
    assert summ[("hier-dpp", 1.0)]["paired_verdict_all"] == "dominated"
    assert summ[("hier-longrun", 0.1)]["paired_verdict_all"] == "unstable"
    line = fig16.verdict_line(fig16.summarize(rows))
    assert "hier-longrun beta=1 (rho 0.9) of 3" in line and "unstable 1" in line


def test_registered_in_the_catalog():
    assert catalog()[fig16.NAME].number == 16


@pytest.mark.slow  # compiles the oracle, a PPO learner and its evaluation (about a minute)
def test_frontier_end_to_end(tmp_path):
    cfg = dataclasses.replace(fig16.QUICK, Vs=(0.1, 30.0), policies=("oracle", "dp-estimate"),
                              betas=(1.0,), learner_Vs=(), train_steps=256, num_envs=4,
                              num_steps=16, episode_slots=64, hidden=16, n_slots=120, seeds=3)
    fig16.run(cfg, tmp_path, identity_progress)
    pngs = fig16.plot(tmp_path)
    assert pngs and all(p.exists() and p.stat().st_size > 0 for p in pngs)
    rows = read_rows(tmp_path / "frontier.csv")
    assert len(rows) == (2 * 2 + 1) * 3  # (policies x V + one learner) x seeds
    assert all(r["penalty_mean"] >= 0 and r["backlog_mean"] >= 0 for r in rows)
    summ = read_rows(tmp_path / "frontier_summary.csv")
    pen = {r["value"]: r["penalty"] for r in summ if r["policy"] == "oracle"}
    blg = {r["value"]: r["backlog"] for r in summ if r["policy"] == "oracle"}
    # the O(1/V) / O(V) trade-off: more V, less penalty and more backlog
    assert pen[30.0] < 0.5 * pen[0.1] and blg[30.0] > blg[0.1]
    (learner,) = [r for r in summ if r["policy"] == "hier-longrun"]
    assert learner["verdict_all"] in fig16.VERDICTS and learner["n"] == 3
    assert "beyond the DPP frontier" in read_config(tmp_path)["verdict"]


def test_frontier_claim_pending_then_measured(tmp_path):
    from experiments.claims import frontier_claim
    from experiments.tables import write_rows

    assert frontier_claim(tmp_path)["verdict"] == "pending"
    rows = []
    for s in range(3):
        for b, _, p, _ in DPP[:4]:
            for pol in ("oracle", "dp-estimate"):
                rows.append({"policy": pol, "param": "V", "value": 1.0 / b, "persistence": 0.9,
                             "seed": s, "penalty_mean": p + 0.01 * s,
                             "backlog_mean": b + 0.01 * s, "growth": 0.0,
                             "infeasible_frac": 0.0})
        rows.append({"policy": "hier-dpp", "param": "V", "value": 1.0, "persistence": 0.9,
                     "seed": s, "penalty_mean": 3.0 + 0.01 * s, "backlog_mean": 3.0,
                     "growth": 0.0, "infeasible_frac": 0.0})
    write_rows(tmp_path / "frontier" / "frontier_summary.csv", fig16.summarize(rows))
    c = frontier_claim(tmp_path)
    assert c["verdict"] == "not reproduced"  # the only learner point is dominated
    assert c["measured"]["persistence 0.9"]["beyond"] == 0
    assert "dominated 1 of 1" in c["measured"]["persistence 0.9"]["text"]
    # a learner well below the frontier makes it hold
    rows += [{"policy": "hier-longrun", "param": "beta", "value": 1.0, "persistence": 0.9,
              "seed": s, "penalty_mean": 0.3 + 0.01 * s, "backlog_mean": 3.0, "growth": 0.0,
              "infeasible_frac": 0.0} for s in range(3)]
    write_rows(tmp_path / "frontier" / "frontier_summary.csv", fig16.summarize(rows))
    c = frontier_claim(tmp_path)
    assert c["verdict"] == "reproduced" and c["measured"]["persistence 0.9"]["beyond"] == 1
    assert c["measured"]["persistence 0.9"]["margin"] > 0


def test_paired_margin_resolves_what_the_spread_over_seeds_hides():
    """Seeds that scale every policy's backlog alike (common random numbers): the unpaired
    CIs overlap, the per-seed margin does not. The learner serves as fast as the smallest V
    (the same backlog on every seed) and pays 4.5 against the frontier's 4 there: margin
    -0.5 on every seed."""
    rows = []
    for s in range(4):
        for b, _, p, _ in DPP[:4]:
            rows.append({"policy": "oracle", "param": "V", "value": 1.0 / b, "persistence": 0.0,
                         "seed": s, "penalty_mean": p, "backlog_mean": b * (1 + s),
                         "growth": 0.0, "infeasible_frac": 0.0})
        rows.append({"policy": "hier-dpp", "param": "V", "value": 0.1, "persistence": 0.0,
                     "seed": s, "penalty_mean": 4.5, "backlog_mean": 1.0 * (1 + s) * 1.001,
                     "growth": 0.0, "infeasible_frac": 0.0})
    (r,) = [x for x in fig16.summarize(rows) if x["policy"] == "hier-dpp"]
    assert r["verdict_all"] == "inconclusive"  # the backlog's CI spans the whole frontier
    assert r["paired_verdict_all"] == "dominated"
    assert math.isclose(r["paired_margin_all"], -0.5, abs_tol=1e-2)
    # backlog 20 is within the frontier of seeds 2 and 3 only (backlogs up to 8 (1 + s))
    far = [{**x, "policy": "hier-longrun", "backlog_mean": 20.0} for x in rows
           if x["policy"] == "hier-dpp"]
    m, _, n = fig16.paired_margin(rows + far, far[0], ("oracle",))
    assert n == 2 and m < 0
    far = [{**x, "backlog_mean": 50.0} for x in far]  # beyond every seed's: no margin
    assert fig16.paired_margin(rows + far, far[0], ("oracle",))[2] == 0
