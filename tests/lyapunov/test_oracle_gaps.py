"""The oracle's per-decision gaps over a run (lyapunov.oracle_gaps): the run is simulate's, the
gaps are the decisions' own, and the check certifies those a coarse oracle leaves open."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lyapunov import registry
from lyapunov.oracle_gaps import FIELDS, oracle_gaps, summary
from lyapunov.simulate import simulate
from tests.lyapunov.test_env import SC

# The 2 x 3 card with the edge's budget at half its edge-only memory (0.89 MB): memory binds,
# and the oracle at 2 units (the coarsest resolution) certifies loose gaps.
TIGHT = dataclasses.replace(SC, mem_budget_gb=0.00045)
COARSE = {"units": 2}


@pytest.mark.slow
def test_the_run_is_simulates_and_the_check_certifies_what_the_decision_does_not():
    params = TIGHT.build()
    assert params.memory_can_bind
    n = 24
    rows = oracle_gaps(params, n, seed=3, solver_kw=COARSE)
    assert [r["slot"] for r in rows] == list(range(n)) and all(set(r) == set(FIELDS)
                                                                  for r in rows)
    # the same run as simulate's oracle with the same solver keywords: the same backlog path
    sim = simulate(registry.resolve("oracle", **COARSE)[0], params, n, 3,
                   return_trajectory=True)
    np.testing.assert_allclose([r["backlog"] for r in rows], sim["trajectory"].backlog,
                               rtol=1e-6)
    feas = [r for r in rows if r["feasible"]]
    assert len(feas) >= n // 2
    for r in feas:
        assert r["gap"] == pytest.approx((r["objective"] - r["lower_bound"])
                                         / abs(r["objective"]), rel=1e-4, abs=1e-6)
        if r["checked"]:  # only where the decision's own gap is above the target
            assert r["gap"] > 1e-3
            assert r["certified"] == (r["checked_gap"] <= 1e-3)
            assert r["checked_gap"] <= r["gap"] + 1e-6
        else:
            assert r["certified"] == (r["gap"] <= 1e-3)
    s = summary(rows)
    assert s["checked"] >= 1 and s["certified"] > s["own_within"]  # the check certified more
    assert s["decisions"] == n and s["feasible"] == len(feas)


@pytest.mark.slow
def test_a_check_that_cannot_close_the_gap_leaves_the_decision_uncertified():
    """With the check held to its coarse relaxed lines (2 units, 2 slopes, no exact line) some
    decisions stay above the target: ``certified`` follows the checked gap, never the mere
    fact of a check."""
    params = TIGHT.build()
    weak = {"units": 2, "n_slopes": 2, "max_lines": 0}
    rows = oracle_gaps(params, 12, seed=3, solver_kw=COARSE, check_kw=weak)
    checked = [r for r in rows if r["checked"]]
    assert checked
    for r in checked:
        assert r["certified"] == (r["checked_gap"] <= 1e-3)
    assert any(not r["certified"] for r in checked)
    assert summary(rows)["certified"] < len(rows)
