"""The slot environment, gymnax style: pure ``reset(key, params)`` and ``step(key, state,
action, params)`` over pytrees, jit- and vmap-able, no hidden state (system-model sections 3-4).

One step is one slot of ``tau`` seconds. At the start of slot ``t`` the controller sees an
:class:`Obs` built from slots ``< t`` (queues, the last measured link, its EWMA and a short
history, the arrival-rate estimate) and picks a ``costmodel.partition.Partition``. The slot's
own link state ``link_t`` (drawn at the end of the previous step and kept in the state, hidden
from the observation; the clairvoyant oracle reads it from the state) drives its costs:

- ``mu = tau / latency`` requests served (work-conserving, fractional), ``A(t)`` arrivals drawn
  from the arrival process during the slot (served from ``t + 1``);
- ``e, a, c``: the per-request edge energy, accuracy drop and cloud cost of the partition in
  this slot's link; the virtual queues carry them against *per-request* budgets
  (``lyapunov.queues``, ``lyapunov.oracle``);
- penalty ``p = w_l l + w_e e + w_a a + w_c c`` (latency by default) and the drift-plus-penalty
  expression ``V p + Q (A - mu) + sum_i Z_i (x_i - x_bar_i)``; reward ``= -DPP / reward_scale``.

**Infeasible actions.** A partition over the edge memory budget, violating the privacy floor,
or crossing the link while it is down (latency ``inf``) cannot run: the slot serves nothing
(``mu = 0``), charges nothing to the virtual queues (``e = a = c = 0``), its penalty is
``infeasible_penalty`` and ``infeasible_cost`` is added to its DPP (so that, with the default,
an infeasible action never minimizes a slot's DPP at moderate queue lengths). ``info.feasible``
is False and ``info.latency_s`` is the cost model's latency (``inf`` on a link failure).

Every metric of a slot is computed once, here, and returned in :class:`StepInfo`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from costmodel.accuracy import AccuracyProfile
from costmodel.cards import ModelCard
from costmodel.costs import request_costs
from costmodel.link import LinkState, Workload
from costmodel.partition import ACT_PRECISIONS, Partition
from costmodel.profiles import DeviceProfile, get_profile
from costmodel.spec import CostSpec, make_spec
from lyapunov import processes as proc
from lyapunov.oracle import PenaltyWeights, SlotParams, penalty_value
from lyapunov.queues import Budgets, Queues, dpp_objective, service_rate, update_queues


class ScenarioError(ValueError):
    """A bad scenario field; the message names it."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One experiment's slot environment (validated at construction; ``build()`` -> params).

    model: model card name (``costmodel.cards``) or a ModelCard.
    device: edge device profile name or a DeviceProfile.
    cloud: "datacenter" (remote GPU) or "mec" (nearby edge server), or a DeviceProfile.
    prompt_tokens, new_tokens: the request (prefill, decode steps).
    tau_s: slot length, s.
    V: penalty weight of the drift-plus-penalty controller (>= 0).
    e_bar_j, a_bar, c_bar_usd: average per-request budgets of edge energy (J), accuracy drop
      (% perplexity) and cloud cost (USD); ``inf`` = no budget (its virtual queue stays 0).
    pen_latency, pen_energy, pen_accuracy, pen_cloud_cost: penalty weights (>= 0).
    arrival: arrival process (``lyapunov.processes.ArrivalConfig``, requests per slot).
    link: bandwidth / RTT / cloud-share / outage processes (``LinkConfig``).
    privacy_layers: embedding and the first k layers stay on the edge.
    precisions: activation precisions the controller may use (indices of ACT_PRECISIONS).
    mem_budget_gb: override of the edge device's memory budget (None: the profile's).
    accuracy: override of the accuracy terms (None: ``costmodel.accuracy``).
    infeasible_penalty: penalty of a slot whose action cannot run (penalty units).
    infeasible_cost: added to the DPP of such a slot.
    ewma: smoothing weight of the link EWMA estimate (weight of the newest sample).
    lam_ewma: smoothing weight of the arrival-rate estimate.
    history: past slots of bandwidth and cloud share in the observation.
    episode_slots: ``done`` after this many slots.
    reward_scale: reward = -DPP / reward_scale.
    """

    model: str | ModelCard = "llama-7b"
    device: str | DeviceProfile = "rpi5"
    cloud: str | DeviceProfile = "datacenter"
    prompt_tokens: int = 128
    new_tokens: int = 32
    tau_s: float = 2.0
    V: float = 10.0
    e_bar_j: float = math.inf
    a_bar: float = math.inf
    c_bar_usd: float = math.inf
    pen_latency: float = 1.0
    pen_energy: float = 0.0
    pen_accuracy: float = 0.0
    pen_cloud_cost: float = 0.0
    arrival: proc.ArrivalConfig = proc.ArrivalConfig()
    link: proc.LinkConfig = proc.LinkConfig()
    privacy_layers: int = 0
    precisions: tuple[int, ...] = (0, 1, 2)
    mem_budget_gb: float | None = None
    accuracy: AccuracyProfile | None = None
    infeasible_penalty: float = 60.0
    infeasible_cost: float = 1e6
    ewma: float = 0.3
    lam_ewma: float = 0.05
    history: int = 8
    episode_slots: int = 1000
    reward_scale: float = 1.0

    def __post_init__(self):
        def num(field, lo, lo_open=False, allow_inf=False):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
                raise ScenarioError(f"Scenario.{field} must be a number, got {v!r}")
            if (v <= lo if lo_open else v < lo) or (math.isinf(v) and not allow_inf):
                raise ScenarioError(f"Scenario.{field} must be {'>' if lo_open else '>='} {lo}"
                                    f"{'' if allow_inf else ' and finite'}, got {v!r}")

        def integer(field, lo):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ScenarioError(f"Scenario.{field} must be an integer >= {lo}, got {v!r}")

        num("tau_s", 0.0, lo_open=True)
        num("V", 0.0)
        for f in ("e_bar_j", "a_bar", "c_bar_usd"):
            num(f, 0.0, allow_inf=True)
        for f in ("pen_latency", "pen_energy", "pen_accuracy", "pen_cloud_cost",
                  "infeasible_penalty", "infeasible_cost"):
            num(f, 0.0)
        num("reward_scale", 0.0, lo_open=True)
        for f in ("ewma", "lam_ewma"):
            num(f, 0.0, lo_open=True)
            if getattr(self, f) > 1:
                raise ScenarioError(f"Scenario.{f} must be in (0, 1], got {getattr(self, f)!r}")
        for f in ("prompt_tokens", "new_tokens", "history", "episode_slots"):
            integer(f, 1)
        integer("privacy_layers", 0)
        if self.mem_budget_gb is not None:
            num("mem_budget_gb", 0.0, lo_open=True)
        p = self.precisions
        if (not isinstance(p, tuple) or not p or len(set(p)) != len(p)
                or any(isinstance(q, bool) or q not in range(len(ACT_PRECISIONS)) for q in p)):
            raise ScenarioError(f"Scenario.precisions must be a non-empty tuple of distinct "
                                f"indices into {ACT_PRECISIONS}, got {p!r}")
        if not isinstance(self.arrival, proc.ArrivalConfig):
            raise ScenarioError("Scenario.arrival must be a lyapunov.processes.ArrivalConfig")
        if not isinstance(self.link, proc.LinkConfig):
            raise ScenarioError("Scenario.link must be a lyapunov.processes.LinkConfig")

    def build(self) -> EnvParams:
        """The params pytree (loads traces, validates the processes; errors name fields)."""
        return make_params(self)


@struct.dataclass
class EnvParams:
    """Scenario as a pytree. Array leaves can be vmapped; sizes and process kinds are static.

    bw_mean_mbps, share_mean, rtt_mean_ms: stationary means of the link processes (what a
    static policy designs for); lam_mean: stationary mean arrivals per slot.
    """

    spec: CostSpec
    slot: SlotParams
    arrivals: proc.PoissonParams | proc.MMPPParams
    link: proc.LinkParams
    lam_mean: jnp.ndarray
    bw_mean_mbps: jnp.ndarray
    share_mean: jnp.ndarray
    rtt_mean_ms: jnp.ndarray
    infeasible_penalty: jnp.ndarray
    infeasible_cost: jnp.ndarray
    ewma: jnp.ndarray
    lam_ewma: jnp.ndarray
    reward_scale: jnp.ndarray
    history: int = struct.field(pytree_node=False, default=8)
    episode_slots: int = struct.field(pytree_node=False, default=1000)
    precisions: tuple = struct.field(pytree_node=False, default=(0, 1, 2))


def _process_mean(p) -> float:
    """Stationary mean of a bandwidth or share process (NumPy, at build time)."""
    if isinstance(p, proc.MarkovParams):
        pi = proc.markov_stationary(np.asarray(p.transition))
        return float(pi @ np.asarray(p.levels))
    if isinstance(p, proc.ReplayParams):
        return float(np.mean(np.asarray(p.values)))
    if isinstance(p, proc.AR1Params):
        m, s, floor = float(p.mean), float(p.std), float(p.floor)
        x, w = np.polynomial.hermite_e.hermegauss(41)
        z = m + s * x
        if p.transform == "exp":
            v = np.exp(z)
        elif p.transform == "sigmoid":
            v = np.minimum(1.0 / (1.0 + np.exp(-z)), 1.0)
        else:
            v = z
        return float(np.sum(w * np.maximum(v, floor)) / np.sum(w))
    raise TypeError(f"not a link process: {type(p).__name__}")


def make_params(sc: Scenario) -> EnvParams:
    """Build :class:`EnvParams` from a validated :class:`Scenario`."""
    device = sc.device
    if sc.mem_budget_gb is not None:
        prof = get_profile(device, "edge") if isinstance(device, str) else device
        device = dataclasses.replace(prof, mem_budget_gb=float(sc.mem_budget_gb))
    spec = make_spec(sc.model, device, sc.cloud, Workload(sc.prompt_tokens, sc.new_tokens),
                     privacy_layers=sc.privacy_layers, accuracy=sc.accuracy)
    arrivals = proc.make_arrivals(sc.arrival)
    link = proc.make_link(sc.link, slot_s=sc.tau_s)
    f = jnp.float32
    slot = SlotParams(V=f(sc.V), tau=f(sc.tau_s),
                      budgets=Budgets(f(sc.e_bar_j), f(sc.a_bar), f(sc.c_bar_usd)),
                      penalty=PenaltyWeights(f(sc.pen_latency), f(sc.pen_energy),
                                             f(sc.pen_accuracy), f(sc.pen_cloud_cost)))
    rtt = link.rtt
    return EnvParams(
        spec=spec, slot=slot, arrivals=arrivals, link=link,
        lam_mean=f(proc.arrival_mean_rate(arrivals)),
        bw_mean_mbps=f(_process_mean(link.bandwidth)), share_mean=f(_process_mean(link.share)),
        rtt_mean_ms=f(float(rtt.base_ms) + float(rtt.jitter_ms)),
        infeasible_penalty=f(sc.infeasible_penalty), infeasible_cost=f(sc.infeasible_cost),
        ewma=f(sc.ewma), lam_ewma=f(sc.lam_ewma), reward_scale=f(sc.reward_scale),
        history=sc.history, episode_slots=sc.episode_slots, precisions=tuple(sc.precisions))


@struct.dataclass
class EnvState:
    """Everything the environment carries between slots (one env; vmap adds axes).

    queues: Q, Z_E, Z_A, Z_C at the start of slot t.
    link_t: slot t's link (drives this slot's costs; not in the observation).
    link_prev: slot t-1's link, as measured.
    link_ewma: EWMA of the measured links up to t-1 (a costmodel LinkState).
    bw_hist, share_hist: float [history] downlink Mbit/s and cloud share of slots
      t-history .. t-1 (most recent last).
    lam_hat: EWMA of past arrivals per slot (starts at the stationary mean).
    arr_state, link_state: latent states of the arrival and link processes.
    t: slot index.
    """

    queues: Queues
    link_t: proc.LinkSample
    link_prev: proc.LinkSample
    link_ewma: LinkState
    bw_hist: jnp.ndarray
    share_hist: jnp.ndarray
    lam_hat: jnp.ndarray
    arr_state: object
    link_state: proc.LinkState
    t: jnp.ndarray


@struct.dataclass
class Obs:
    """What a causal controller sees at the start of slot t (observations up to t-1)."""

    queues: Queues
    link_last: proc.LinkSample
    link_ewma: LinkState
    bw_hist: jnp.ndarray
    share_hist: jnp.ndarray
    lam_hat: jnp.ndarray
    t: jnp.ndarray


@struct.dataclass
class StepInfo:
    """Metrics of one slot (all float32 [] / bool []).

    latency_s: per-request latency of the action in this slot's link (inf: cannot run).
    energy_j, accuracy_drop, cloud_cost: per-request costs charged this slot (0 if infeasible).
    service: mu, requests served; arrivals: A(t); backlog: Q(t) at the start of the slot.
    penalty: p(t). dpp: the DPP expression; dpp_penalty (V p), dpp_backlog (Q (A - mu)),
      dpp_energy, dpp_accuracy, dpp_cloud (Z_i (x_i - x_bar_i)), dpp_infeasible: its terms.
    feasible, memory_ok, link_ok, privacy_ok: feasibility of the action.
    link_up: the link was up during the slot.
    """

    latency_s: jnp.ndarray
    energy_j: jnp.ndarray
    accuracy_drop: jnp.ndarray
    cloud_cost: jnp.ndarray
    service: jnp.ndarray
    arrivals: jnp.ndarray
    backlog: jnp.ndarray
    penalty: jnp.ndarray
    dpp: jnp.ndarray
    dpp_penalty: jnp.ndarray
    dpp_backlog: jnp.ndarray
    dpp_energy: jnp.ndarray
    dpp_accuracy: jnp.ndarray
    dpp_cloud: jnp.ndarray
    dpp_infeasible: jnp.ndarray
    feasible: jnp.ndarray
    memory_ok: jnp.ndarray
    link_ok: jnp.ndarray
    privacy_ok: jnp.ndarray
    link_up: jnp.ndarray


def cost_link(sample: proc.LinkSample) -> LinkState:
    """The cost model's LinkState of a link sample."""
    return LinkState(sample.bw_up_mbps, sample.bw_down_mbps, sample.rtt_ms, sample.cloud_share)


def _ewma(old: LinkState, new: proc.LinkSample, alpha) -> LinkState:
    return jax.tree.map(lambda o, n: (1.0 - alpha) * o + alpha * n, old, cost_link(new))


def observe(state: EnvState) -> Obs:
    """The observation of a state (drops the current slot's link and the latent states)."""
    return Obs(state.queues, state.link_prev, state.link_ewma, state.bw_hist,
               state.share_hist, state.lam_hat, state.t)


def reset(key: jax.Array, params: EnvParams) -> tuple[Obs, EnvState]:
    """Empty queues; the link process is run for ``history`` warm-up slots so that slot 0's
    observation has a measured past. Same key, same arrival and link paths."""
    k_arr, k_link, k_warm = jax.random.split(key, 3)
    arr_state = proc.process_init(k_arr, params.arrivals)
    link_state = proc.link_init(k_link, params.link)

    def warm(s, k):
        s, sample = proc.link_step(k, s, params.link)
        return s, sample

    keys = jax.random.split(k_warm, params.history + 1)
    link_state, samples = jax.lax.scan(warm, link_state, keys)
    past = jax.tree.map(lambda x: x[:-1], samples)
    link_t = jax.tree.map(lambda x: x[-1], samples)
    first = jax.tree.map(lambda x: x[0], past)

    def smooth(est, sample):
        return _ewma(est, sample, params.ewma), None

    est, _ = jax.lax.scan(smooth, cost_link(first), past)
    state = EnvState(
        queues=Queues.zeros(), link_t=link_t, link_prev=jax.tree.map(lambda x: x[-1], past),
        link_ewma=est, bw_hist=past.bw_down_mbps, share_hist=past.cloud_share,
        lam_hat=jnp.asarray(params.lam_mean, jnp.float32), arr_state=arr_state,
        link_state=link_state, t=jnp.int32(0))
    return observe(state), state


def step(key: jax.Array, state: EnvState, action: Partition, params: EnvParams):
    """Run slot t under ``action``; returns ``(obs_{t+1}, state_{t+1}, reward, done, info)``.

    The arrivals and the next link are drawn from ``key`` independently of the action, so
    every policy sees the same paths for the same keys (common random numbers).
    """
    k_arr, k_link = jax.random.split(key)
    sp, spec = params.slot, params.spec
    costs = request_costs(action, cost_link(state.link_t), spec)
    ok = costs.feasible
    lat = costs.latency_s
    mu = jnp.where(ok, service_rate(lat, sp.tau), 0.0)
    e = jnp.where(ok, costs.energy_j, 0.0)
    a = jnp.where(ok, costs.accuracy_drop, 0.0)
    c = jnp.where(ok, costs.cloud_cost, 0.0)
    pen = jnp.where(ok, penalty_value(sp.penalty, jnp.where(ok, lat, 0.0), e, a, c),
                    params.infeasible_penalty)
    arr_state, arrivals = proc.process_step(k_arr, state.arr_state, params.arrivals)
    arr = arrivals.astype(jnp.float32)
    q, b = state.queues, sp.budgets
    zero = jnp.zeros_like(q.q)

    def only(qq=zero, ze=zero, za=zero, zc=zero, V=0.0):
        return dpp_objective(Queues(qq, ze, za, zc), V, pen, arr, mu, e, a, c, b)

    terms = (only(V=sp.V), only(qq=q.q), only(ze=q.z_e), only(za=q.z_a), only(zc=q.z_c))
    infeasible = jnp.where(ok, 0.0, params.infeasible_cost)
    dpp = sum(terms) + infeasible
    queues = update_queues(q, arr, mu, e, a, c, b)
    link_state, link_next = proc.link_step(k_link, state.link_state, params.link)
    seen = state.link_t
    new_state = EnvState(
        queues=queues, link_t=link_next, link_prev=seen,
        link_ewma=_ewma(state.link_ewma, seen, params.ewma),
        bw_hist=jnp.concatenate([state.bw_hist[1:], seen.bw_down_mbps[None]]),
        share_hist=jnp.concatenate([state.share_hist[1:], seen.cloud_share[None]]),
        lam_hat=(1.0 - params.lam_ewma) * state.lam_hat + params.lam_ewma * arr,
        arr_state=arr_state, link_state=link_state, t=state.t + 1)
    info = StepInfo(
        latency_s=lat, energy_j=e, accuracy_drop=a, cloud_cost=c, service=mu, arrivals=arr,
        backlog=q.q, penalty=pen, dpp=dpp, dpp_penalty=terms[0], dpp_backlog=terms[1],
        dpp_energy=terms[2], dpp_accuracy=terms[3], dpp_cloud=terms[4],
        dpp_infeasible=infeasible, feasible=ok, memory_ok=costs.memory_ok,
        link_ok=costs.link_ok, privacy_ok=costs.privacy_ok, link_up=seen.up)
    reward = -dpp / params.reward_scale
    done = new_state.t >= params.episode_slots
    return observe(new_state), new_state, reward, done, info


def obs_vector(obs: Obs, params: EnvParams) -> jnp.ndarray:
    """float32 [7 + 2 * history]: a normalized flat observation for learned policies.

    log1p of the four queues, log1p(EWMA downlink bandwidth / mean), last RTT / mean RTT,
    arrival estimate / mean rate, then log1p(bandwidth / mean) of the past slots (0 marks an
    outage) and their cloud shares.
    """
    bw_s = jnp.maximum(params.bw_mean_mbps, 1e-3)
    q = obs.queues
    scal = jnp.stack([
        jnp.log1p(q.q), jnp.log1p(q.z_e), jnp.log1p(q.z_a), jnp.log1p(q.z_c),
        jnp.log1p(obs.link_ewma.bw_down_mbps / bw_s),
        obs.link_last.rtt_ms / jnp.maximum(params.rtt_mean_ms, 1e-3),
        obs.lam_hat / jnp.maximum(params.lam_mean, 1e-6),
    ])
    return jnp.concatenate([scal, jnp.log1p(obs.bw_hist / bw_s), obs.share_hist]).astype(
        jnp.float32)
