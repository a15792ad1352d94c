"""The bound constants and the statements of ``proofs/``, checked numerically.

A synthetic i.i.d. problem (no project cost model): a random state omega in {0, 1, 2} per slot
(a "link quality"), four actions with known service mu(omega, k), penalty p(omega, k) and an
accuracy-like cost x(omega, k) with budget x_bar. The optimal time-average penalty p* over
stationary randomized policies, its Lagrange multipliers and the best Slater slack are
computed exactly by linear programs (scipy.optimize.linprog). The DPP policy is simulated with
lax.scan, vmapped over V and seeds, with the project's queue functions.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from lyapunov.oracle import minimize_points
from lyapunov.queues import (
    Budgets,
    Queues,
    backlog_growth_rate,
    dpp_objective,
    is_rate_stable,
    update_queues,
)
from proofs.bounds import (
    VirtualQueueSpec,
    backlog_bound,
    drift_constant,
    penalty_bound,
    poisson_second_moment,
    service_max,
    slater_slack,
    virtual_queue_constant,
)

# --- hand-worked constants ------------------------------------------------------------


def test_drift_constant_hand_worked():
    spec = VirtualQueueSpec(x_max=5.0, budget=2.0)
    # 0.5 * max(5 - 2, 2 - 0)^2 = 4.5
    assert virtual_queue_constant(spec) == pytest.approx(4.5)
    # A budget above x_max: 0.5 * max(1 - 3, 3 - 0)^2 = 4.5; no budget: 0.
    assert virtual_queue_constant(VirtualQueueSpec(x_max=1.0, budget=3.0)) == pytest.approx(4.5)
    assert virtual_queue_constant(VirtualQueueSpec(x_max=1.0, budget=math.inf)) == 0.0
    # mu_max = tau / latency_min = 2 / 0.5 = 4.
    assert service_max(2.0, 0.5) == pytest.approx(4.0)
    # A_max = 3: B = 0.5 * (9 + 16) + 4.5 = 17.
    assert drift_constant(service_max=4.0, arrival_max=3.0, virtual=[spec]) == pytest.approx(17)
    # Poisson(2): E[A^2] = 2 + 4 = 6, B = 0.5 * (6 + 16) + 4.5 = 15.5.
    assert poisson_second_moment(2.0) == pytest.approx(6.0)
    assert drift_constant(service_max=4.0, arrival_second_moment=6.0,
                          virtual=[spec]) == pytest.approx(15.5)
    with pytest.raises(ValueError):
        drift_constant(service_max=4.0)
    with pytest.raises(ValueError):
        service_max(1.0, 0.0)


def test_performance_bounds_hand_worked():
    # (17 + 1 + 10 * (3 - 1)) / 0.5 = 76; p* + (B + C)/V = 1 + 18/10 = 2.8.
    assert backlog_bound(17.0, 1.0, 10.0, 0.5, 3.0, 1.0) == pytest.approx(76.0)
    assert penalty_bound(17.0, 1.0, 10.0, 1.0) == pytest.approx(2.8)
    # Finite horizon T = 100 with L(0) = 50: + 50/(100 * 0.5) = +1 and + 50/(10 * 100) = +0.05.
    assert backlog_bound(17.0, 1.0, 10.0, 0.5, 3.0, 1.0, initial_lyapunov=50.0,
                         horizon=100.0) == pytest.approx(77.0)
    assert penalty_bound(17.0, 1.0, 10.0, 1.0, initial_lyapunov=50.0,
                         horizon=100.0) == pytest.approx(2.85)
    # No Slater slack or V = 0: no bound.
    assert backlog_bound(17.0, 0.0, 10.0, 0.0, 3.0, 1.0) == math.inf
    assert penalty_bound(17.0, 0.0, 0.0, 1.0) == math.inf
    # Slack of a policy: min(3 - 2, 1.0 - 0.7, [inf ignored]) = 0.3.
    assert slater_slack(2.0, 3.0, [0.7, 5.0], [1.0, math.inf]) == pytest.approx(0.3)
    assert slater_slack(2.0, 1.5) == pytest.approx(-0.5)


# --- the synthetic problem ------------------------------------------------------------

PI = np.array([0.3, 0.4, 0.3])  # P(omega)
MU = np.array([[0, 1, 2, 3], [0, 1.5, 3, 4.5], [0, 2, 4, 6]], float)  # service
P = np.array([[0, 2, 2.5, 1.5], [0, 1.5, 2, 1.2], [0, 1, 1.5, 1.0]], float)  # penalty
X = np.array([[0, 0, 0.3, 1.0], [0, 0, 0.2, 0.9], [0, 0, 0.1, 0.8]], float)  # cost
LAM, X_BAR = 2.0, 0.2  # arrival rate and the cost budget: both constraints bind at p*
N_BERN = 4  # arrivals Binomial(4, LAM/4): A_max = 4
P_MAX = float(P.max())
B_AS = drift_constant(service_max=float(MU.max()), arrival_max=float(N_BERN),
                      virtual=[VirtualQueueSpec(x_max=float(X.max()), budget=X_BAR)])
# = 0.5 * (16 + 36) + 0.5 * max(1 - 0.2, 0.2)^2 = 26 + 0.32 = 26.32


def _lp_optimum(lam: float, x_bar: float):
    """p* over stationary randomized policies y[w, k] = P(omega = w, action = k).

    min sum y p  s.t.  sum y mu >= lam,  sum y x <= x_bar,  sum_k y[w, k] = PI[w],  y >= 0.
    Returns p* and the multipliers (nu_Q, nu_Z) >= 0 of the two constraints.
    """
    n_s, n_k = MU.shape
    res = linprog(P.ravel(), A_ub=np.vstack([-MU.ravel(), X.ravel()]), b_ub=[-lam, x_bar],
                  A_eq=np.kron(np.eye(n_s), np.ones(n_k)), b_eq=PI, bounds=(0, None),
                  method="highs")
    assert res.status == 0
    return res.fun, -res.ineqlin.marginals


def _lp_slater(lam: float, x_bar: float):
    """Best Slater slack: max eps s.t. sum y mu - lam >= eps, x_bar - sum y x >= eps.

    Returns (eps, p_eps, E[mu], E[x]) of the maximizing stationary policy.
    """
    n_s, n_k = MU.shape
    c = np.zeros(n_s * n_k + 1)
    c[-1] = -1.0
    a_ub = np.vstack([np.r_[-MU.ravel(), 1.0], np.r_[X.ravel(), 1.0]])
    b_ub = np.array([-lam, x_bar])
    keep = np.isfinite(b_ub)  # an infinite budget is no constraint
    a_eq = np.hstack([np.kron(np.eye(n_s), np.ones(n_k)), np.zeros((n_s, 1))])
    res = linprog(c, A_ub=a_ub[keep], b_ub=b_ub[keep], A_eq=a_eq, b_eq=PI,
                  bounds=[(0, None)] * (n_s * n_k) + [(None, None)], method="highs")
    assert res.status == 0
    y = res.x[:-1].reshape(n_s, n_k)
    return res.x[-1], float((y * P).sum()), float((y * MU).sum()), float((y * X).sum())


def _simulate(V, key, *, lam, x_bar, horizon, C=0.0, poisson=False, n_bern=N_BERN):
    """DPP policy (or the C-additive adversary) on the synthetic problem, from empty queues.

    Each slot: omega ~ PI, the action minimizes dpp_objective over the four actions (with
    C > 0: among actions within C of the minimum, the one of largest penalty), then
    A ~ Binomial(n_bern, lam/n_bern) (or Poisson(lam)) and the queues update.
    Returns per-slot float32 [T] arrays (Q(t), Z(t), p(t), x(t)) and the final Queues.
    """
    mu_t, p_t, x_t = (jnp.asarray(v, jnp.float32) for v in (MU, P, X))
    budgets = Budgets(a_bar=jnp.float32(x_bar))
    log_pi = jnp.log(jnp.asarray(PI, jnp.float32))

    def step(qs, k):
        k_w, k_a = jax.random.split(k)
        w = jax.random.categorical(k_w, log_pi)
        # E[A] stands in for A(t): the arrival term does not depend on the action.
        obj = dpp_objective(qs, V, p_t[w], lam, mu_t[w], 0.0, x_t[w], 0.0, budgets)
        allowed = obj <= obj.min() + C
        act = jnp.argmax(jnp.where(allowed, p_t[w], -jnp.inf))
        if poisson:
            arr = jax.random.poisson(k_a, lam).astype(jnp.float32)
        else:
            arr = jax.random.bernoulli(k_a, lam / n_bern, (n_bern,)).sum().astype(jnp.float32)
        nxt = update_queues(qs, arr, mu_t[w, act], 0.0, x_t[w, act], 0.0, budgets)
        return nxt, (qs.q, qs.z_a, p_t[w, act], x_t[w, act])

    final, out = jax.lax.scan(step, Queues.zeros(), jax.random.split(key, horizon))
    return out, final


VS = (2.0, 8.0, 32.0, 128.0)
SEEDS = 8
HORIZON = 40_000


def _sweep(**kw):
    """Run _simulate over VS x SEEDS (same seeds for every V); float64 NumPy outputs."""
    sim = jax.jit(jax.vmap(jax.vmap(lambda V, k: _simulate(V, k, **kw), (None, 0)), (0, None)))
    (q, z, p, x), final = sim(jnp.asarray(VS), jax.random.split(jax.random.PRNGKey(0), SEEDS))
    out = dict(q=q, z=z, p=p, x=x, q_end=final.q, z_end=final.z_a)
    return {name: np.asarray(v, np.float64) for name, v in out.items()}


@pytest.fixture(scope="module")
def exact_sweep():
    return _sweep(lam=LAM, x_bar=X_BAR, horizon=HORIZON)


def test_lp_reference_values():
    """The synthetic problem's reference numbers (both constraints bind at the optimum)."""
    p_star, (nu_q, nu_z) = _lp_optimum(LAM, X_BAR)
    assert p_star == pytest.approx(0.60588235, abs=1e-6)  # = 10.3 / 17
    assert nu_q == pytest.approx(15 / 17, abs=1e-6) and nu_z == pytest.approx(55 / 17, abs=1e-6)
    eps, p_eps, mu_eps, x_eps = _lp_slater(LAM, X_BAR)
    assert eps == pytest.approx(0.16176470, abs=1e-6)  # = 11 / 68
    # The helper's slack of the LP's Slater policy is the LP's eps.
    assert slater_slack(LAM, mu_eps, [x_eps], [X_BAR]) == pytest.approx(eps, abs=1e-9)
    assert p_eps <= P_MAX


def test_bounds_hold_for_exact_dpp_policy(exact_sweep):
    """performance.md Theorem 1 (C = 0): (a'), (b), (b'); drift.md Lemma 4 per sample path."""
    s = exact_sweep
    p_star, _ = _lp_optimum(LAM, X_BAR)
    eps, p_eps, _, _ = _lp_slater(LAM, X_BAR)
    for i, V in enumerate(VS):
        p_bar = s["p"][i].mean()
        p_se = s["p"][i].mean(axis=1).std(ddof=1) / math.sqrt(SEEDS)
        backlog = (s["q"][i] + s["z"][i]).mean()
        # (a') (1/T) sum E[p] <= p* + B/V  (L(0) = 0), up to 4 standard errors of the mean.
        assert p_bar <= penalty_bound(B_AS, 0.0, V, p_star) + 4 * p_se
        # (b) lim-sup form and (b') finite form with the policy's own average penalty.
        assert backlog <= backlog_bound(B_AS, 0.0, V, eps, P_MAX, p_star)
        assert backlog <= backlog_bound(B_AS, 0.0, V, eps, p_eps, p_bar - 4 * p_se)
        # Lemma 4 per sample path: (1/T) sum x(t) <= x_bar + (Z(T) - Z(0)) / T.
        x_avg = s["x"][i].mean(axis=1)
        assert np.all(x_avg <= X_BAR + s["z_end"][i] / HORIZON + 1e-5)


def test_penalty_gap_shrinks_like_one_over_V_and_backlog_grows_like_V(exact_sweep):
    """performance.md Corollary 2 and Remark 3: gap O(1/V), backlog O(V) ~ V (nu_Q + nu_Z).

    Long-run averages are estimated on the second half of the horizon (after the transient
    in which the queues fill to about V times the multipliers).
    """
    s = exact_sweep
    p_star, (nu_q, nu_z) = _lp_optimum(LAM, X_BAR)
    half = HORIZON // 2
    gaps, backlogs = [], []
    for i, V in enumerate(VS):
        gap = s["p"][i][:, half:].mean() - p_star
        se = s["p"][i][:, half:].mean(axis=1).std(ddof=1) / math.sqrt(SEEDS)
        assert V * gap <= B_AS + 4 * V * se  # V * gap stays bounded by B
        gaps.append(gap)
        backlogs.append((s["q"][i][:, half:] + s["z"][i][:, half:]).mean())
        # The budget is met in the long run (Lemma 4 with Z(T)/T -> 0).
        assert s["x"][i][:, half:].mean() <= X_BAR + 0.01
    # Gap strictly decreases over the V where it is well above the noise (~0.002) ...
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[0] > 0.1 and abs(gaps[3]) < 0.02
    # ... and the backlog grows with V, linearly: backlog / V -> nu_Q + nu_Z (Huang-Neely).
    assert all(b1 < b2 for b1, b2 in zip(backlogs, backlogs[1:], strict=False))
    for V, b in zip(VS[2:], backlogs[2:], strict=True):
        assert b / V == pytest.approx(nu_q + nu_z, rel=0.15)


def test_bounds_hold_for_c_additive_policy(exact_sweep):
    """performance.md Theorem 1 with C > 0: an adversary within C of the DPP minimum."""
    C = 2.0
    s = _sweep(lam=LAM, x_bar=X_BAR, horizon=HORIZON // 2, C=C)
    p_star, _ = _lp_optimum(LAM, X_BAR)
    eps, _, _, _ = _lp_slater(LAM, X_BAR)
    exact = exact_sweep
    for i, V in enumerate(VS):
        p_bar = s["p"][i].mean()
        p_se = s["p"][i].mean(axis=1).std(ddof=1) / math.sqrt(SEEDS)
        assert p_bar <= penalty_bound(B_AS, C, V, p_star) + 4 * p_se
        assert (s["q"][i] + s["z"][i]).mean() <= backlog_bound(B_AS, C, V, eps, P_MAX, p_star)
    # The adversary pays at least as much penalty as the exact minimizer at small V.
    assert s["p"][0].mean() >= exact["p"][0].mean() - 0.01


def test_second_moment_form_with_poisson_arrivals():
    """drift.md Proposition 3 (second-moment form): B with E[A^2] = lam + lam^2, unbounded A."""
    b_2 = drift_constant(service_max=float(MU.max()),
                         arrival_second_moment=poisson_second_moment(LAM),
                         virtual=[VirtualQueueSpec(x_max=float(X.max()), budget=X_BAR)])
    assert b_2 == pytest.approx(0.5 * (6.0 + 36.0) + 0.32)  # = 21.32
    s = _sweep(lam=LAM, x_bar=X_BAR, horizon=HORIZON // 2, poisson=True)
    p_star, _ = _lp_optimum(LAM, X_BAR)
    eps, _, _, _ = _lp_slater(LAM, X_BAR)
    for i, V in enumerate(VS):
        p_se = s["p"][i].mean(axis=1).std(ddof=1) / math.sqrt(SEEDS)
        assert s["p"][i].mean() <= penalty_bound(b_2, 0.0, V, p_star) + 4 * p_se
        assert (s["q"][i] + s["z"][i]).mean() <= backlog_bound(b_2, 0.0, V, eps, P_MAX, p_star)


def test_outside_capacity_region_backlog_grows_linearly():
    """performance.md Remark 5: lam > max E[mu] gives Q(t)/t -> lam - E[max_k mu(omega, k)]."""
    cap = float((PI * MU.max(axis=1)).sum())  # 0.3*3 + 0.4*4.5 + 0.3*6 = 4.5
    lam = 5.0
    eps, _, _, _ = _lp_slater(lam, math.inf)
    assert eps == pytest.approx(cap - lam)  # no Slater policy: eps = -0.5
    assert backlog_bound(B_AS, 0.0, 8.0, eps, P_MAX, 0.0) == math.inf
    # One run vmapped over (lam = 5: outside, lam = 2: inside) x 4 seeds, no budget.
    sim = jax.jit(jax.vmap(jax.vmap(
        lambda lam_, k: _simulate(8.0, k, lam=lam_, x_bar=math.inf, horizon=10_000,
                                  n_bern=8)[0][0], (None, 0)), (0, None)))
    q_out, q_in = sim(jnp.asarray([lam, LAM]), jax.random.split(jax.random.PRNGKey(1), 4))
    rate = np.asarray(backlog_growth_rate(q_out))
    np.testing.assert_allclose(rate, lam - cap, atol=0.05)
    assert not np.any(np.asarray(is_rate_stable(q_out, lam)))
    # Inside the region (lam = 2, same budget-free problem) the verdict is "stable".
    assert np.all(np.asarray(is_rate_stable(q_in, LAM)))


# --- oracle.md: the lemmas, checked on the oracle's own sweep ---------------------------------
# `lyapunov.oracle.minimize_points` runs the very state machine of `solve_slot` (hull search,
# branch and bound, multiplier bisection, certificate) with an argmin over an explicit point
# set as its linear oracle. Points sit on a grid (latency 0.1 .. 10 s, cost 0 .. 5) so that
# every hull slope lies inside the sweep's lambda range (docstring of lyapunov.oracle).

MAX_POINTS = 14
grid_points = st.lists(st.tuples(st.integers(1, 100), st.integers(0, 50), st.integers(0, 40)),
                       min_size=1, max_size=MAX_POINTS)


def _columns(pts):
    """(lat, cost, mem) of the points, the last repeated up to MAX_POINTS: the
    same set (a repeated point changes no minimum, hull or count of distinct points, and the
    linear oracle's argmin returns a point's first index), and one shape, so one compile of
    `minimize_points` for every example."""
    pts = list(pts) + [pts[-1]] * (MAX_POINTS - len(pts))
    lat, cost, mem = (np.array(col, np.float64) / 10.0 for col in zip(*pts, strict=True))
    return lat, cost, mem


@settings(max_examples=40, deadline=None)
@given(grid_points, st.floats(0.0, 5.0), st.floats(0.0, 50.0), st.floats(0.1, 2.0))
def test_concave_objective_minimized_at_swept_hull_vertex(pts, V, Q, tau):
    """oracle.md Lemma 1 and Proposition 2: the minimum of V l - Q tau / l + c over a finite set
    is attained at a lower-left hull vertex, and the oracle's sweep finds it (and says so) with
    at most 2 n + 1 calls of its linear oracle for n >= 2 distinct points."""
    lat, cost, _ = _columns(pts)
    f = V * lat - Q * tau / lat + cost
    sol = minimize_points(lat, cost, np.zeros_like(lat), V, Q * tau, 1.0)
    assert bool(sol.feasible) and bool(sol.exact)
    tol = 1e-5 * (np.abs(f).max() + V * lat.max() + Q * tau / lat.min() + 1.0)
    assert float(sol.objective) == pytest.approx(f.min(), abs=tol)
    v = int(sol.index)
    assert f[v] == pytest.approx(f.min(), abs=tol)
    # The point returned minimizes lam * l + c for some lam >= 0 (a supported hull vertex).
    lo = max([(cost[v] - cost[u]) / (lat[u] - lat[v]) for u in range(len(pts))
              if lat[u] > lat[v]], default=0.0)
    hi = min([(cost[u] - cost[v]) / (lat[v] - lat[u]) for u in range(len(pts))
              if lat[u] < lat[v]], default=math.inf)
    assert max(lo, 0.0) <= hi + 1e-9 * (1.0 + abs(hi))
    assert all(cost[v] <= cost[u] for u in range(len(pts)) if lat[u] == lat[v])
    # Calls: 2 for the scales, 2 for the ends of the lambda range, then at most one per
    # interval of the stack, and an interval splits only at a new vertex: at most 2n - 3 for
    # n >= 2 distinct points (none for one).
    n = len({(a, b) for a, b, _ in pts})
    assert int(sol.n_solves) <= max(2 * n + 1, 4)


@settings(max_examples=40, deadline=None)
@given(grid_points, st.floats(0.0, 5.0), st.floats(0.0, 50.0))
def test_optimum_is_supported_at_a_slope_in_the_narrow_range(pts, a, b):
    """oracle.md Proposition 7: the minimizer of a l - b / l + c over a finite set minimizes
    lam l + c at lam = a + b / l*^2, which lies in [a, a + b / l_min^2]; and the oracle, which
    sweeps only that range (widened by 1e-4), still finds the minimum."""
    lat, cost, _ = _columns(pts)
    f = a * lat - b / lat + cost
    v = int(np.argmin(f))
    lam = a + b / lat[v] ** 2
    assert a <= lam <= a + b / lat.min() ** 2
    lin = lam * lat + cost
    assert lin[v] <= lin.min() + 1e-9 * (1.0 + np.abs(lin).max())
    sol = minimize_points(lat, cost, np.zeros_like(lat), a, b, 1.0)
    tol = 1e-5 * (np.abs(f).max() + a * lat.max() + b / lat.min() + 1.0)
    assert bool(sol.exact) and float(sol.objective) == pytest.approx(f.min(), abs=tol)


def test_memory_relaxation_duality_gap_hand_worked():
    """oracle.md Proposition 3: the multiplier bound is valid but can leave a gap.

    Three partitions, all of latency 1 with V = 1, Q = 0 (so F = 1 + c), memory budget M = 1:
    (c, m) = (0, 2), (2, 0), (1.5, 1): F = 1, 3, 2.5. The constrained optimum is 2.5 (the
    third). d(eta) = min(1 + eta, 3 - eta, 2.5) peaks at eta = 1 with d = 2: gap 0.5. The third
    point minimizes F + eta m for no eta, so the Lagrangian sweep alone (no resource DP, which
    needs the DP's structure) returns the second, and the oracle reports the gap, not exactness.
    """
    lat, cost, mem = _columns([(10, 0, 20), (10, 20, 0), (10, 15, 10)])
    f = lat + cost
    primal = f[mem <= 1.0].min()
    etas = np.linspace(0.0, 3.0, 301)
    dual = np.array([(f + eta * (mem - 1.0)).min() for eta in etas])
    assert primal == pytest.approx(2.5)
    assert dual.max() == pytest.approx(2.0) and etas[dual.argmax()] == pytest.approx(1.0)
    sol = minimize_points(lat, cost, mem, 1.0, 0.0, 1.0)
    assert bool(sol.feasible) and not bool(sol.exact)
    assert int(sol.index) == 1 and float(sol.objective) == pytest.approx(3.0)
    assert 1.99 <= float(sol.lower_bound) <= 2.0 + 1e-5


# Budgets from 0.1: the multiplier's range is scaled by objective / budget, and a zero budget
# (never a device's: profiles require mem_budget_gb > 0) with a zero objective scale (V = Q = 0)
# leaves it too narrow to reach the fitting point.
# V from 0: with V = Q = 0 the objective scale the multiplier's range is first built from can
# be 0; the sweep then grows the range until the memory-first minimizer fits.
@settings(max_examples=100, deadline=None)
@given(grid_points, st.floats(0.0, 5.0), st.floats(0.0, 50.0), st.floats(0.1, 4.0))
def test_memory_relaxation_is_a_sweep_and_a_lower_bound(pts, V, Q, budget):
    """oracle.md Proposition 3: with a memory budget the oracle's sweeps over F + eta (m - M)
    (c' = c + eta m is again additive) return a feasible point and a dual bound that
    lower-bounds the constrained minimum; where it claims exactness it is the minimum."""
    lat, cost, mem = _columns(pts)
    f = V * lat - Q / lat + cost
    sol = minimize_points(lat, cost, mem, V, Q, budget)
    feasible = mem <= budget * (1 - 1e-6)
    if not (mem <= budget).any():
        assert not bool(sol.feasible)
        return
    if not feasible.any():
        return  # a point on the budget's edge: float32 may count it either way
    best = f[mem <= budget].min()
    tol = 1e-5 * (np.abs(f).max() + V * lat.max() + Q / lat.min() + 1.0)
    v = int(sol.index)
    assert bool(sol.feasible) and mem[v] <= budget * (1 + 1e-6)
    assert float(sol.objective) == pytest.approx(f[v], abs=tol)
    assert float(sol.objective) >= best - tol
    assert float(sol.lower_bound) <= best + tol
    if bool(sol.exact):
        assert float(sol.objective) == pytest.approx(best, abs=tol)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=7), st.data(),
       st.floats(0.0, 3.0), st.floats(0.0, 3.0))
def test_head_exchange_least_important_to_lossy_side(w, data, a_edge, a_cloud):
    """oracle.md Proposition 4: with k heads on the edge, per-head accuracy cost w_h * a_side,
    the k least important heads go to the edge when a_edge >= a_cloud (else the H - k least
    important go to the cloud); the optimum is a sorted prefix sum."""
    w = np.array(w)
    k = data.draw(st.integers(0, len(w)))
    brute = min(a_edge * w[list(s)].sum() + a_cloud * (w.sum() - w[list(s)].sum())
                for s in itertools.combinations(range(len(w)), k))
    srt = np.sort(w)
    if a_edge >= a_cloud:
        edge_sum = srt[:k].sum()  # the k least important on the edge
    else:
        edge_sum = w.sum() - srt[:len(w) - k].sum()  # the H - k least important on the cloud
    assert a_edge * edge_sum + a_cloud * (w.sum() - edge_sum) == pytest.approx(brute, abs=1e-9)


# --- the proofs cite tests that exist ---------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_every_cited_test_exists():
    """Each `tests/...py::name` cited in proofs/*.md names a test function of that file
    (a cited file that is not in the tree yet is skipped, e.g. another package's tests)."""
    cited, missing_files = set(), set()
    for md in sorted((ROOT / "proofs").glob("*.md")):
        for m in re.finditer(r"`(tests/[\w/]+\.py)::(\w+)`((?:,\s*`::\w+`)*)", md.read_text()):
            cited.add((m.group(1), m.group(2)))
            cited.update((m.group(1), n) for n in re.findall(r"`::(\w+)`", m.group(3)))
    assert len(cited) >= 20
    for path, name in sorted(cited):
        f = ROOT / path
        if not f.exists():
            missing_files.add(path)
            continue
        assert re.search(rf"^def {name}\(", f.read_text(), re.M), f"{path}::{name} not found"
    if missing_files:
        pytest.skip(f"cited files not in the tree yet: {sorted(missing_files)}")
