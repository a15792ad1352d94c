"""Task backlog, virtual queues and the drift-plus-penalty objective of one slot.

The queue model of docs/design.md §3, after Neely, *Stochastic
Network Optimization with Application to Communication and Queueing Systems* (2010), ch. 4:

- task backlog (requests):          ``Q(t+1)   = max(Q(t)   - mu(t), 0) + A(t)``
- edge-energy virtual queue (J):    ``Z_E(t+1) = max(Z_E(t) + e(t) - E_bar, 0)``
- accuracy virtual queue:           ``Z_A(t+1) = max(Z_A(t) + a(t) - A_bar, 0)``
- cloud-cost virtual queue:         ``Z_C(t+1) = max(Z_C(t) + c(t) - C_bar, 0)``

with ``mu(t) = tau / latency(t)`` the (fractional, work-conserving) number of requests the
chosen partition serves in a slot of ``tau`` seconds. The quadratic Lyapunov function is
``L = (Q^2 + Z_E^2 + Z_A^2 + Z_C^2) / 2`` and the controller minimizes, each slot,

    V p(t) + Q (A - mu) + Z_E (e - E_bar) + Z_A (a - A_bar) + Z_C (c - C_bar),

the right-hand side of the one-slot drift bound (``proofs/drift.md``) less its constant ``B``.

Conventions (all functions are elementwise, so they jit, vmap and broadcast):

- A budget of ``+inf`` means "no budget": its virtual queue is held at 0 and its term drops
  out of the objective (no ``inf - inf`` or ``0 * inf`` NaN is formed).
- A product of a weight that is 0 (``V``, ``Q``, ``Z``) with an infinite cost is taken as 0,
  so an infeasible partition (infinite latency or energy) must be masked by the caller
  rather than relied on to score ``+inf``.
- ``latency`` must be positive; ``latency = inf`` (the partition cannot run this slot)
  serves nothing, ``mu = 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Queues:
    """Queue state at the start of a slot (a JAX pytree; batch it by giving arrays).

    q: task backlog Q, requests (fractional allowed).
    z_e: edge-energy virtual queue Z_E, J.
    z_a: accuracy-degradation virtual queue Z_A, units of the degradation metric.
    z_c: cloud-cost virtual queue Z_C, units of the cost metric.
    """

    q: jnp.ndarray
    z_e: jnp.ndarray
    z_a: jnp.ndarray
    z_c: jnp.ndarray

    @classmethod
    def zeros(cls, shape: tuple[int, ...] = (), dtype=jnp.float32) -> Queues:
        """All queues empty, ``Q = Z_E = Z_A = Z_C = 0``, of the given batch shape."""
        z = jnp.zeros(shape, dtype)
        return cls(q=z, z_e=z, z_a=z, z_c=z)


@struct.dataclass
class Budgets:
    """Time-average budgets of the virtual queues (``+inf``: no budget, queue stays 0).

    e_bar: average edge energy per slot E_bar, J/slot.
    a_bar: average accuracy degradation per slot A_bar.
    c_bar: average cloud cost per slot C_bar.
    """

    e_bar: jnp.ndarray = jnp.inf
    a_bar: jnp.ndarray = jnp.inf
    c_bar: jnp.ndarray = jnp.inf


def service_rate(latency, tau):
    """Requests served in one slot, ``mu = tau / latency`` (0 when ``latency = inf``).

    Work-conserving and fractional: a partition with per-request latency ``l`` seconds serves
    ``tau / l`` requests in a slot of ``tau`` seconds (docs/design.md §3).

    Args:
      latency: per-request latency l > 0, seconds, any shape (``inf`` allowed).
      tau: slot length, seconds (broadcasts).

    Returns:
      mu, same shape as the broadcast of the inputs.
    """
    latency = jnp.asarray(latency)
    finite = jnp.isfinite(latency)
    safe = jnp.where(finite, latency, 1.0)
    return jnp.where(finite, tau / safe, 0.0)


def _virtual_update(z, x, x_bar):
    """``Z(t+1) = max(Z + x - x_bar, 0)``, or 0 when ``x_bar = inf`` (no budget)."""
    active = jnp.isfinite(x_bar)
    safe_bar = jnp.where(active, x_bar, 0.0)
    safe_x = jnp.where(active, x, 0.0)
    return jnp.where(active, jnp.maximum(z + safe_x - safe_bar, 0.0), 0.0)


def _virtual_term(z, x, x_bar):
    """``Z (x - x_bar)``, 0 when the budget is inactive or ``Z = 0`` (``0 * inf = 0``)."""
    active = jnp.isfinite(x_bar) & (z > 0)
    return jnp.where(active, z * jnp.where(active, x - jnp.where(active, x_bar, 0.0), 0.0), 0.0)


def _weighted(w, x):
    """``w * x`` with ``0 * inf = 0``."""
    on = w != 0
    return jnp.where(on, w * jnp.where(on, x, 0.0), 0.0)


def update_queues(queues: Queues, arrivals, service, energy, accuracy, cloud_cost,
                  budgets: Budgets) -> Queues:
    """Advance all queues by one slot (Neely 2010, ch. 4).

        Q(t+1)   = max(Q(t)   - mu(t), 0) + A(t)
        Z_E(t+1) = max(Z_E(t) + e(t) - E_bar, 0)
        Z_A(t+1) = max(Z_A(t) + a(t) - A_bar, 0)
        Z_C(t+1) = max(Z_C(t) + c(t) - C_bar, 0)

    A budget of ``+inf`` keeps its queue at 0. Arrivals of slot t are served from slot t+1.

    Args:
      queues: state at the start of slot t.
      arrivals: A(t) >= 0, requests that arrived during the slot.
      service: mu(t) >= 0, requests the chosen partition can serve (``service_rate``).
      energy: e(t) >= 0, edge energy of the slot, J.
      accuracy: a(t) >= 0, accuracy degradation of the slot.
      cloud_cost: c(t) >= 0, cloud cost of the slot.
      budgets: the time-average budgets.

    Returns:
      Queues at the start of slot t+1 (all entries >= 0 when the inputs are).
    """
    return Queues(
        q=jnp.maximum(queues.q - service, 0.0) + arrivals,
        z_e=_virtual_update(queues.z_e, energy, budgets.e_bar),
        z_a=_virtual_update(queues.z_a, accuracy, budgets.a_bar),
        z_c=_virtual_update(queues.z_c, cloud_cost, budgets.c_bar),
    )


def lyapunov_value(queues: Queues):
    """Quadratic Lyapunov function ``L = (Q^2 + Z_E^2 + Z_A^2 + Z_C^2) / 2`` (Neely 2010, ch. 4)."""
    return 0.5 * (queues.q**2 + queues.z_e**2 + queues.z_a**2 + queues.z_c**2)


def dpp_objective(queues: Queues, V, penalty, arrivals, service, energy, accuracy, cloud_cost,
                  budgets: Budgets):
    """Drift-plus-penalty expression the controller minimizes each slot (Neely 2010, ch. 4).

        V p + Q (A - mu) + Z_E (e - E_bar) + Z_A (a - A_bar) + Z_C (c - C_bar)

    It is the one-slot bound ``L(t+1) - L(t) + V p(t) <= B + [this]`` without ``B``
    (``proofs/drift.md``). Terms of budgets that are ``+inf`` are 0, and ``0 * inf = 0``.

    Args:
      queues: queue state at the start of the slot.
      V: penalty weight V >= 0.
      penalty: p(t), the slot's penalty (latency by default).
      arrivals: A(t) (or its expectation; it does not depend on the action).
      service, energy, accuracy, cloud_cost: mu(t), e(t), a(t), c(t) of the action.
      budgets: the time-average budgets.

    Returns:
      The objective, shape of the broadcast of the inputs.
    """
    return (
        _weighted(V, penalty)
        + _weighted(queues.q, arrivals - service)
        + _virtual_term(queues.z_e, energy, budgets.e_bar)
        + _virtual_term(queues.z_a, accuracy, budgets.a_bar)
        + _virtual_term(queues.z_c, cloud_cost, budgets.c_bar)
    )


def backlog_growth_rate(q_t):
    """Least-squares slope of the backlog over the second half of a trajectory, requests/slot.

    Neely's rate stability is ``Q(t)/t -> 0`` (Neely 2010, ch. 2); on a finite trace a
    stable queue's slope is near 0 and an unstable one's approaches ``lambda - mu_bar`` (the
    excess of the arrival rate over the best achievable mean service). The first half is
    discarded as transient.

    Args:
      q_t: float [T] (T >= 4) backlog trajectory; leading batch axes are allowed ([..., T]).

    Returns:
      float [...] slope (NumPy for host data, so a summary compiles nothing; JAX for JAX
      arrays and under a transformation).
    """
    xp = jnp if isinstance(q_t, jax.Array) else np
    q_t = xp.asarray(q_t)
    tail = q_t[..., q_t.shape[-1] // 2:]
    t = xp.arange(tail.shape[-1], dtype=tail.dtype)
    t_c = t - t.mean()
    y_c = tail - tail.mean(axis=-1, keepdims=True)
    return (y_c * t_c).sum(axis=-1) / (t_c**2).sum()


def is_rate_stable(q_t, arrival_rate, rel_tol: float = 0.05):
    """Stability verdict of a backlog trajectory: growth rate <= ``rel_tol * arrival_rate``.

    Uses :func:`backlog_growth_rate`. The verdict is only meaningful once the horizon is
    well past the transient in which a stable queue fills to its operating level (about
    ``V`` times the Lagrange multiplier of the service constraint for the DPP policy).

    Args:
      q_t: float [..., T] backlog trajectory.
      arrival_rate: mean arrivals per slot (broadcasts against the batch axes).
      rel_tol: tolerated growth, as a fraction of the arrival rate.

    Returns:
      bool [...].
    """
    return backlog_growth_rate(q_t) <= rel_tol * arrival_rate
