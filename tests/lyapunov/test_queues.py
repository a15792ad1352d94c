"""Queue updates, the Lyapunov function, the DPP objective and the one-slot drift bound.

Statements of ``proofs/drift.md`` checked here: Lemma 1 (backlog), Lemma 2 (virtual queues),
Proposition 3 (the one-slot drift-plus-penalty bound, per sample), Lemma 4 (virtual-queue
telescoping).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import poisson

from lyapunov.queues import (
    Budgets,
    Queues,
    backlog_growth_rate,
    dpp_objective,
    is_rate_stable,
    lyapunov_value,
    service_rate,
    update_queues,
)
from proofs.bounds import VirtualQueueSpec, drift_constant

INF = math.inf
QMAX = 1e3  # largest queue value drawn
A_MAX, MU_MAX = 5.0, 4.0  # per-slot arrival and service bounds used by the properties
X_MAX = (3.0, 1.0, 2.0)  # per-slot maxima of energy, accuracy, cloud cost

queue_value = st.floats(0.0, QMAX, width=32)
budget_value = st.one_of(st.just(INF), st.floats(0.0, 4.0, width=32))


def _np_update(q, z, a, mu, x, x_bar):
    """NumPy reference of the updates (float64), ``z, x, x_bar`` of length 3."""
    q1 = max(q - mu, 0.0) + a
    z1 = [0.0 if math.isinf(b) else max(zi + xi - b, 0.0)
          for zi, xi, b in zip(z, x, x_bar, strict=True)]
    return q1, z1


@st.composite
def slots(draw):
    """A random state, action outcome and budgets within the stated per-slot bounds."""
    q = draw(queue_value)
    z = [draw(queue_value) for _ in range(3)]
    a = draw(st.floats(0.0, A_MAX, width=32))
    mu = draw(st.floats(0.0, MU_MAX, width=32))
    x = [draw(st.floats(0.0, m, width=32)) for m in X_MAX]
    x_bar = [draw(budget_value) for _ in range(3)]
    return q, z, a, mu, x, x_bar


def _queues(q, z):
    return Queues(q=jnp.float32(q), z_e=jnp.float32(z[0]), z_a=jnp.float32(z[1]),
                  z_c=jnp.float32(z[2]))


def _budgets(x_bar):
    return Budgets(e_bar=jnp.float32(x_bar[0]), a_bar=jnp.float32(x_bar[1]),
                   c_bar=jnp.float32(x_bar[2]))


_update = jax.jit(update_queues)


# --- hand-worked cases -------------------------------------------------------------------


def test_update_hand_worked():
    qs = Queues(q=jnp.float32(5.0), z_e=jnp.float32(2.0), z_a=jnp.float32(0.2),
                z_c=jnp.float32(7.0))
    b = Budgets(e_bar=jnp.float32(1.0), a_bar=jnp.float32(0.5), c_bar=jnp.float32(INF))
    out = update_queues(qs, arrivals=3.0, service=2.0, energy=1.5, accuracy=0.0,
                        cloud_cost=9.0, budgets=b)
    assert float(out.q) == pytest.approx(6.0)  # max(5 - 2, 0) + 3 = 6
    assert float(out.z_e) == pytest.approx(2.5)  # max(2 + 1.5 - 1, 0) = 2.5
    assert float(out.z_a) == pytest.approx(0.0)  # max(0.2 + 0 - 0.5, 0) = 0
    assert float(out.z_c) == 0.0  # no budget: held at 0 whatever Z_C and c were
    # Service beyond the backlog is wasted: max(1 - 2.5, 0) + 0.5 = 0.5.
    out = update_queues(qs.replace(q=jnp.float32(1.0)), 0.5, 2.5, 0.0, 0.0, 0.0, b)
    assert float(out.q) == pytest.approx(0.5)


def test_lyapunov_value_hand_worked():
    qs = Queues(q=jnp.float32(3.0), z_e=jnp.float32(4.0), z_a=jnp.float32(1.0),
                z_c=jnp.float32(2.0))
    assert float(lyapunov_value(qs)) == pytest.approx(15.0)  # (9 + 16 + 1 + 4) / 2


def test_dpp_objective_hand_worked():
    qs = Queues(q=jnp.float32(4.0), z_e=jnp.float32(1.0), z_a=jnp.float32(0.0),
                z_c=jnp.float32(0.0))
    b = Budgets(e_bar=jnp.float32(1.5), a_bar=jnp.float32(0.3), c_bar=jnp.float32(INF))
    got = dpp_objective(qs, V=2.0, penalty=0.5, arrivals=3.0, service=2.0, energy=2.0,
                        accuracy=0.9, cloud_cost=5.0, budgets=b)
    # 2*0.5 + 4*(3 - 2) + 1*(2 - 1.5) + 0*(0.9 - 0.3) + [no budget] = 1 + 4 + 0.5 = 5.5
    assert float(got) == pytest.approx(5.5)
    # Z_A = 2 now counts: 5.5 + 2*(0.9 - 0.3) = 6.7
    got = dpp_objective(qs.replace(z_a=jnp.float32(2.0)), 2.0, 0.5, 3.0, 2.0, 2.0, 0.9, 5.0, b)
    assert float(got) == pytest.approx(6.7)


def test_service_rate_hand_worked():
    mu = service_rate(jnp.array([0.25, 2.0, INF]), tau=1.0)
    np.testing.assert_allclose(np.asarray(mu), [4.0, 0.5, 0.0])  # 1/0.25, 1/2, nothing


def test_infinite_budget_and_costs_make_no_nan():
    """An inactive budget with infinite cost, and weight 0 times an infinite cost, give 0."""
    qs = Queues.zeros()
    b = Budgets()  # all budgets +inf
    out = update_queues(qs, 1.0, 0.0, INF, INF, INF, b)
    assert [float(v) for v in (out.q, out.z_e, out.z_a, out.z_c)] == [1.0, 0.0, 0.0, 0.0]
    obj = dpp_objective(qs, 0.0, INF, 1.0, service_rate(INF, 1.0), INF, INF, INF, b)
    assert float(obj) == 0.0
    # An active budget with positive Z scores an infinite cost as +inf (masked by callers).
    obj = dpp_objective(qs.replace(z_e=jnp.float32(1.0)), 1.0, 1.0, 0.0, 0.0, INF, 0.0, 0.0,
                        Budgets(e_bar=jnp.float32(1.0)))
    assert float(obj) == INF


# --- properties of the updates (drift.md, Lemmas 1-2) ------------------------------------


@settings(max_examples=300, deadline=None)
@given(slots())
def test_update_properties_and_max_identities(s):
    q, z, a, mu, x, x_bar = s
    out = _update(_queues(q, z), a, mu, x[0], x[1], x[2], _budgets(x_bar))
    q1 = float(out.q)
    z1 = [float(out.z_e), float(out.z_a), float(out.z_c)]
    tol = 1e-6 * (1.0 + q + a + mu)
    # Matches the float64 reference.
    rq, rz = _np_update(q, z, a, mu, x, x_bar)
    assert q1 == pytest.approx(rq, rel=1e-6, abs=tol)
    for got, ref in zip(z1, rz, strict=True):
        assert got == pytest.approx(ref, rel=1e-6, abs=1e-6 * (1 + QMAX))
    # Non-negativity and Q(t+1) >= A(t).
    assert q1 >= 0.0 and all(v >= 0.0 for v in z1)
    assert q1 >= a - tol
    # max(.,0) identities: Q(t+1) = Q - min(Q, mu) + A  and  Q(t+1) >= Q - mu + A.
    assert q1 == pytest.approx(q - min(q, mu) + a, abs=tol)
    assert q1 >= q - mu + a - tol
    # Z(t+1) >= Z + x - x_bar, with equality when Z + x >= x_bar (active budgets).
    for zi, xi, bi, z1i in zip(z, x, x_bar, z1, strict=True):
        if math.isinf(bi):
            assert z1i == 0.0
            continue
        assert z1i >= zi + xi - bi - 1e-6 * (1 + QMAX)
        if zi + xi >= bi:
            assert z1i == pytest.approx(zi + xi - bi, abs=1e-6 * (1 + QMAX))


@settings(max_examples=300, deadline=None)
@given(slots(), st.floats(0.0, 100.0, width=32), st.floats(0.0, 10.0, width=32))
def test_one_slot_drift_plus_penalty_bound(s, V, p):
    """drift.md Proposition 3, per sample: L(t+1) - L(t) + V p <= B + DPP(t)."""
    q, z, a, mu, x, x_bar = s
    qs, b = _queues(q, z), _budgets(x_bar)
    out = _update(qs, a, mu, x[0], x[1], x[2], b)
    B = drift_constant(service_max=MU_MAX, arrival_max=A_MAX, virtual=[
        VirtualQueueSpec(x_max=m, budget=bi) for m, bi in zip(X_MAX, x_bar, strict=True)])
    # Z of an inactive budget is held at 0 by the update, so the bound is stated for Z = 0.
    z0 = [0.0 if math.isinf(bi) else zi for zi, bi in zip(z, x_bar, strict=True)]
    qs0 = _queues(q, z0)
    lhs = float(lyapunov_value(out)) - float(lyapunov_value(qs0)) + V * p
    rhs = B + float(dpp_objective(qs0, V, p, a, mu, x[0], x[1], x[2], b))
    # float32 rounding of values up to 1e3 squared: allow a few ulps of the largest L.
    tol = 1e-5 * (1.0 + float(lyapunov_value(qs0)) + float(lyapunov_value(out)))
    assert lhs <= rhs + tol
    # The same bound written term by term (drift.md eq. (D)), in float64.
    terms = q * (a - mu) + sum(
        0.0 if math.isinf(bi) else zi * (xi - bi) for zi, xi, bi in zip(z0, x, x_bar, strict=True))
    assert lhs - V * p <= B + terms + tol


@settings(max_examples=200, deadline=None)
@given(queue_value, queue_value, st.floats(0.0, 8.0), st.floats(0.0, MU_MAX, width=32),
       st.floats(0.0, X_MAX[0], width=32), st.floats(0.0, 4.0, width=32))
def test_drift_bound_in_expectation_poisson(q, z, lam, mu, e, e_bar):
    """drift.md Proposition 3(b): E[L(t+1) - L(t) | Theta] <= B_2 + Q (lam - mu) + Z (e - E_bar)
    with B_2 = (lam + lam^2 + mu_max^2)/2 + max(e_max - E_bar, E_bar)^2 / 2, A ~ Poisson(lam).

    The expectation is a sum over A = 0..80 weighted by the Poisson pmf (tail < 1e-30).
    """
    a = np.arange(81)
    pmf = poisson.pmf(a, lam)
    qs = Queues.zeros().replace(q=jnp.float32(q), z_e=jnp.float32(z))
    b = Budgets(e_bar=jnp.float32(e_bar))
    nxt = _update(qs, jnp.asarray(a, jnp.float32), mu, e, 0.0, 0.0, b)
    drift = float(np.sum(pmf * np.asarray(lyapunov_value(nxt), np.float64))) - 0.5 * (q * q + z * z)
    b_2 = drift_constant(service_max=MU_MAX, arrival_second_moment=lam + lam * lam,
                         virtual=[VirtualQueueSpec(x_max=X_MAX[0], budget=e_bar)])
    tol = 1e-5 * (1.0 + 0.5 * (q * q + z * z) + (q + 50.0) ** 2)
    assert drift <= b_2 + q * (lam - mu) + z * (e - e_bar) + tol


def _run(start, arrivals, service, energy, budgets):
    """Queues after the sequence of slots (a lax.scan of update_queues)."""

    def step(qs, inp):
        a_t, mu_t, e_t = inp
        return update_queues(qs, a_t, mu_t, e_t, 0.0, 0.0, budgets), None

    return jax.lax.scan(step, start, (arrivals, service, energy))[0]


_run_jit = jax.jit(_run)
HORIZON = 40


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, X_MAX[0], width=32), st.floats(0.0, A_MAX, width=32),
                          st.floats(0.0, MU_MAX, width=32)),
                min_size=HORIZON, max_size=HORIZON),
       st.floats(0.0, 3.0, width=32), queue_value)
def test_virtual_queue_telescoping(xs, e_bar, z0):
    """drift.md Lemma 4: Z(T) - Z(0) >= sum_t (x(t) - x_bar), and for Q with A - mu."""
    e, arr, mu = (jnp.array(col, jnp.float32) for col in zip(*xs, strict=True))
    start = Queues.zeros().replace(q=jnp.float32(z0), z_e=jnp.float32(z0))
    end = _run_jit(start, arr, mu, e, Budgets(e_bar=jnp.float32(e_bar)))
    tol = 1e-5 * (1.0 + z0 + HORIZON * 5.0)
    assert float(end.z_e) - z0 >= float(jnp.sum(e - e_bar)) - tol
    assert float(end.q) - z0 >= float(jnp.sum(arr - mu)) - tol


# --- equivalences -----------------------------------------------------------------------


def test_vmap_and_jit_match_per_sample_loop():
    key = jax.random.PRNGKey(0)
    k = jax.random.split(key, 6)
    n = 64
    qs = Queues(q=jax.random.uniform(k[0], (n,)) * 10, z_e=jax.random.uniform(k[1], (n,)),
                z_a=jnp.zeros(n), z_c=jax.random.uniform(k[2], (n,)) * 3)
    a, mu, e = (jax.random.uniform(kk, (n,)) * 4 for kk in k[3:])
    b = Budgets(e_bar=jnp.float32(1.0), a_bar=jnp.float32(INF), c_bar=jnp.float32(0.5))
    batched = jax.jit(jax.vmap(update_queues, in_axes=(0, 0, 0, 0, None, 0, None)))(
        qs, a, mu, e, 0.1, e, b)
    obj = jax.jit(jax.vmap(dpp_objective, in_axes=(0, None, 0, 0, 0, 0, None, 0, None)))(
        qs, 3.0, e, a, mu, e, 0.1, e, b)
    for i in range(0, n, 7):
        one = jax.tree.map(lambda v, i=i: v[i], qs)
        ref = update_queues(one, a[i], mu[i], e[i], 0.1, e[i], b)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(ref), strict=True):
            assert float(got[i]) == pytest.approx(float(want), rel=1e-6, abs=1e-6)
        want = dpp_objective(one, 3.0, e[i], a[i], mu[i], e[i], 0.1, e[i], b)
        assert float(obj[i]) == pytest.approx(float(want), rel=1e-5, abs=1e-5)


# --- stability verdict -----------------------------------------------------------------


def test_growth_rate_and_stability_verdict():
    t = jnp.arange(1000, dtype=jnp.float32)
    # Linear growth 0.5/slot: slope 0.5 exactly; unstable for arrival rate 2 (0.5 > 0.05*2).
    assert float(backlog_growth_rate(0.5 * t + 3.0)) == pytest.approx(0.5, rel=1e-4)
    assert not bool(is_rate_stable(0.5 * t, 2.0))
    # A bounded oscillation has slope ~0 (exactly 0 for a full period count): stable.
    osc = 10.0 + jnp.sin(2 * jnp.pi * t / 50.0)
    assert abs(float(backlog_growth_rate(osc))) < 1e-3
    assert bool(is_rate_stable(osc, 2.0))
    # Batched over leading axes.
    both = jnp.stack([0.5 * t, osc])
    np.testing.assert_array_equal(np.asarray(is_rate_stable(both, 2.0)), [False, True])
