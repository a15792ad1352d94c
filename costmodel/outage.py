"""What a request caught by a link outage costs (docs/design.md §2.7 and §5).

One model, shared by the slot environment, the outage-aware planner, the robustness figure and
the runtime's prediction. A request whose partition sends bytes across the link while the link
is down (bandwidth 0) does what the runtime does:

1. its first crossing is sent and not answered: the edge waits ``timeout_s``;
2. it retries, sleeping the backoff schedule's delay before each retry (ceiling
   ``min(cap_s, base_s * factor**n)`` for the n-th retry; full jitter draws the delay uniformly
   below the ceiling, so its mean is half the ceiling) and waiting ``timeout_s`` for each
   answer. Attempt ``n`` starts at ``s_n = n * timeout_s + sum_{i<n} E[delay_i]``;
3. if the link is back when an attempt starts (the outage lasted ``R`` seconds and
   ``s_n >= R`` for some ``n <= max_retries``), that attempt resumes the request from its
   partition checkpoint: it waited ``s_n`` and then runs as planned (on the link it comes back
   to: the scenario's mean link);
4. otherwise the retry budget is spent after ``W = (max_retries + 1) * timeout_s + sum E[delay]``
   and the request finishes on the edge from its checkpoint. The work done on the edge before
   the first crossing is checkpointed, not lost, so the edge does in all the work of the
   edge-only partition: edge-only latency and energy plus the wait (at idle power), no cloud
   cost, the edge-only accuracy (nothing crossed). Where the edge cannot hold the whole model
   (edge-only over the memory budget) the request **fails** after ``W``.

``RetryConfig.recovery(R)`` gives the wait and whether the request resumes; the environment
uses the expected remaining length of an outage of its link process for ``R``
(``lyapunov.env``). A partition that never crosses (edge-only) is not affected. Pure JAX; one
sample.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from costmodel import partition as P
from costmodel.costs import RequestCosts, request_costs
from costmodel.link import LinkState
from costmodel.spec import CostSpec


class RetryError(ValueError):
    """A bad retry setting; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """The edge's timeout and backoff schedule (the runtime's defaults; validated).

    The defaults outlast a cloud restart: the ceilings 1, 2, 4, 8, 16, 30, 30, 30, 30 s sum
    to 151 s, so with full jitter the sleeps before the edge gives up average 75.5 s and fall
    below 30 s (a SmolLM2 ``serve-cloud`` restart measured on a loaded 2-core machine: 27-30
    s; the toy model: 6 s) with probability about 0.4%.

    timeout_s: wait for an answer before an attempt counts as failed, s (> 0).
    base_s: ceiling of the first retry's delay, s (> 0).
    factor: growth of the ceiling per consecutive retry (>= 1).
    cap_s: largest ceiling, s (>= base_s).
    max_retries: retries after the first attempt before falling back to the edge (>= 0).
    jitter: "full" (delay uniform below the ceiling) or "none" (the ceiling).
    """

    timeout_s: float = 5.0
    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    max_retries: int = 9
    jitter: str = "full"

    def __post_init__(self):
        for name, lo, open_ in (("timeout_s", 0.0, True), ("base_s", 0.0, True),
                                ("factor", 1.0, False), ("cap_s", self.base_s, False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or (v <= lo if open_ else v < lo):
                raise RetryError(f"RetryConfig.{name} must be a finite number "
                                 f"{'>' if open_ else '>='} {lo}, got {v!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise RetryError(f"RetryConfig.max_retries must be an integer >= 0, "
                             f"got {self.max_retries!r}")
        if self.jitter not in ("full", "none"):
            raise RetryError(f"RetryConfig.jitter must be 'full' or 'none', got {self.jitter!r}")

    def attempt_starts(self) -> list[float]:
        """Mean start time of each attempt (the first send and every retry), s from the
        first send."""
        mean = 0.5 if self.jitter == "full" else 1.0
        out, t = [0.0], 0.0
        for c in self.ceilings():
            t += self.timeout_s + mean * c
            out.append(t)
        return out

    def recovery(self, outage_s: float) -> tuple[float, bool]:
        """(wait, resumes) of a request whose first send meets an outage that lasts
        ``outage_s`` more seconds: the start of the first attempt at or after the link is back
        (the request then resumes), or the whole budget ``expected_wait_s()`` (it falls back)."""
        if not (isinstance(outage_s, int | float) and math.isfinite(outage_s) and outage_s >= 0):
            raise RetryError(f"outage_s must be a finite number >= 0, got {outage_s!r}")
        for start in self.attempt_starts():
            if start >= outage_s:
                return start, True
        return self.expected_wait_s(), False

    def ceilings(self) -> list[float]:
        """The delay ceiling before each retry, s."""
        return [min(self.cap_s, self.base_s * self.factor ** n) for n in range(self.max_retries)]

    def expected_wait_s(self) -> float:
        """Mean time from the first send to giving up: every attempt's timeout plus the mean
        backoff delays, s."""
        mean = 0.5 if self.jitter == "full" else 1.0
        return (self.max_retries + 1) * self.timeout_s + mean * sum(self.ceilings())


@struct.dataclass
class CaughtCosts:
    """Per-request costs of a slot's partition with outages priced in (one sample).

    costs: the request's costs as charged (the fallback's where ``caught``).
    caught: the partition crossed the link while it was down.
    failed: caught, and the edge could not finish the request alone.
    runnable: the partition can ever run (memory and privacy floor; not the link).
    """

    costs: RequestCosts
    caught: jnp.ndarray
    failed: jnp.ndarray
    runnable: jnp.ndarray


def crosses(costs: RequestCosts) -> jnp.ndarray:
    """Whether a request under these costs sends anything over the link (outage-sensitive):
    any byte either way, or a latency the link made infinite."""
    return (costs.bytes_up > 0) | (costs.bytes_down > 0) | ~costs.link_ok


def with_outage(p: P.Partition, link: LinkState, spec: CostSpec, wait_s,
                resumes=False, resume_link: LinkState | None = None) -> CaughtCosts:
    """Costs of one request under ``p`` on ``link``, a request caught by an outage priced as
    the module docstring says: ``wait_s`` and ``resumes`` from ``RetryConfig.recovery`` (or
    ``expected_wait_s()`` and False: the link stays down), ``resume_link`` the link the
    request resumes on (required when ``resumes`` can be true)."""
    c = request_costs(p, link, spec)
    runnable = c.memory_ok & c.privacy_ok
    caught = runnable & ~c.link_ok
    edge = request_costs(P.edge_only(spec.n_layers, spec.n_heads), link, spec)
    resumes = jnp.asarray(resumes, bool)
    back = request_costs(p, link if resume_link is None else resume_link, spec)
    resumes = resumes & back.link_ok
    failed = caught & ~resumes & ~edge.memory_ok
    wait = jnp.asarray(wait_s, jnp.float32)
    idle_j = spec.edge.p_idle * wait
    zero = jnp.zeros_like(c.cloud_cost)

    def after(a_resume, a_edge, a_fail):
        return jnp.where(resumes, a_resume, jnp.where(failed, a_fail, a_edge))

    fb = c.replace(
        latency_s=wait + after(back.latency_s, edge.latency_s, 0.0),
        energy_j=idle_j + after(back.energy_j, edge.energy_j, 0.0),
        cloud_cost=after(back.cloud_cost, zero, zero),
        accuracy_drop=after(back.accuracy_drop, edge.accuracy_drop, 0.0),
        edge_compute_s=after(back.edge_compute_s, edge.edge_compute_s, 0.0),
        bytes_up=after(back.bytes_up, zero, zero), bytes_down=after(back.bytes_down, zero, zero),
        cloud_gpu_s=after(back.cloud_gpu_s, zero, zero),
        n_crossings=after(back.n_crossings, zero, zero))

    charged = jax.tree.map(lambda a, b: jnp.where(caught, a, b), fb, c)
    charged = charged.replace(feasible=runnable & ~failed)
    return CaughtCosts(charged, caught, failed, runnable)
