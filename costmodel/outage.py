"""What a request caught by a link outage costs (docs/design.md §2.7 and §5).

One model, shared by the slot environment, the robustness figure and the runtime's
prediction. A request whose partition sends bytes across the link while the link is down
(bandwidth 0) does what the runtime does:

1. its first crossing is sent and not answered: the edge waits ``timeout_s``;
2. it retries ``max_retries`` times, sleeping the backoff schedule's delay before each retry
   (ceiling ``min(cap_s, base_s * factor**n)`` for the n-th retry; full jitter draws the delay
   uniformly below the ceiling, so its mean is half the ceiling) and waiting ``timeout_s`` for
   each answer;
3. the retry budget spent, it finishes on the edge from its partition checkpoint. The work done
   on the edge before the first crossing is checkpointed, not lost, so the edge does in all the
   work of the edge-only partition; the request costs the edge-only latency and energy plus the
   waits (at idle power), no cloud cost, and the edge-only accuracy (nothing crossed). Where the
   edge cannot hold the whole model (edge-only over the memory budget) the request **fails**:
   it costs the waits and counts as a failure.

The link state of a slot holds for the whole slot, so a request caught in it spends its whole
retry budget (the conservative reading; a link that returns mid-retry would cut the wait short).
A partition that never crosses (edge-only) is not affected by an outage. Pure JAX; one sample.
"""

from __future__ import annotations

import dataclasses
import math

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


def with_outage(p: P.Partition, link: LinkState, spec: CostSpec, wait_s) -> CaughtCosts:
    """Costs of one request under ``p`` on ``link``, a request caught by an outage priced as
    the module docstring says; ``wait_s`` is ``RetryConfig.expected_wait_s()``."""
    c = request_costs(p, link, spec)
    runnable = c.memory_ok & c.privacy_ok
    caught = runnable & ~c.link_ok
    edge = request_costs(P.edge_only(spec.n_layers, spec.n_heads), link, spec)
    failed = caught & ~edge.memory_ok
    wait = jnp.asarray(wait_s, jnp.float32)
    idle_j = spec.edge.p_idle * wait
    fb_lat = jnp.where(failed, wait, edge.latency_s + wait)
    fb_energy = jnp.where(failed, idle_j, edge.energy_j + idle_j)
    fb_acc = jnp.where(failed, 0.0, edge.accuracy_drop)
    zero = jnp.zeros_like(c.cloud_cost)

    def pick(a, b):
        return jnp.where(caught, a, b)

    charged = c.replace(
        latency_s=pick(fb_lat, c.latency_s), energy_j=pick(fb_energy, c.energy_j),
        cloud_cost=pick(zero, c.cloud_cost), accuracy_drop=pick(fb_acc, c.accuracy_drop),
        edge_compute_s=pick(jnp.where(failed, 0.0, edge.edge_compute_s), c.edge_compute_s),
        bytes_up=pick(zero, c.bytes_up), bytes_down=pick(zero, c.bytes_down),
        cloud_gpu_s=pick(zero, c.cloud_gpu_s), n_crossings=pick(zero, c.n_crossings),
        feasible=runnable & ~failed)
    return CaughtCosts(charged, caught, failed, runnable)
