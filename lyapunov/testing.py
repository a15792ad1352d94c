"""Property-based stability tests for your own controller: hypothesis strategies for cards,
profiles, links, queue states and scenarios, and two assertions to call from your pytest.

    from lyapunov.testing import assert_drift_bound, assert_time_average_bounds, scenarios

- :func:`assert_drift_bound` draws slot states (queues, the slot's link, the last measured
  link, cloud share, outage) and checks that the policy's drift-plus-penalty expression is
  within ``C`` of the minimum over partitions on each (assumption A5 of
  ``proofs/performance.md``, per slot), and that the environment's one-slot drift obeys
  ``L(t+1) - L(t) + V p <= B_t + DPP`` (``proofs/drift.md`` Proposition 3(a), with the
  sample's own ``B_t``). A failure is shrunk by hypothesis and printed as the state's values.
- :func:`assert_time_average_bounds` rolls the policy out and checks the time-average penalty
  and backlog against Theorem 1's bounds at ``V`` (``lyapunov.certify``), with the measured
  ``C``; it returns the :class:`lyapunov.certify.Certificate`.

The bounds are theorems only for i.i.d. scenarios (:func:`scenarios` draws i.i.d. ones by
default). hypothesis is a development extra (``pip install 'splitwise[dev]'``); importing the
``lyapunov`` package does not import it, this module does. docs/certify.md has a worked
example with a user-written policy.
"""

from __future__ import annotations

try:
    from hypothesis import HealthCheck, given, settings
except ImportError as err:  # pragma: no cover - exercised without the dev extra
    raise ImportError("lyapunov.testing needs hypothesis, a development extra: "
                      "pip install 'splitwise[dev]' (or pip install hypothesis)") from err

import jax
import jax.numpy as jnp

from lyapunov import env as E
from lyapunov.hypotheses import (  # noqa: F401  (the public strategies, re-exported)
    SlotState,
    cards,
    describe,
    env_state,
    link_samples,
    links,
    log_uniform,
    profiles,
    queue_states,
    scenarios,
    slot_states,
)
from lyapunov.queues import lyapunov_value

# --- assertions for a user's pytest -------------------------------------------------------


def _params(scenario):
    return scenario.build() if isinstance(scenario, E.Scenario) else scenario


def assert_drift_bound(policy, scenario, C: float = 0.0, *, max_examples: int = 50,
                       q_max: float = 1e3, rtol: float = 1e-4) -> None:
    """Assert, on ``max_examples`` hypothesis-drawn slot states of ``scenario``, that

    1. ``DPP(policy) <= C + min over partitions DPP`` (A5 per slot; the minimum is the
       clairvoyant one of ``lyapunov.certify``, so a causal policy needs a ``C`` that covers
       not seeing the slot's link), and
    2. ``L(t+1) - L(t) + V p(t) <= B_t + DPP(policy)`` with the sample's own
       ``B_t = (A^2 + mu^2)/2 + sum_i (x_i - x_bar_i)^2 / 2`` (drift.md Proposition 3(a)).

    ``policy``: a jittable ``lyapunov.policies.Policy``; ``scenario``: Scenario or EnvParams.
    The tolerance is ``rtol`` relative to the DPP's magnitude (float32). A failure is shrunk
    and raised as an AssertionError naming the state.
    """
    from lyapunov import certify

    params = _params(scenario)
    gap_of = certify.gap_function(certify.Gap(policy, params))
    _, template = E.reset(jax.random.PRNGKey(0), params)
    sp = params.slot
    up_ratio = float(params.link.up_ratio)

    @jax.jit
    def drift(state, key):
        k_env, k_pol = jax.random.split(key)
        x = state if policy.clairvoyant else E.observe(state)
        act = policy.act(k_pol, x, params)
        _, new, _, _, info = E.step(k_env, state, act, params)
        mu = info.service + info.failed
        bt = 0.5 * (info.arrivals ** 2 + mu ** 2)
        for x_i, bar in ((info.energy_j, sp.budgets.e_bar), (info.accuracy_drop,
                                                              sp.budgets.a_bar),
                         (info.cloud_cost, sp.budgets.c_bar)):
            bt = bt + jnp.where(jnp.isfinite(bar), 0.5 * (x_i - jnp.where(
                jnp.isfinite(bar), bar, 0.0)) ** 2, 0.0)
        lhs = lyapunov_value(new.queues) - lyapunov_value(state.queues) + sp.V * info.penalty
        return lhs, bt + info.dpp, info.dpp

    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(slot_states(params, q_max=q_max, outage=params.link.outage is not None))
    def check(s):
        gap, d, m = gap_of(s)
        scale = rtol * (abs(d) + abs(m) + 1.0)
        assert gap <= C + scale, (f"{policy.name}: DPP {d:.6g} exceeds the minimum {m:.6g} "
                                  f"by {gap:.6g} > C = {C:g} at {describe(s)}")
        lhs, rhs, dpp = (float(v) for v in drift(env_state(s, template, up_ratio),
                                                 jax.random.PRNGKey(s.key)))
        assert lhs <= rhs + rtol * (abs(lhs) + abs(rhs) + abs(dpp) + 1.0), (
            f"{policy.name}: one-slot drift + V p = {lhs:.6g} > B_t + DPP = {rhs:.6g} at "
            f"{describe(s)}")

    check()


def assert_time_average_bounds(policy, scenario, V: float | None = None, *,
                               n_slots: int = 2000, seed: int = 0, C: float | None = None,
                               require_iid: bool = False, n_states: int = 32):
    """Roll ``policy`` out on ``scenario`` (at penalty weight ``V`` if given) and assert that
    its time-average penalty and backlog ``Q + sum_i Z_i`` are within Theorem 1's bounds with
    the measured ``C`` (``C_mean``; or ``C`` if given). Returns the
    ``lyapunov.certify.Certificate``. ``require_iid``: fail unless the scenario meets A1-A2
    (otherwise a pass on a correlated scenario is an empirical statement, ``cert.verdict``)."""
    from lyapunov import certify
    from proofs import bounds as proofs_bounds

    params = _params(scenario)
    if V is not None:
        params = params.replace(slot=params.slot.replace(V=jnp.float32(V)))
    # The bounds use C_mean only: no observation-conditional comparator (C_bayes, one exact
    # solve per predictive draw per slot).
    cert = certify.certify(policy, params, n_slots=n_slots, seed=seed, examples=0,
                           n_states=n_states, bayes_draws=None)
    if require_iid:
        assert cert.iid, f"scenario is not i.i.d.: {'; '.join(cert.not_iid)}"
    if C is not None:
        cert.penalty_bound = proofs_bounds.penalty_bound(cert.B, C, cert.V, cert.p_star)
        cert.backlog_bound = proofs_bounds.backlog_bound(
            cert.B, C, cert.V, cert.eps, cert.p_eps, min(cert.p_star, cert.penalty_mean))
        cert.penalty_ok = cert.penalty_mean <= cert.penalty_bound
        cert.backlog_ok = cert.backlog_mean <= cert.backlog_bound
    tol = 1e-6
    assert cert.penalty_mean <= cert.penalty_bound * (1 + tol) + tol, (
        f"{cert.policy}: time-average penalty {cert.penalty_mean:.6g} > bound "
        f"{cert.penalty_bound:.6g} (B {cert.B:.6g}, C {cert.C_mean:.6g}, p* {cert.p_star:.6g},"
        f" V {cert.V:g})")
    assert cert.backlog_mean <= cert.backlog_bound * (1 + tol) + tol, (
        f"{cert.policy}: time-average backlog {cert.backlog_mean:.6g} > bound "
        f"{cert.backlog_bound:.6g} (eps {cert.eps:.6g})")
    return cert


__all__ = ["SlotState", "assert_drift_bound", "assert_time_average_bounds", "cards",
           "describe", "env_state", "link_samples", "links", "log_uniform", "profiles",
           "queue_states", "scenarios", "slot_states"]
