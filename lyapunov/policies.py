"""Controllers of the slot environment behind one interface (docs/design.md §4), registered in
``lyapunov.registry`` (name, label, colour, role) at import.

A :class:`Policy` is ``act(key, x, params) -> Partition`` where ``x`` is what it may see: the
full ``EnvState`` for a clairvoyant policy (it reads the current slot's link ``state.link_t``),
the ``Obs`` (queues and measurements up to the previous slot) for every causal one.
``jittable`` policies are pure JAX (``simulate`` runs them in ``lax.scan``); the cvx policy
calls cvxpy from Python.

- ``oracle``: the exact slot minimizer (``lyapunov.oracle.solve_slot``) on the slot's link.
- ``dp-estimate``: the same exact solver on a past-based link estimate: the last measured slot
  (``estimator="last"``, default) or the EWMA of the measurements (``"ewma"``).
- ``dp-joint``: dp-estimate with the joint penalty ``JOINT_PENALTY`` (latency + 0.05 s/J edge
  energy + 0.2 s/% accuracy drop) in place of the scenario's.
- ``cvx``: the cvxpy program (``lyapunov.cvx``), tangent iterations on the concave objective,
  rounded; clairvoyant by default, so that its gap to the oracle is the solver's alone.
- ``cloud-only``: everything on the cloud (with a privacy floor: the floor's layers on the
  edge, the rest on the cloud, since cloud-only is not allowed).
- ``edge-only``: everything on the edge (infeasible, hence penalized, where memory forbids).
- ``best-cut``: the member of the layer-wise family (edge-only, cloud-only, every single cut,
  at every precision; ``costmodel.strategies.best_layer_cut``) of least latency for the
  estimated link, memory-feasible.
- ``static-cut``: the same, designed once for the stationary mean link.
- ``neurosurgeon``: Neurosurgeon-style (Kang et al., ASPLOS 2017): the same family, the cut
  chosen by per-layer latency regressions fitted to a few profiled samples, not the exact
  model.
- ``dp-outage``: dp-estimate made outage-aware (the estimated outage risk of the coming slot
  against the price of a caught request, docs/design.md §2.7).
- ``greedy``: minimizes the penalty alone on the estimated link, ignoring the queues.
- ``dp-bayes``: the expected slot DPP under the predictive law of the slot's link given the
  observed history and the link processes' own dynamics (``predictive_links``), minimized over
  a candidate set built by the exact solver (``dp_bayes``).

The solver-based factories (oracle, dp-estimate, dp-outage, dp-joint, greedy, dp-bayes) take the
options of ``solve_slot`` (``max_solves``, ``nu_iters``, ``units``) as keywords, and solve in the
scenario's option space (``EnvParams.tp``: with it, the tensor-parallel FFN and the residual
on both sides, docs/design.md §2.8). The layer-wise baselines (best-cut, static-cut,
neurosurgeon) and cloud-/edge-only keep their meaning in either space; cvx builds its program
in the scenario's space too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodel import partition as P
from costmodel.costs import TOKEN_BYTES, pass_terms, request_costs, xfer_time
from costmodel.link import LinkState
from costmodel.partition import Partition
from costmodel.strategies import best_layer_cut, layer_wise_batch
from lyapunov import registry
from lyapunov.env import EnvParams, EnvState, Obs, cost_link, mean_link
from lyapunov.oracle import PenaltyWeights, solve_slot
from lyapunov.queues import Queues

# The joint penalty of dp-joint: latency [s] + 0.05 s/J edge energy + 0.2 s/% accuracy drop.
JOINT_ENERGY_S_PER_J = 0.05
JOINT_ACCURACY_S_PER_PCT = 0.2


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


def slot_solution(queues: Queues, link: LinkState, params: EnvParams, sp=None, **solver_kw):
    """``lyapunov.oracle.solve_slot`` on the scenario's spec, in its option space and memory
    regime (``EnvParams.tp``, ``EnvParams.memory_can_bind``), with ``sp`` in place of its
    ``SlotParams`` if given."""
    return solve_slot(queues, link, params.spec, params.slot if sp is None else sp,
                      params.precisions, tp=params.tp, memory_can_bind=params.memory_can_bind,
                      **solver_kw)


def oracle(**solver_kw) -> Policy:
    """``solver_kw``: max_solves, nu_iters, units of ``solve_slot`` (defaults otherwise; all
    solver-based policies then share one compiled ``solve_slot``)."""

    def act(key, state: EnvState, params: EnvParams):
        del key
        return slot_solution(state.queues, cost_link(state.link_t), params,
                             **solver_kw).partition

    return Policy("oracle", act, clairvoyant=True)


def dp_estimate(estimator: str = "last", **solver_kw) -> Policy:
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        link = estimate_link(obs, estimator)
        return slot_solution(obs.queues, link, params, **solver_kw).partition

    return Policy("dp-estimate", act)


def outage_probability(obs: Obs) -> jnp.ndarray:
    """Probability that the coming slot has an outage, from what the edge has measured: a
    two-state Markov chain whose transition probabilities are estimated by Laplace's rule of
    succession. After an outage: (down->down transitions in the history window + 1) / (down
    slots with a successor + 2). While up: 1 / (slots since the last outage + 2), the rule of
    succession on the run of up slots (``Obs.since_outage``; a long clean run drives it to 0)."""
    down = obs.bw_hist <= 0
    dd = jnp.sum(down[:-1] & down[1:])
    d_from = jnp.sum(down[:-1])
    after_outage = (dd + 1.0) / (d_from + 2.0)
    while_up = 1.0 / (obs.since_outage.astype(jnp.float32) + 2.0)
    return jnp.where(down[-1], after_outage, while_up)


def outage_aware_choice(part: Partition, obs: Obs, link: LinkState, params: EnvParams,
                        p_out) -> Partition:
    """``part`` or edge-only, whichever has the lower *expected* slot DPP when the coming slot
    has an outage with probability ``p_out``: a partition that crosses the link pays the
    outage's price (``costmodel.outage``: the retry waits, then the edge fallback) in that
    case; edge-only never crosses. Both are scored with the environment's DPP expression
    (arrivals dropped: they are the same for both)."""
    from costmodel.outage import with_outage
    from lyapunov.oracle import slot_dpp

    spec, sp = params.spec, params.slot
    edge = P.edge_only(spec.n_layers, spec.n_heads)
    down = link.replace(bw_up_mbps=jnp.float32(0.0), bw_down_mbps=jnp.float32(0.0))
    zero = jnp.float32(0.0)

    def dpp(p, lk):
        oc = with_outage(p, lk, spec, params.retry_wait_s, params.retry_resumes,
                         mean_link(params))
        ok = oc.runnable & ~oc.failed
        j = slot_dpp(oc.costs, obs.queues, zero, sp)
        # a failed request: no service, the failure penalty
        j_fail = sp.V * params.failure_penalty
        return jnp.where(oc.runnable, jnp.where(ok, j, j_fail), jnp.inf)

    # The three (partition, link) pairs through one traced cost model (vmap): a third of the
    # program to compile.
    pair = jax.tree.map(lambda *x: jnp.stack(x), part, part, edge)
    links = jax.tree.map(lambda *x: jnp.stack(x), link, down, link)
    j_up, j_down, j_edge = jax.vmap(dpp)(pair, links)
    j_part = (1.0 - p_out) * j_up + p_out * j_down
    use_edge = j_edge < j_part
    return jax.tree.map(lambda a, b: jnp.where(use_edge, a, b), edge, part)


def dp_outage(estimator: str = "last", **solver_kw) -> Policy:
    """dp-estimate made outage-aware: the exact slot minimizer on the estimated link, then
    edge-only instead where the estimated outage risk (``outage_probability``) makes crossing
    the link cost more in expectation (``outage_aware_choice``)."""
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        link = estimate_link(obs, estimator)
        up = link.replace(bw_up_mbps=jnp.where(link.bw_up_mbps > 0, link.bw_up_mbps,
                                               params.bw_mean_mbps * params.link.up_ratio),
                          bw_down_mbps=jnp.where(link.bw_down_mbps > 0, link.bw_down_mbps,
                                                 params.bw_mean_mbps))
        part = slot_solution(obs.queues, up, params, **solver_kw).partition
        p_out = outage_probability(obs)
        return outage_aware_choice(part, obs, up, params, p_out)

    return Policy("dp-outage", act)


def joint_penalty() -> PenaltyWeights:
    """The penalty of dp-joint (float32 leaves)."""
    f = jnp.float32
    return PenaltyWeights(f(1.0), f(JOINT_ENERGY_S_PER_J), f(JOINT_ACCURACY_S_PER_PCT), f(0.0))


def dp_joint(estimator: str = "last", **solver_kw) -> Policy:
    """dp-estimate minimizing the joint penalty (``joint_penalty``) whatever the scenario's."""
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        link = estimate_link(obs, estimator)
        sp = params.slot.replace(penalty=joint_penalty())
        return slot_solution(obs.queues, link, params, sp, **solver_kw).partition

    return Policy("dp-joint", act)


def greedy(estimator: str = "last", **solver_kw) -> Policy:
    """Penalty only: the slot objective with empty queues and V = 1 (penalty minimizer)."""
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        link = estimate_link(obs, estimator)
        sp = params.slot.replace(V=jnp.float32(1.0))
        return slot_solution(Queues.zeros(), link, params, sp, **solver_kw).partition

    return Policy("greedy", act)


def cloud_only() -> Policy:
    def act(key, x, params: EnvParams):
        del key, x
        spec = params.spec  # under a privacy floor: the floor on the edge, the rest on the cloud
        on_edge = jnp.arange(spec.n_layers) < spec.privacy_layers
        return P.Partition(jnp.where(on_edge, spec.n_heads, 0).astype(jnp.int32),
                           jnp.where(on_edge, P.EDGE, P.CLOUD).astype(jnp.int32), jnp.int32(0),
                           spec.privacy_layers > 0, jnp.zeros(spec.n_layers, jnp.int32))

    return Policy("cloud-only", act)


def edge_only() -> Policy:
    def act(key, x, params: EnvParams):
        del key, x
        return P.edge_only(params.spec.n_layers, params.spec.n_heads)

    return Policy("edge-only", act)


def best_cut_for(link: LinkState, params: EnvParams) -> Partition:
    """The layer-wise family's member of least latency for ``link`` (edge-only if none is
    feasible): ``costmodel.strategies.best_layer_cut`` at the scenario's precisions."""
    return best_layer_cut(link, params.spec, params.precisions)


def best_cut(estimator: str = "last") -> Policy:
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        return best_cut_for(estimate_link(obs, estimator), params)

    return Policy("best-cut", act)


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
                 spec.d_model, spec.d_ff, spec.vocab, int(spec.privacy_layers), params.precisions,
                 params.tp)
        if shape not in programs:
            programs[shape] = cvx_mod.SlotProgram(spec, params.precisions,
                                                  **{"tp": params.tp, **program_kw})
        link = cost_link(x.link_t) if clairvoyant else estimate_link(x, estimator)
        res = cvx_mod.solve_slot_cvx(programs[shape], x.queues, link, spec, params.slot,
                                     iters=iters)
        return res.partition if res.partition is not None else cvx_mod.fallback_partition(spec)

    return Policy("cvx", act, clairvoyant=clairvoyant, jittable=False)


def get_policy(name: str, **kw) -> Policy:
    """A registered model-based policy by name (``lyapunov.registry.resolve``); keyword
    arguments go to its factory, and the same arguments return the same object."""
    return registry.resolve(name, **kw)[0]


def _check_estimator(estimator: str) -> None:
    if estimator not in ("last", "ewma"):
        raise ValueError(f"estimator must be 'last' or 'ewma', got {estimator!r}")


def _register(name, factory, label, color, style, role, help, clairvoyant=False):
    registry.register(registry.PolicySpec(name, factory, label, color, tuple(style.items()),
                                          role, help, clairvoyant=clairvoyant))


_register("oracle", oracle, "clairvoyant DPP oracle (upper bound)", "#000000",
          dict(lw=1.1, ls="--"), "reference",
          "exact slot DPP minimizer on the current slot's link (clairvoyant)", clairvoyant=True)
_register("dp-estimate", dp_estimate,
          "ours, model-based: DPP solved exactly on last-slot estimate", "#e7298a",
          dict(lw=1.3), "ours", "exact slot DPP minimizer on the last measured link")
_register("dp-outage", dp_outage,
          "ours, model-based, outage-aware: dp-estimate weighing the estimated outage risk",
          "#c51b7d", dict(lw=1.3, ls="--"), "ours",
          "dp-estimate that falls back to edge-only where the estimated outage risk costs more")
_register("dp-joint", dp_joint,
          "ours, model-based, joint penalty (latency + 0.05 s/J energy + 0.2 s/% accuracy)",
          "#1b7837", dict(lw=1.3, ls="-."), "ours",
          "dp-estimate with the joint latency/energy/accuracy penalty")
_register("cvx", cvx, "cvxpy relaxation, rounded (clairvoyant)", "#7f7f7f", dict(lw=1.1, ls=":"),
          "reference", "the slot problem as a cvxpy program, rounded (clairvoyant; slow)",
          clairvoyant=True)
_register("cloud-only", cloud_only, "cloud-only", "#7570b3", dict(lw=3.0, alpha=0.45),
          "baseline", "every block on the cloud (the privacy floor's layers on the edge)")
_register("edge-only", edge_only, "edge-only", "#1b9e77", dict(lw=1.3), "baseline",
          "every block on the edge")
_register("best-cut", best_cut, "best layer cut (adaptive, exact cost model)", "#d95f02",
          dict(lw=3.0, alpha=0.45), "baseline",
          "fastest of edge-only, cloud-only and every single cut on the last measured link")
_register("static-cut", static_cut, "static best cut (mean link)", "#a6761d",
          dict(lw=1.3, ls=":"), "baseline", "the best layer cut for the mean link, fixed")
_register("greedy", greedy, "greedy penalty-only", "#66a61e", {}, "baseline",
          "penalty minimizer on the last measured link, ignoring the queues")


# --- neurosurgeon: a layer cut from fitted per-layer latency models ------------------------

NS_PROFILE_TOKENS = (1.0, 4.0, 16.0, 64.0, 256.0)  # tokens per pass of the profiled samples


def fit_layer_latency(spec) -> jnp.ndarray:
    """float [2, 2]: per-layer latency models ``t(n) = a + b n`` of a pass over ``n`` tokens,
    row 0 the edge, row 1 the cloud (unloaded, share 1), fitted by least squares in relative
    error to the cost model's time of one whole layer at ``NS_PROFILE_TOKENS`` (the profiling
    step of Neurosurgeon, Kang et al., ASPLOS 2017: a regression per layer type from a handful
    of measurements; here every layer is one type). The fit misses what a two-parameter line
    cannot hold: the roofline's kink between memory- and compute-bound passes and the KV-cache
    reads of decoding."""
    n = jnp.asarray(NS_PROFILE_TOKENS, jnp.float32)
    unloaded = LinkState(jnp.float32(1.0), jnp.float32(1.0), jnp.float32(0.0), jnp.float32(1.0))
    ctx = (n + 1.0) / 2.0
    i32 = jnp.int32
    edge = pass_terms(i32(P.EDGE), i32(spec.n_heads), i32(P.EDGE), 0, unloaded, spec, n, ctx,
                      0.0).latency
    cloud = pass_terms(i32(P.CLOUD), i32(0), i32(P.CLOUD), 0, unloaded, spec, n, ctx,
                       0.0).latency

    def fit(t):
        x = jnp.stack([jnp.ones_like(n), n], 1) / t[:, None]
        return jnp.linalg.lstsq(x, jnp.ones_like(t))[0]

    return jnp.stack([fit(edge), fit(cloud)])


def neurosurgeon_latency(coef, cands: Partition, link: LinkState, spec) -> jnp.ndarray:
    """float [K]: latency the fitted models predict for each layer-wise candidate (a prefill
    pass over the prompt and one pass per new token): the edge's layers at ``coef[0]``, the
    cloud's at ``coef[1]`` divided by the cloud share, and per pass one crossing of the cut's
    activation up and a round trip (the sampled token comes back); for cloud-only the prompt's
    token ids and one round trip (the new tokens stream back)."""
    s, t, n_l = spec.prompt_tokens, spec.new_tokens, spec.n_layers
    n_edge = (cands.ffn == P.EDGE).sum(-1).astype(jnp.float32)
    per_request = coef[:, 0] * (1.0 + t) + coef[:, 1] * (s + t)  # [side]
    compute = (n_edge * per_request[0]
               + (n_l - n_edge) * per_request[1] / jnp.maximum(link.cloud_share, 1e-6))
    bw_up = link.bw_up_mbps * 1e6 / 8.0
    rtt = link.rtt_ms * 1e-3
    act = (s + t) * spec.d_model * spec.act_bytes[cands.act_prec]
    crossing = jnp.where(cands.embed_edge, (1.0 + t) * rtt + xfer_time(act, bw_up),
                         rtt + xfer_time(s * TOKEN_BYTES, bw_up))
    return compute + jnp.where(n_edge < n_l, crossing, 0.0)


def neurosurgeon_cut(link: LinkState, params: EnvParams) -> Partition:
    """The layer-wise candidate of least *predicted* latency (``neurosurgeon_latency``) among
    the memory-feasible ones that keep the privacy floor; edge-only if none is."""
    spec = params.spec
    cands = layer_wise_batch(spec, params.precisions)
    pred = neurosurgeon_latency(fit_layer_latency(spec), cands, link, spec)
    costs = jax.vmap(request_costs, in_axes=(0, None, None))(cands, link, spec)
    score = jnp.where(costs.memory_ok & costs.privacy_ok & jnp.isfinite(pred), pred, jnp.inf)
    i = jnp.argmin(score)
    i = jnp.where(jnp.isfinite(score[i]), i, 0)  # candidate 0 is edge-only
    return jax.tree.map(lambda x: x[i], cands)


def neurosurgeon(estimator: str = "last") -> Policy:
    """Neurosurgeon-style baseline: the layer cut chosen from fitted per-layer latency models
    (``fit_layer_latency``) for the estimated bandwidth, RTT and cloud share, instead of the
    exact cost model that best-cut uses. The fit depends on the spec only, so it runs inside
    ``act`` (pure JAX, five profiled samples per side): the same as profiling once at
    deployment, and the policy stays jittable and vmappable over scenarios."""
    _check_estimator(estimator)

    def act(key, obs: Obs, params: EnvParams):
        del key
        return neurosurgeon_cut(estimate_link(obs, estimator), params)

    return Policy("neurosurgeon", act)


_register("neurosurgeon", neurosurgeon,
          "Neurosurgeon-style cut (fitted per-layer latency regression)", "#a6cee3",
          dict(lw=1.3, ls="--"), "baseline",
          "layer cut of least latency under fitted per-layer regressions (Kang et al. 2017)")


# --- dp-bayes: the expected slot DPP under the predictive law of the slot's link -----------


def _normal_nodes(n: int):
    """Gauss-Hermite nodes and normalized weights of N(0, 1) (probabilists' Hermite)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return jnp.asarray(x, jnp.float32), jnp.asarray(w / w.sum(), jnp.float32)


def _ar1_nodes(p, value, lag, known, n: int):
    """Values and weights of an AR(1) process (``processes.AR1Params``) ``lag`` slots after
    it emitted ``value`` (its stationary law when not ``known``): the latent is Gaussian,
    ``mean + rho^lag (x - mean)`` with variance ``std^2 (1 - rho^(2 lag))``; Gauss-Hermite
    nodes of it through the process's transform and floor."""
    from lyapunov import processes as proc

    if p.transform == "exp":
        x = jnp.log(jnp.maximum(value, 1e-6))
    elif p.transform == "sigmoid":
        v = jnp.clip(value, 1e-6, 1.0 - 1e-6)
        x = jnp.log(v / (1.0 - v))
    else:
        x = value
    r = jnp.where(known, p.rho ** lag.astype(jnp.float32), 0.0)
    mu = p.mean + r * (x - p.mean)
    sd = p.std * jnp.sqrt(jnp.maximum(1.0 - r**2, 0.0))
    z, w = _normal_nodes(n)
    vals = jnp.maximum(proc._TRANSFORMS[p.transform](mu + sd * z), p.floor)
    if p.transform == "sigmoid":
        vals = jnp.minimum(vals, 1.0)
    return vals, w


def _markov_nodes(p, value, lag, known):
    """Levels and predictive probabilities of a Markov chain ``lag`` slots after it emitted
    ``value`` (the level nearest to it; the stationary law when not ``known``)."""
    k = p.levels.shape[0]
    s = jnp.argmin(jnp.abs(p.levels - value))
    row = jax.nn.one_hot(s, k, dtype=jnp.float32)

    def power(v, i):
        v2 = v @ p.transition
        return jnp.where(i < lag, v2, v), None

    row, _ = jax.lax.scan(power, row, jnp.arange(64))
    stat = jnp.asarray(p.init_probs, jnp.float32)
    return p.levels, jnp.where(known, row, stat)


def _replay_nodes(p, value, key, n: int):
    """The successors of the ``n`` slots of a replayed series whose values are nearest to
    ``value`` (in log1p), equal weights: the series' own empirical one-step conditional law
    (ties broken at random by ``key``)."""
    v = p.values  # padded to its bucket: slots i >= N are never candidates
    i = jnp.arange(v.shape[0])
    nxt = v[(i + 1) % p.n()]
    d = jnp.abs(jnp.log1p(v) - jnp.log1p(value))
    d = jnp.where(i < p.n(), d + 1e-6 * jax.random.uniform(key, d.shape), jnp.inf)
    m = min(n, int(v.shape[0]))
    _, idx = jax.lax.top_k(-d, m)  # nearest first
    k = jnp.minimum(m, p.n())  # a series shorter than m: its k slots, the rest weightless
    used = jnp.arange(m) < k
    nodes = jnp.where(used, nxt[idx], nxt[idx[0]])
    return nodes, jnp.where(used, 1.0 / k, 0.0).astype(jnp.float32)


def _component_nodes(p, value, lag, known, key, n: int):
    from lyapunov import processes as proc

    if isinstance(p, proc.AR1Params):
        return _ar1_nodes(p, value, lag, known, n)
    if isinstance(p, proc.MarkovParams):
        return _markov_nodes(p, value, lag, known)
    if isinstance(p, proc.ReplayParams):
        return _replay_nodes(p, value, key, n)
    raise TypeError(f"dp-bayes: no predictive law for {type(p).__name__}")


def predictive_links(key, obs: Obs, params: EnvParams, n_bw: int = 8, n_share: int = 4):
    """(LinkState [K], weights [K], outage probability []) : the predictive law of the coming
    slot's link given the observation and the link processes' parameters (EnvParams.link).

    Bandwidth: an AR(1) (on the log, by default) is predicted from its latest measured value
    (``lag`` slots back when the latest slots were outages; its stationary law when the whole
    history window was down) by ``n_bw`` Gauss-Hermite nodes of the Gaussian latent; a Markov
    chain by its levels with the ``lag``-step transition row of the level measured; a replayed
    trace by its own empirical one-step conditional: the successors of its ``n_bw`` slots
    nearest in value to the last measurement (zero-throughput slots of the trace included).
    Cloud share: the same per kind with ``n_share`` nodes, from the last measurement. The two
    are independent (a product grid, ``K = n_bw' * n_share'``). RTT: its mean (i.i.d. jitter).
    Outages of the link's up/down chain (``LinkParams.outage``): their one-step probability
    from the last slot's state, returned apart (the caller prices the outage link).
    """
    lk = params.link
    k_bw, k_sh = jax.random.split(key)
    hist = obs.bw_hist
    h = hist.shape[0]
    up = hist > 0
    last_up = jnp.max(jnp.where(up, jnp.arange(h), -1))
    known = last_up >= 0
    lag = jnp.where(known, h - last_up, 1).astype(jnp.int32)
    bw_last_up = jnp.where(known, hist[jnp.maximum(last_up, 0)], params.bw_mean_mbps)
    from lyapunov import processes as proc

    if isinstance(lk.bandwidth, proc.ReplayParams):
        bw, wb = _replay_nodes(lk.bandwidth, obs.link_last.bw_down_mbps, k_bw, n_bw)
    else:
        bw, wb = _component_nodes(lk.bandwidth, bw_last_up, lag, known, k_bw, n_bw)
    share, ws = _component_nodes(lk.share, obs.link_last.cloud_share, jnp.int32(1),
                                 jnp.bool_(True), k_sh, n_share)
    bw_g = jnp.repeat(bw, share.shape[0])
    sh_g = jnp.tile(share, bw.shape[0])
    w = (wb[:, None] * ws[None, :]).reshape(-1)
    rtt = jnp.broadcast_to(params.rtt_mean_ms, bw_g.shape)
    links = LinkState(bw_g * lk.up_ratio, bw_g, rtt, sh_g)
    if lk.outage is None:
        p_out = jnp.float32(0.0)
    else:
        was_down = ~obs.link_last.up
        p_out = jnp.where(was_down, 1.0 - lk.outage.p_recover, lk.outage.p_fail)
    return links, w, p_out.astype(jnp.float32)


def expected_slot_dpp(part: Partition, links: LinkState, weights, p_out, queues: Queues,
                      params: EnvParams):
    """The slot's DPP expression (arrivals dropped: they do not depend on the action) of
    ``part`` averaged over the link draws ``links`` [K] with ``weights``, and with probability
    ``p_out`` over an outage of the link; every draw priced as the environment prices it
    (``costmodel.outage.with_outage``: a request caught by an outage waits and resumes or falls
    back, docs/design.md §2.7; a failed request pays the failure penalty). +inf for a partition
    that can never run (memory, privacy floor). Nominal cost model (``params.spec``)."""
    from costmodel.outage import with_outage
    from lyapunov.oracle import penalty_value
    from lyapunov.queues import dpp_objective, service_rate

    spec, sp = params.spec, params.slot
    resume = mean_link(params)

    def one(lk):
        oc = with_outage(part, lk, spec, params.retry_wait_s, params.retry_resumes, resume)
        c = oc.costs
        ok = oc.runnable & ~oc.failed
        lat = jnp.where(oc.runnable, c.latency_s, jnp.inf)
        dep = jnp.where(oc.runnable, service_rate(lat, sp.tau), 0.0)
        e = jnp.where(oc.runnable, c.energy_j, 0.0)
        a = jnp.where(ok, c.accuracy_drop, 0.0)
        cc = jnp.where(ok, c.cloud_cost, 0.0)
        pen = jnp.where(ok, penalty_value(sp.penalty, jnp.where(ok, lat, 0.0), e, a, cc),
                        params.failure_penalty)
        j = dpp_objective(queues, sp.V, pen, 0.0, dep, e, a, cc, sp.budgets)
        return jnp.where(oc.runnable, j, jnp.inf)

    down = jax.tree.map(lambda x: x[:1], links)
    down = down.replace(bw_up_mbps=jnp.zeros(1), bw_down_mbps=jnp.zeros(1))
    # The draws and the outage through one traced cost model (vmap).
    j = jax.vmap(one)(concat_batches(links, down))
    j_up = jnp.sum(weights * j[:-1])
    j_down = jnp.where(p_out > 0, j[-1], 0.0)
    return (1.0 - p_out) * j_up + p_out * j_down


def bayes_candidates(key, obs: Obs, params: EnvParams, n_bw: int = 8, n_share: int = 4,
                     **solver_kw):
    """(candidates [K + 3] Partition, links [K], weights [K], outage probability): dp-bayes's
    candidate set under the predictive law of the coming slot's link (``predictive_links``):
    the exact slot minimizer of each of the K draws (``lyapunov.oracle.solve_slot``), the
    minimizer at the predictive mean link, the minimizer at the last measured link
    (dp-estimate's choice) and edge-only (never crosses the link)."""
    links, w, p_out = predictive_links(key, obs, params, n_bw, n_share)
    spec = params.spec

    def solve(lk):
        return slot_solution(obs.queues, lk, params, **solver_kw).partition

    mean = LinkState(jnp.sum(w * links.bw_up_mbps), jnp.sum(w * links.bw_down_mbps),
                     params.rtt_mean_ms, jnp.sum(w * links.cloud_share))
    last = estimate_link(obs, "last")
    # The K draws, the mean and the last link through one traced slot solver (vmap).
    solved = jax.vmap(solve)(concat_batches(links, jax.tree.map(lambda *x: jnp.stack(x),
                                                                 mean, last)))
    edge = jax.tree.map(lambda x: x[None], P.edge_only(spec.n_layers, spec.n_heads))
    return concat_batches(solved, edge), links, w, p_out


def concat_batches(*batches):
    """Batches of one pytree structure (partitions, links) joined along the leading axis
    (dtypes of the first)."""
    return jax.tree.map(lambda a, *bs: jnp.concatenate([a, *(b.astype(a.dtype) for b in bs)]),
                        *batches)


def expected_scores(cands: Partition, links, weights, p_out, queues: Queues, params: EnvParams):
    """``expected_slot_dpp`` of each partition of the batch ``cands`` (NaN read as +inf)."""
    scores = jax.vmap(lambda c: expected_slot_dpp(c, links, weights, p_out, queues,
                                                  params))(cands)
    return jnp.where(jnp.isnan(scores), jnp.inf, scores)


def dp_bayes(n_bw: int = 8, n_share: int = 4, **solver_kw) -> Policy:
    """The expected-DPP planner: minimizes the slot's DPP expression averaged over the
    predictive law of the slot's link (``predictive_links``: the processes' own dynamics from
    the observed history) and its outage risk (``expected_slot_dpp``).

    The expectation of the DPP over K link draws is not a weighted sum over layers (the
    latency enters through the concave ``-Q tau / latency``), so it is minimized exactly over
    a candidate set (``bayes_candidates``), not over every partition: the exact slot
    minimizer of each of the K draws, the minimizer at the predictive mean link, the
    minimizer at the last measured link (dp-estimate's choice, so its expected DPP is never
    above dp-estimate's under the same predictive law) and edge-only (never crosses the link).
    A partition optimal for the average is often optimal for some draw, but not always: the
    result is exact over the candidate set, an upper bound on the expected-DPP minimum."""

    def act(key, obs: Obs, params: EnvParams):
        cands, links, w, p_out = bayes_candidates(key, obs, params, n_bw, n_share, **solver_kw)
        scores = expected_scores(cands, links, w, p_out, obs.queues, params)
        return jax.tree.map(lambda x: x[jnp.argmin(scores)], cands)

    return Policy("dp-bayes", act)


_register("dp-bayes", dp_bayes,
          "ours, model-based: expected DPP under the predictive link law (dp-bayes)",
          "#7b3294", dict(lw=1.5, ls="-"), "ours",
          "minimizes the expected slot DPP under the predictive law of the coming slot's "
          "bandwidth and cloud share (the processes' dynamics, given the history)")
