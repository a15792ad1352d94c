"""Constants and bounds of the drift-plus-penalty analysis (``drift.md``, ``performance.md``).

Pure Python (``math`` only), so any package or test may import it. Notation as in
docs/design.md §3 and Neely, *Stochastic Network Optimization with
Application to Communication and Queueing Systems* (2010), ch. 4:

- one-slot drift bound: ``L(t+1) - L(t) <= B + Q (A - mu) + sum_i Z_i (x_i - x_bar_i)``
  (almost-sure form) with
  ``B = (A_max^2 + mu_max^2) / 2 + sum_i max(x_max_i - x_bar_i, x_bar_i - x_min_i)^2 / 2``;
  in expectation ``A_max^2`` may be replaced by a bound on ``E[A(t)^2 | Theta(t)]``
  (``lambda + lambda^2`` for Poisson arrivals of rate ``lambda``);
- for a policy whose conditional expected DPP expression is within ``C`` of the per-slot
  infimum, under Slater slack ``eps``:
  time-average ``E[Q + sum_i Z_i] <= (B + C + V (p_max - p_star)) / eps`` and
  time-average ``E[p] <= p_star + (B + C) / V``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class VirtualQueueSpec:
    """Range and budget of the per-slot quantity behind one virtual queue.

    x_max: largest value x(t) can take in one slot (e.g. the edge energy of the most
      energy-hungry feasible partition, J).
    budget: the time-average budget x_bar (``math.inf``: no budget, the queue stays 0).
    x_min: smallest value x(t) can take (0 for energy, accuracy drop and cost).
    """

    x_max: float
    budget: float
    x_min: float = 0.0


def service_max(tau: float, latency_min: float) -> float:
    """Largest per-slot service ``mu_max = tau / latency_min`` (requests per slot).

    Args:
      tau: slot length, s.
      latency_min: smallest per-request latency of any partition in any link state, s (> 0).
    """
    if not latency_min > 0:
        raise ValueError(f"latency_min must be > 0, got {latency_min!r}")
    return tau / latency_min


def poisson_second_moment(rate: float) -> float:
    """``E[A^2] = lambda + lambda^2`` for ``A ~ Poisson(lambda)``."""
    return rate + rate * rate


def virtual_queue_constant(spec: VirtualQueueSpec) -> float:
    """``max(x_max - x_bar, x_bar - x_min)^2 / 2``, the bound on ``(x - x_bar)^2 / 2``.

    Returns 0 for ``x_bar = inf`` (no budget: the queue is identically 0).
    """
    if math.isinf(spec.budget) and spec.budget > 0:
        return 0.0
    gap = max(spec.x_max - spec.budget, spec.budget - spec.x_min)
    return 0.5 * gap * gap


def drift_constant(*, service_max: float, arrival_max: float | None = None,
                   arrival_second_moment: float | None = None,
                   virtual: Iterable[VirtualQueueSpec] = ()) -> float:
    """Constant ``B`` of the one-slot drift bound (``proofs/drift.md``, Lemma 1 and 2).

        B = (m_A + mu_max^2) / 2 + sum_i max(x_max_i - x_bar_i, x_bar_i - x_min_i)^2 / 2

    where ``m_A = A_max^2`` (almost-sure form: ``0 <= A(t) <= A_max``) or ``m_A`` is a bound
    on ``E[A(t)^2 | Theta(t)]`` (second-moment form, e.g. ``poisson_second_moment``).
    Give exactly one of ``arrival_max`` and ``arrival_second_moment``.

    Args:
      service_max: mu_max, requests per slot (``service_max(tau, latency_min)``).
      arrival_max: A_max, requests per slot.
      arrival_second_moment: m_A >= E[A^2 | Theta].
      virtual: one spec per virtual queue (energy, accuracy, cloud cost).
    """
    if (arrival_max is None) == (arrival_second_moment is None):
        raise ValueError("give exactly one of arrival_max and arrival_second_moment")
    m_a = arrival_max * arrival_max if arrival_max is not None else arrival_second_moment
    return 0.5 * (m_a + service_max * service_max) + sum(
        virtual_queue_constant(s) for s in virtual)


def backlog_bound(B: float, C: float, V: float, eps: float, p_max: float, p_star: float,
                  *, initial_lyapunov: float = 0.0, horizon: float = math.inf) -> float:
    """Bound on the time-average expected total backlog ``E[Q + sum_i Z_i]``.

        (1/T) sum_{t<T} E[Q(t) + sum_i Z_i(t)] <= (B + C + V (p_max - p_star) + L(0)/T) / eps

    (``proofs/performance.md``, Theorem 1(b)). For ``T = inf`` this is the lim-sup bound
    ``(B + C + V (p_max - p_star)) / eps``; for finite T, ``p_star`` must be a lower bound on
    the policy's own time-average expected penalty over the horizon (Theorem 1(b')).

    Args:
      B: drift constant (``drift_constant``).
      C: additive optimality gap of the per-slot decision (0 for the exact minimizer).
      V: penalty weight.
      eps: Slater slack (``slater_slack``); ``eps <= 0`` gives ``inf`` (no bound).
      p_max: upper bound on the expected penalty of the Slater policy (a per-slot penalty
        bound always qualifies).
      p_star: optimal time-average penalty (or the lower bound described above).
      initial_lyapunov: L(0).
      horizon: T.
    """
    if not eps > 0:
        return math.inf
    return (B + C + V * (p_max - p_star) + initial_lyapunov / horizon) / eps


def penalty_bound(B: float, C: float, V: float, p_star: float, *,
                  initial_lyapunov: float = 0.0, horizon: float = math.inf) -> float:
    """Bound on the time-average expected penalty (``proofs/performance.md``, Theorem 1(a)).

        (1/T) sum_{t<T} E[p(t)] <= p_star + (B + C) / V + L(0) / (V T)

    ``V <= 0`` gives ``inf`` (no bound).
    """
    if not V > 0:
        return math.inf
    return p_star + (B + C) / V + initial_lyapunov / (V * horizon)


def slater_slack(arrival_rate: float, service_mean: float,
                 cost_means: Sequence[float] = (), budgets: Sequence[float] = ()) -> float:
    """Slack of one stationary randomized policy: ``min(mu_bar - lambda, x_bar_i - x_i)``.

        eps = min( E[mu] - lambda,  min_{i: x_bar_i < inf} (x_bar_i - E[x_i]) )

    The Slater condition of ``proofs/performance.md`` holds with this ``eps`` when it is
    positive; the best ``eps`` is the maximum over stationary randomized policies (a linear
    program over the per-state action probabilities, solved in the tests).

    Args:
      arrival_rate: lambda = E[A].
      service_mean: E[mu] under the policy.
      cost_means: E[x_i] under the policy, one per virtual queue.
      budgets: x_bar_i, same order (``math.inf`` entries are ignored).
    """
    if len(cost_means) != len(budgets):
        raise ValueError("cost_means and budgets must have the same length")
    slack = service_mean - arrival_rate
    for x, x_bar in zip(cost_means, budgets, strict=True):
        if not math.isinf(x_bar):
            slack = min(slack, x_bar - x)
    return slack
