"""lyapunov.certify: the reduced LP against the reference values of tests/proofs, the i.i.d.
verdict, the exact oracle's C = 0 and its bounds, and lyapunov.testing's strategies."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

from costmodel.cards import ModelCard
from lyapunov import certify, testing
from lyapunov import processes as proc
from lyapunov.env import Scenario

TOY = ModelCard("toy-certify", 2, 2, 2, 64, 256, 1000, "gelu", True)
IID = proc.LinkConfig(bandwidth=proc.BandwidthConfig(
    kind="markov", levels_mbps=(2.0, 10.0, 50.0), transition=((0.3, 0.4, 0.3),) * 3),
    rtt_ms=20.0)
SCENARIO = Scenario(model=TOY, prompt_tokens=32, new_tokens=8, V=10.0,
                    arrival=proc.ArrivalConfig(rate=0.5), link=IID)


def test_lp_matches_the_proofs_reference_problem():
    # tests/proofs/test_bounds.py's synthetic problem: p* = 10.3/17, eps = 11/68.
    pi = np.array([0.3, 0.4, 0.3])
    mu = np.array([[0, 1, 2, 3], [0, 1.5, 3, 4.5], [0, 2, 4, 6]], float)
    p = np.array([[0, 2, 2.5, 1.5], [0, 1.5, 2, 1.2], [0, 1, 1.5, 1.0]], float)
    x = np.array([[0, 0, 0.3, 1.0], [0, 0, 0.2, 0.9], [0, 0, 0.1, 0.8]], float)
    # uniform weights over states: replicate the states 3 : 4 : 3
    rep = np.repeat(np.arange(3), (pi * 10).astype(int))
    p_star, eps, p_eps = certify.lp_bounds(p[rep], mu[rep], [x[rep]], [0.2], 2.0)
    assert p_star == pytest.approx(10.3 / 17, abs=1e-6)
    assert eps == pytest.approx(11 / 68, abs=1e-6)
    assert p_eps <= p.max()
    # beyond the capacity region: no slack
    assert certify.lp_bounds(p[rep], mu[rep], [x[rep]], [0.2], 10.0)[1] < 0


def test_blind_lp_known_values_and_never_below_the_state_dependent_lp():
    # Two equally likely states; A serves 2 in state 0 only, B in state 1 only, both at
    # penalty 1; C serves 1 in both at penalty 3. Seeing the state, A then B serve 2 at
    # penalty 1; blind, every option serves 1 on average.
    pen = np.array([[1.0, 1.0, 3.0], [1.0, 1.0, 3.0]])
    mu = np.array([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    cols = slice(0, 3)
    assert certify.lp_bounds(pen, mu, [], [], 1.5)[0] == pytest.approx(1.0)
    assert certify.blind_lp_bounds(pen, mu, [], [], 1.5, cols)[0] == math.inf
    p_b, eps_b, _ = certify.blind_lp_bounds(pen, mu, [], [], 0.5, cols)
    assert p_b == pytest.approx(1.0) and eps_b == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    for _ in range(20):
        pen, mu, x = rng.uniform(0, 2, (3, 6, 4))
        lam, bar = rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.5)
        full = certify.lp_bounds(pen, mu, [x], [bar], lam)
        blind = certify.blind_lp_bounds(pen, mu, [x], [bar], lam, slice(1, 3))
        assert blind[0] >= full[0] - 1e-9 and blind[1] <= full[1] + 1e-9


def test_iid_reasons():
    assert certify.not_iid_reasons(SCENARIO.build()) == []
    ar1 = Scenario(model=TOY, link=proc.LinkConfig(outage_prob=0.05))
    reasons = certify.not_iid_reasons(ar1.build())
    assert any("AR(1)" in r for r in reasons) and any("outage" in r for r in reasons)


@pytest.mark.slow
def test_oracle_has_zero_gap_and_its_bounds_hold():
    cert = certify.certify("oracle", SCENARIO, n_slots=200, examples=10, n_states=16)
    assert cert.iid and cert.verdict == "theorem"
    assert cert.C_max <= 1e-4 * (1 + abs(cert.penalty_mean)) + 1e-3
    assert cert.C_search_max <= 1e-2
    assert cert.penalty_ok and cert.backlog_ok
    assert cert.eps > 0 and math.isfinite(cert.backlog_bound)
    d = cert.as_dict()
    for k in ("C_mean", "C_p95", "C_max", "B", "p_star", "eps", "penalty_bound",
              "backlog_bound", "penalty_mean", "backlog_mean", "penalty_ok", "backlog_ok",
              "comparator"):
        assert k in d
    assert "clairvoyant" in d["comparator"]
    assert d["C_bayes_mean"] is None  # the oracle observes the link: no Bayes gap
    assert "theorem" in certify.report(cert).lower() or "i.i.d." in certify.report(cert)


@pytest.mark.slow
def test_bayes_gap_equals_clairvoyant_gap_on_a_known_link():
    """With a constant link the predictive law is the slot's link itself: the expected DPP is
    the DPP, dp-bayes's candidates hold the exact oracle's minimizer, so the two gaps agree
    slot by slot; dp-bayes's own gap is then 0 and dp-estimate's is not always."""
    link = proc.LinkConfig(bandwidth=proc.BandwidthConfig(kind="constant", mean_mbps=3.0),
                           rtt_ms=20.0)
    sc = Scenario(model=TOY, prompt_tokens=32, new_tokens=8, V=10.0,
                  arrival=proc.ArrivalConfig(rate=0.5), link=link)
    for name in ("dp-bayes", "cloud-only"):
        cert = certify.certify(name, sc, n_slots=40, examples=0, n_states=4)
        assert cert.gaps_bayes is not None and "bayes" in cert.comparator
        scale = 1e-4 * (1.0 + np.abs(cert.gaps).max())
        np.testing.assert_allclose(cert.gaps_bayes, cert.gaps, atol=scale)
        if name == "dp-bayes":
            assert cert.C_bayes_max <= scale
        else:
            assert cert.C_bayes_mean > 1.0  # the card is much faster on the edge
        assert cert.p_star_blind >= cert.p_star - 1e-6
        assert cert.penalty_ok_bayes is not None


@pytest.mark.slow
def test_cloud_only_gap_is_found_and_shrunk():
    # On this tiny card the edge is far faster than the cloud: cloud-only has a large gap.
    cert = certify.certify("cloud-only", SCENARIO, n_slots=100, examples=20, n_states=8,
                           bayes_draws=None)  # C_bayes: test_bayes_gap_equals_*
    assert cert.C_search_max > 1.0
    ce = cert.counterexample
    assert ce["gap"] >= 0.9 * cert.C_search_max * 0.9
    g = certify.Gap(certify._policy("cloud-only"), SCENARIO.build())
    again = certify.gap_function(g)(testing.SlotState(**{k: v for k, v in ce.items()
                                                         if k != "gap"}))[0]
    assert again == pytest.approx(ce["gap"], rel=1e-4)


@settings(max_examples=15, deadline=None)
@given(testing.scenarios())
def test_scenarios_strategy_builds_iid_scenarios(sc):
    params = sc.build()
    assert certify.not_iid_reasons(params) == []


@settings(max_examples=20, deadline=None)
@given(testing.cards(), testing.profiles("edge"), testing.links())
def test_card_profile_link_strategies_are_valid(card, prof, link):
    from costmodel.costs import request_costs
    from costmodel.partition import edge_only
    from costmodel.spec import make_spec

    spec = make_spec(card, prof, "datacenter")
    c = request_costs(edge_only(card.n_layers, card.n_heads), link, spec)
    assert float(c.latency_s) > 0


def test_lyapunov_package_does_not_import_hypothesis():
    code = ("import sys, lyapunov, lyapunov.env, lyapunov.certify, lyapunov.simulate; "
            "print('hypothesis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
