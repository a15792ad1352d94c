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

import jax
import jax.numpy as jnp
from flax import struct

from costmodel import partition as P
from costmodel.costs import RequestCosts, request_costs
from costmodel.link import LinkState
from costmodel.retry import RetryConfig, RetryError  # noqa: F401  (re-exported)
from costmodel.spec import CostSpec


@struct.dataclass
class CaughtCosts:
    """Per-request costs of a slot's partition with outages priced in (one sample).

    costs: the request's costs as charged (the fallback's where ``caught``).
    caught: the partition crossed the link while it was down.
    failed: caught, and the edge could not finish the request alone.
    runnable: the partition can ever run (edge and cloud memory, privacy floor; not the link).
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
    # The three requests (as planned, edge-only, resumed) through one traced cost model
    # (vmap): a third of the program to compile in every rollout.
    edge_p = P.edge_only(spec.n_layers, spec.n_heads)
    back_link = link if resume_link is None else resume_link
    parts = jax.tree.map(lambda a, b: jnp.stack(jnp.broadcast_arrays(a, b, a)), p, edge_p)
    links = jax.tree.map(lambda a, b: jnp.stack(jnp.broadcast_arrays(a, a, b)), link, back_link)
    three = jax.vmap(request_costs, in_axes=(0, 0, None))(parts, links, spec)
    c, edge, back = (jax.tree.map(lambda x, i=i: x[i], three) for i in range(3))
    runnable = c.memory_ok & c.cloud_memory_ok & c.privacy_ok
    caught = runnable & ~c.link_ok
    resumes = jnp.asarray(resumes, bool)
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
