"""Controllers of the slot environment behind one interface (system-model section 4).

A :class:`Policy` is ``act(key, x, params) -> Partition`` where ``x`` is what it may see: the
full ``EnvState`` for a clairvoyant policy (it reads the current slot's link ``state.link_t``),
the ``Obs`` (queues and measurements up to the previous slot) for every causal one.
``jittable`` policies are pure JAX (``simulate`` runs them in ``lax.scan``); the cvx policy
calls cvxpy from Python.

- ``oracle``: the exact slot minimizer (``lyapunov.oracle.solve_slot``) on the slot's link.
- ``dp-estimate``: the same exact solver on a past-based link estimate: the last measured slot
  (``estimator="last"``, default) or the EWMA of the measurements (``"ewma"``).
- ``cvx``: the cvxpy program (``lyapunov.cvx``), tangent iterations on the concave objective,
  rounded; clairvoyant by default, so that its gap to the oracle is the solver's alone.
- ``cloud-only``: everything on the cloud (with a privacy floor: the floor's layers on the
  edge, the rest on the cloud, since cloud-only is not allowed).
- ``edge-only``: everything on the edge (infeasible, hence penalized, where memory forbids).
- ``best-cut``: Neurosurgeon-style: the single layer cut (and activation precision, and
  cloud-only) of least latency for the estimated link, memory-feasible.
- ``static-cut``: the same, designed once for the stationary mean link.
- ``greedy``: minimizes the penalty alone on the estimated link, ignoring the queues.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodel import partition as P
from costmodel.costs import request_costs
from costmodel.link import LinkState
from costmodel.partition import Partition
from lyapunov.env import EnvParams, EnvState, Obs, cost_link
from lyapunov.oracle import solve_slot
from lyapunov.queues import Queues


@dataclasses.dataclass(frozen=True)
class Policy:
    """name; act(key, x, params) -> Partition; clairvoyant: x is the EnvState (else Obs);
    jittable: act is pure JAX."""

    name: str
    act: Callable[[jax.Array, Any, EnvParams], Partition]
    clairvoyant: bool = False
    jittable: bool = True


def estimate_link(obs: Obs, estimator: str = "last") -> LinkState:
    """Past-based estimate of the coming slot's link: the last measurement or the EWMA."""
    if estimator == "last":
        return cost_link(obs.link_last)
    if estimator == "ewma":
        return obs.link_ewma
    raise ValueError(f"estimator must be 'last' or 'ewma', got {estimator!r}")


def oracle(**solver_kw) -> Policy:
    """``solver_kw``: max_solves, nu_iters, units of ``solve_slot`` (defaults otherwise; all
    solver-based policies then share one compiled ``solve_slot``)."""

    def act(key, state: EnvState, params: EnvParams):
        del key
        return solve_slot(state.queues, cost_link(state.link_t), params.spec, params.slot,
                          params.precisions, **solver_kw).partition

    return Policy("oracle", act, clairvoyant=True)


def dp_estimate(estimator: str = "last") -> Policy:
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        link = estimate_link(obs, estimator)
        return solve_slot(obs.queues, link, params.spec, params.slot,
                          params.precisions).partition

    return Policy("dp-estimate", act)


def greedy(estimator: str = "last") -> Policy:
    """Penalty only: the slot objective with empty queues and V = 1 (penalty minimizer)."""
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        link = estimate_link(obs, estimator)
        sp = params.slot.replace(V=jnp.float32(1.0))
        return solve_slot(Queues.zeros(), link, params.spec, sp, params.precisions).partition

    return Policy("greedy", act)


def cloud_only() -> Policy:
    def act(key, x, params: EnvParams):
        del key, x
        spec = params.spec
        if spec.privacy_layers:
            return P.layer_cut(spec.n_layers, spec.n_heads, spec.privacy_layers)
        return P.cloud_only(spec.n_layers)

    return Policy("cloud-only", act)


def edge_only() -> Policy:
    def act(key, x, params: EnvParams):
        del key, x
        return P.edge_only(params.spec.n_layers, params.spec.n_heads)

    return Policy("edge-only", act)


def cut_candidates(params: EnvParams) -> Partition:
    """Single layer cuts c in [privacy_layers, L] at every allowed precision, plus cloud-only
    when there is no privacy floor: a batch of partitions (static, built in NumPy)."""
    spec = params.spec
    parts = [P.layer_cut(spec.n_layers, spec.n_heads, c, q) for q in params.precisions
             for c in range(spec.privacy_layers, spec.n_layers + 1)]
    if not spec.privacy_layers:
        parts.append(P.cloud_only(spec.n_layers))
    return jax.tree.map(lambda *x: jnp.stack(x), *parts)


def best_cut_for(link: LinkState, params: EnvParams) -> Partition:
    """The feasible candidate of least latency for ``link`` (edge-only if none is feasible)."""
    cands = cut_candidates(params)
    costs = jax.vmap(request_costs, in_axes=(0, None, None))(cands, link, params.spec)
    score = jnp.where(costs.feasible, costs.latency_s, jnp.inf)
    i = jnp.argmin(score)
    best = jax.tree.map(lambda x: x[i], cands)
    fallback = P.edge_only(params.spec.n_layers, params.spec.n_heads)
    return jax.tree.map(lambda a, b: jnp.where(jnp.isfinite(score[i]), a, b), best, fallback)


def best_cut(estimator: str = "last") -> Policy:
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        return best_cut_for(estimate_link(obs, estimator), params)

    return Policy("best-cut", act)


def mean_link(params: EnvParams) -> LinkState:
    """The stationary mean link (bandwidth, RTT, cloud share) of the scenario."""
    bw = params.bw_mean_mbps
    return LinkState(bw * params.link.up_ratio, bw, params.rtt_mean_ms, params.share_mean)


def static_cut() -> Policy:
    def act(key, x, params: EnvParams):
        del key, x
        return best_cut_for(mean_link(params), params)

    return Policy("static-cut", act)


def cvx(clairvoyant: bool = True, estimator: str = "last", iters: int = 3,
        **program_kw) -> Policy:
    """The cvxpy slot solver (Python; not jittable). One compiled program per spec; no DVFS
    unless ``dvfs=`` is given (the environment runs the edge at f_max)."""
    from lyapunov import cvx as cvx_mod

    program_kw.setdefault("dvfs", cvx_mod.DVFS(1.0))
    _check_estimator(estimator)
    programs: dict = {}

    def act(key, x, params: EnvParams):
        del key
        spec = params.spec
        # The program holds per-option memory and edge time: key it by the spec's content.
        leaves = b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(spec))
        shape = (hashlib.sha1(leaves).hexdigest(), spec.n_layers, spec.n_heads, spec.n_kv,
                 spec.d_model, spec.d_ff, spec.vocab, spec.privacy_layers, params.precisions)
        if shape not in programs:
            programs[shape] = cvx_mod.SlotProgram(spec, params.precisions, **program_kw)
        link = cost_link(x.link_t) if clairvoyant else estimate_link(x, estimator)
        res = cvx_mod.solve_slot_cvx(programs[shape], x.queues, link, spec, params.slot,
                                     iters=iters)
        return res.partition if res.partition is not None else cvx_mod.fallback_partition(spec)

    return Policy("cvx", act, clairvoyant=clairvoyant, jittable=False)


POLICIES: dict[str, Callable[..., Policy]] = {
    "oracle": oracle,
    "dp-estimate": dp_estimate,
    "cvx": cvx,
    "cloud-only": cloud_only,
    "edge-only": edge_only,
    "best-cut": best_cut,
    "static-cut": static_cut,
    "greedy": greedy,
}


def get_policy(name: str, **kw) -> Policy:
    """A policy by name (``POLICIES``); keyword arguments go to its constructor. The same
    arguments return the same object, so jitted rollouts of it are compiled once."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    try:
        return _cached_policy(name, tuple(sorted(kw.items())))
    except TypeError:  # unhashable argument
        return POLICIES[name](**kw)


@functools.lru_cache(maxsize=64)
def _cached_policy(name: str, kw: tuple) -> Policy:
    return POLICIES[name](**dict(kw))


def _check_estimator(estimator: str) -> None:
    if estimator not in ("last", "ewma"):
        raise ValueError(f"estimator must be 'last' or 'ewma', got {estimator!r}")
