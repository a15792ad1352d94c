"""The slot environment, gymnax style: pure ``reset(key, params)`` and ``step(key, state,
action, params)`` over pytrees, jit- and vmap-able, no hidden state (docs/design.md §3-4).

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

**Outages and actions that cannot run** (docs/design.md §2.7). A partition that crosses the
link while it is down is not "infeasible": the request pays what the runtime pays
(``costmodel.outage``: the timeout and the backoff schedule's waits, then the rest of the
request on the edge from its checkpoint), with its latency, edge energy and accuracy charged;
where the edge cannot hold the model the request *fails* after the waits (``info.failed``
counts failed requests; they leave the backlog as failures and the slot's penalty is
``failure_penalty``). A partition that can never run (over the edge memory budget, or breaking
the privacy floor) is masked by every solver and learned policy; if one is played anyway the
slot serves nothing, charges nothing to the virtual queues and its penalty is
``failure_penalty``. No sentinel constant enters the DPP.

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
from costmodel.dp import memory_can_bind
from costmodel.link import LinkState, Workload
from costmodel.outage import RetryConfig, with_outage
from costmodel.partition import ACT_PRECISIONS, Partition
from costmodel.profiles import DeviceProfile, get_profile
from costmodel.spec import CostSpec, make_spec
from lyapunov import processes as proc
from lyapunov.oracle import PenaltyWeights, SlotParams, penalty_value
from lyapunov.queues import Budgets, Queues, dpp_objective, service_rate, update_queues


class ScenarioError(ValueError):
    """A bad scenario field; the message names it."""


MISMATCHES = ("profile-error", "throttling", "diurnal", "msg-overhead")


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """Where the environment's true costs depart from the nominal model the planners plan with
    (docs/design.md §4.1). Each named kind is on; several combine. The solvers and every
    model-based policy read ``EnvParams.spec`` (nominal); the environment charges every slot
    with ``EnvParams.true_spec`` and the drift states below, so learners, which train on the
    environment's rewards, see the true costs.

    kinds: names from ``MISMATCHES``:
      - "profile-error": the devices' achieved compute and memory throughput are off by a
        factor drawn once per scenario (from ``seed``), uniform in ``1 +- profile_error``,
        independently for the edge's compute, the edge's memory, the cloud's compute and the
        cloud's memory (the cost model has one efficiency per device and resource, so the
        error is per device and resource, the same for every block type);
      - "throttling": the edge slows after sustained load and recovers when idle: a heat state
        ``h`` in [0, 1] follows the edge's busy fraction of each slot with time constant
        ``throttle_slots``; the edge's throughput is divided by ``1 + (throttle_max - 1)
        clip((h - throttle_threshold) / (1 - throttle_threshold), 0, 1)``. The edge measures
        its own state: ``Obs.heat``;
      - "diurnal": a daily cycle in the cloud's load: the cloud share is multiplied by
        ``diurnal_depth ** (-(1 + sin(2 pi t / diurnal_period_slots)) / 2)`` (1 at the
        trough of the load, ``1 / diurnal_depth`` at its peak);
      - "msg-overhead": every message over the link costs ``msg_overhead_s`` more on the edge
        than the profile says (``CostSpec.msg_overhead_s``).
    """

    kinds: tuple[str, ...] = ()
    seed: int = 0
    profile_error: float = 0.3
    throttle_max: float = 2.0
    throttle_slots: float = 20.0
    throttle_threshold: float = 0.3
    diurnal_period_slots: float = 256.0
    diurnal_depth: float = 10.0
    msg_overhead_s: float = 2e-3

    def __post_init__(self):
        k = self.kinds
        if isinstance(k, str) or not isinstance(k, tuple) or len(set(k)) != len(k):
            raise ScenarioError(f"Scenario.mismatch.kinds must be a tuple of distinct names "
                                f"from {MISMATCHES}, got {k!r}")
        bad = [x for x in k if x not in MISMATCHES]
        if bad:
            raise ScenarioError(f"Scenario.mismatch.kinds: unknown {bad}; valid: "
                                f"{', '.join(MISMATCHES)}")
        for f, lo, hi in (("profile_error", 0.0, 0.95), ("throttle_threshold", 0.0, 0.99)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise ScenarioError(f"Scenario.mismatch.{f} must be in [{lo}, {hi}], got {v!r}")
        for f in ("throttle_max", "throttle_slots", "diurnal_period_slots", "diurnal_depth"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 1.0 <= v < math.inf:
                raise ScenarioError(f"Scenario.mismatch.{f} must be >= 1 and finite, got {v!r}")
        v = self.msg_overhead_s
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < math.inf:
            raise ScenarioError(f"Scenario.mismatch.msg_overhead_s must be >= 0 and finite, "
                                f"got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ScenarioError(f"Scenario.mismatch.seed must be an integer, got {self.seed!r}")


def mismatch_of(names, **kw) -> Mismatch:
    """A Mismatch of the named kinds (a CLI's repeated ``--mismatch NAME``; "none" and
    duplicates dropped)."""
    kinds = tuple(dict.fromkeys(n for n in (names or ()) if n != "none"))
    return Mismatch(kinds=kinds, **kw)


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
    failure_penalty: per-request penalty of a request that fails (caught by an outage where
      the edge cannot finish it) or of an action that can never run (penalty units; with the
      default latency penalty: seconds, i.e. a failure costs as much as a 60 s answer).
    retry: the edge's timeout and backoff schedule that an outage makes a request pay
      (``costmodel.outage.RetryConfig``, the runtime's defaults).
    ewma: smoothing weight of the link EWMA estimate (weight of the newest sample).
    lam_ewma: smoothing weight of the arrival-rate estimate.
    history: past slots of bandwidth and cloud share in the observation.
    episode_slots: ``done`` after this many slots.
    reward_scale: reward = -DPP / reward_scale.
    mismatch: where the true costs depart from the nominal model (``Mismatch``; none by
      default).
    tp: the option space of the slot: False the paper's (FFN edge/cloud/split, the residual
      on one side), True adds the tensor-parallel FFN with the residual on both sides
      (docs/design.md §2.8); the planners solve in it and the learned agents act in it.
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
    failure_penalty: float = 60.0
    retry: RetryConfig = RetryConfig()
    ewma: float = 0.3
    lam_ewma: float = 0.05
    history: int = 8
    episode_slots: int = 1000
    reward_scale: float = 1.0
    mismatch: Mismatch = Mismatch()
    tp: bool = False

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
                  "failure_penalty"):
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
        if not isinstance(self.retry, RetryConfig):
            raise ScenarioError("Scenario.retry must be a costmodel.outage.RetryConfig")
        if not isinstance(self.mismatch, Mismatch):
            raise ScenarioError("Scenario.mismatch must be a lyapunov.env.Mismatch")
        if not isinstance(self.tp, bool | np.bool_):
            raise ScenarioError(f"Scenario.tp must be a bool, got {self.tp!r}")

    def build(self) -> EnvParams:
        """The params pytree (loads traces, validates the processes; errors name fields)."""
        return make_params(self)


@struct.dataclass
class EnvParams:
    """Scenario as a pytree. Array leaves can be vmapped; sizes and process kinds are static.

    bw_mean_mbps, share_mean, rtt_mean_ms: stationary means of the link processes (what a
    static policy designs for); lam_mean: stationary mean arrivals per slot.
    retry_wait_s, retry_resumes: what a request caught by an outage waits, and whether it then
      resumes on the mean link (else it falls back to the edge), for the expected remaining
      length of an outage of this link process (``outage_remaining_s``;
      ``costmodel.outage.RetryConfig.recovery``).
    spec: the nominal cost model (what every planner plans with).
    true_spec: the cost model the environment charges with (``spec`` unless a profile-error
      or msg-overhead mismatch is on; throttling scales its edge further each slot).
    throttle_max, throttle_rate, throttle_threshold: the throttling mismatch (max slowdown, 1
      when off; 1 / time constant in slots; heat threshold).
    diurnal_log_depth, diurnal_period: the diurnal mismatch (log of the share's peak-to-trough
      ratio, 0 when off; period in slots).
    tp: (static) the option space of the slot: True adds the tensor-parallel FFN and the
      residual side ``both`` (``Scenario.tp``, docs/design.md §2.8); the planners of
      ``lyapunov.policies`` solve in it and the learned agents' action space follows it.
    privacy_layers: (static) the privacy floor, as in ``spec`` (where it is data, so that the
      cost model's programs serve every floor): a learned policy's action space is fixed by
      the floor it was trained for, and it checks this one against it.
    memory_can_bind: (static) whether some partition of ``spec`` can exceed a memory budget
      (``costmodel.dp.memory_can_bind``; ``make_params`` decides it). False lets the planners
      compile the slot oracle without its memory machinery (about half its compile time,
      docs/design.md §4.3); it is checked on every concrete construction, so a ``replace``
      that makes memory bind fails instead of planning as if it did not.
    """

    spec: CostSpec
    slot: SlotParams
    arrivals: proc.PoissonParams | proc.MMPPParams
    link: proc.LinkParams
    lam_mean: jnp.ndarray
    bw_mean_mbps: jnp.ndarray
    share_mean: jnp.ndarray
    rtt_mean_ms: jnp.ndarray
    failure_penalty: jnp.ndarray
    retry_wait_s: jnp.ndarray
    retry_resumes: jnp.ndarray
    ewma: jnp.ndarray
    lam_ewma: jnp.ndarray
    reward_scale: jnp.ndarray
    true_spec: CostSpec
    throttle_max: jnp.ndarray
    throttle_rate: jnp.ndarray
    throttle_threshold: jnp.ndarray
    diurnal_log_depth: jnp.ndarray
    diurnal_period: jnp.ndarray
    history: int = struct.field(pytree_node=False, default=8)
    episode_slots: int = struct.field(pytree_node=False, default=1000)
    precisions: tuple = struct.field(pytree_node=False, default=(0, 1, 2))
    tp: bool = struct.field(pytree_node=False, default=False)
    privacy_layers: int = struct.field(pytree_node=False, default=0)
    memory_can_bind: bool = struct.field(pytree_node=False, default=True)

    def __post_init__(self):
        if not isinstance(self.tp, bool | np.bool_):
            raise ScenarioError(f"EnvParams.tp must be a bool (static), got {self.tp!r}")
        if not isinstance(self.memory_can_bind, bool | np.bool_):
            raise ScenarioError("EnvParams.memory_can_bind must be a bool (static), got "
                                f"{self.memory_can_bind!r}")
        # Checked where the spec's leaves are arrays with values. JAX also rebuilds this class
        # from tracers (inside jit) and from the ints of a vmap's in_axes; those copies come
        # from a params that was checked when it was made.
        if (not self.memory_can_bind and _concrete(self.spec)
                and memory_can_bind(self.spec)):
            raise ScenarioError("EnvParams.memory_can_bind is False, but a partition of "
                                "EnvParams.spec can exceed its edge or cloud memory budget "
                                "(costmodel.dp.memory_can_bind)")


def batchable(params: list[EnvParams]) -> list[EnvParams]:
    """The members of a batch to stack, with one ``memory_can_bind`` (static fields must agree
    across a stacked batch): True where memory can bind in any member."""
    binds = any(p.memory_can_bind for p in params)
    return [p if p.memory_can_bind == binds else p.replace(memory_can_bind=binds)
            for p in params]


def _concrete(tree) -> bool:
    """Whether every leaf is an array with values: a NumPy array or a JAX array that is not
    a tracer (a vmap's ``in_axes`` tree has ints for leaves)."""
    return all(isinstance(x, np.ndarray | np.generic)
               or (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer))
               for x in jax.tree.leaves(tree))


def _process_mean(p) -> float:
    """Stationary mean of a bandwidth or share process (NumPy, at build time)."""
    if isinstance(p, proc.MarkovParams):
        pi = proc.markov_stationary(np.asarray(p.transition))
        return float(pi @ np.asarray(p.levels))
    if isinstance(p, proc.ReplayParams):
        return float(np.mean(p.series()))
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


def outage_remaining_s(link: proc.LinkParams, tau_s: float) -> float:
    """Expected time an outage lasts after a request's first crossing meets it, s.

    Outage runs of L slots on average (the Markov outage chain: ``1 / p_recover``; a replayed
    trace: its runs of zero-throughput slots, length-biased, since a request meets a long run
    more often: ``sum l (l + 1) / 2 / sum l``), less half a slot (the first crossing happens,
    on average, in the middle of the slot). The longer of the two sources when both exist;
    half a slot for a link that never fails."""
    runs = [1.0]
    if isinstance(link.outage, proc.OutageParams):
        runs.append(1.0 / max(float(link.outage.p_recover), 1e-9))
    if isinstance(link.bandwidth, proc.ReplayParams):
        zero = link.bandwidth.series() <= 0
        if zero.any() and not zero.all():
            zero = np.roll(zero, -int(np.argmin(zero)))  # start at an up slot (it wraps)
        lengths, n = [], 0
        for z in zero:
            if z:
                n += 1
            elif n:
                lengths.append(n)
                n = 0
        if n:
            lengths.append(n)
        if lengths:
            ell = np.asarray(lengths, float)
            runs.append(float(np.sum(ell * (ell + 1) / 2) / np.sum(ell)))
    return max(runs) * tau_s - 0.5 * tau_s


def mean_link(params: EnvParams) -> LinkState:
    """The stationary mean link (bandwidth, RTT, cloud share) of the scenario."""
    bw = params.bw_mean_mbps
    return LinkState(bw * params.link.up_ratio, bw, params.rtt_mean_ms, params.share_mean)


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
    wait_s, resumes = sc.retry.recovery(outage_remaining_s(link, sc.tau_s))
    mm = sc.mismatch
    return EnvParams(
        spec=spec, slot=slot, arrivals=arrivals, link=link,
        lam_mean=f(proc.arrival_mean_rate(arrivals)),
        bw_mean_mbps=f(_process_mean(link.bandwidth)), share_mean=f(_process_mean(link.share)),
        rtt_mean_ms=f(float(rtt.base_ms) + float(rtt.jitter_ms)),
        failure_penalty=f(sc.failure_penalty), retry_wait_s=f(wait_s),
        retry_resumes=jnp.asarray(resumes),
        ewma=f(sc.ewma), lam_ewma=f(sc.lam_ewma), reward_scale=f(sc.reward_scale),
        true_spec=true_spec(spec, mm),
        throttle_max=f(mm.throttle_max if "throttling" in mm.kinds else 1.0),
        throttle_rate=f(1.0 / mm.throttle_slots), throttle_threshold=f(mm.throttle_threshold),
        diurnal_log_depth=f(math.log(mm.diurnal_depth) if "diurnal" in mm.kinds else 0.0),
        diurnal_period=f(mm.diurnal_period_slots),
        history=sc.history, episode_slots=sc.episode_slots, precisions=tuple(sc.precisions),
        tp=bool(sc.tp), privacy_layers=int(sc.privacy_layers),
        memory_can_bind=memory_can_bind(spec))


def true_spec(spec: CostSpec, mm: Mismatch) -> CostSpec:
    """The cost model the environment charges with under ``mm`` (``Mismatch``): the nominal
    ``spec`` with the profile errors drawn from ``mm.seed`` and the unknown per-message
    overhead added to the edge's."""
    edge, cloud = spec.edge, spec.cloud
    if "profile-error" in mm.kinds:
        fac = profile_error_factors(mm)
        edge = edge.replace(flops=edge.flops * fac["edge_compute"],
                            bw=edge.bw * fac["edge_memory"])
        cloud = cloud.replace(flops=cloud.flops * fac["cloud_compute"],
                              bw=cloud.bw * fac["cloud_memory"])
    if "msg-overhead" in mm.kinds:
        if not hasattr(edge, "msg_overhead_s"):
            raise ScenarioError("Scenario.mismatch 'msg-overhead' needs a cost model with a "
                                "per-message overhead (CostSpec.msg_overhead_s); this one has "
                                "none")
        edge = edge.replace(msg_overhead_s=edge.msg_overhead_s + jnp.float32(mm.msg_overhead_s))
    return spec.replace(edge=edge, cloud=cloud)


def profile_error_factors(mm: Mismatch) -> dict:
    """The true / nominal throughput factors a profile-error mismatch draws (1 where off)."""
    ones = dict(edge_compute=1.0, edge_memory=1.0, cloud_compute=1.0, cloud_memory=1.0)
    if "profile-error" not in mm.kinds:
        return ones
    rng = np.random.default_rng(np.random.SeedSequence([int(mm.seed) % 2**32, 0x5EED]))
    fac = rng.uniform(1.0 - mm.profile_error, 1.0 + mm.profile_error, 4).astype(np.float32)
    return dict(zip(ones, (float(x) for x in fac), strict=True))


def edge_slowdown(heat, params: EnvParams):
    """Throttling's slowdown factor of the edge at heat ``heat`` (1: full speed)."""
    thr = params.throttle_threshold
    x = jnp.clip((heat - thr) / jnp.maximum(1.0 - thr, 1e-6), 0.0, 1.0)
    return 1.0 + (params.throttle_max - 1.0) * x


def charged_spec(heat, params: EnvParams) -> CostSpec:
    """The cost model a slot is charged with: ``true_spec`` with the edge throttled."""
    ts = params.true_spec
    s = edge_slowdown(heat, params)
    return ts.replace(edge=ts.edge.replace(flops=ts.edge.flops / s, bw=ts.edge.bw / s))


def diurnal_factor(t, params: EnvParams):
    """The diurnal mismatch's multiplier of the cloud share in slot ``t`` (1 when off)."""
    phase = 2.0 * jnp.pi * jnp.asarray(t, jnp.float32) / params.diurnal_period
    return jnp.exp(-params.diurnal_log_depth * (1.0 + jnp.sin(phase)) / 2.0)


def _drift(sample: proc.LinkSample, t, params: EnvParams) -> proc.LinkSample:
    share = jnp.maximum(sample.cloud_share * diurnal_factor(t, params), 1e-4)
    return sample.replace(cloud_share=share.astype(jnp.float32))


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
    since_outage: slots since the last measured slot with zero throughput (0: the last slot
      had one; counts from the warm-up, capped at OUTAGE_HORIZON).
    arr_state, link_state: latent states of the arrival and link processes.
    t: slot index.
    heat: the edge's thermal state in [0, 1] (throttling mismatch; 0 otherwise).
    lat_hist: float [history] per-request latency charged in slots t-history .. t-1, s (what
      the edge measured; 0 before the first slot).
    """

    queues: Queues
    link_t: proc.LinkSample
    link_prev: proc.LinkSample
    link_ewma: LinkState
    bw_hist: jnp.ndarray
    share_hist: jnp.ndarray
    lam_hat: jnp.ndarray
    since_outage: jnp.ndarray
    arr_state: object
    link_state: proc.LinkState
    t: jnp.ndarray
    heat: jnp.ndarray
    lat_hist: jnp.ndarray


@struct.dataclass
class Obs:
    """What a causal controller sees at the start of slot t (observations up to t-1).

    link_last is the last slot's measured link (its throughput; ``up`` False and zero
    throughput when it had an outage); since_outage counts slots since the last outage;
    heat: the edge's measured thermal state; lat_hist: the per-request latency it measured in
    the past slots (s).
    """

    queues: Queues
    link_last: proc.LinkSample
    link_ewma: LinkState
    bw_hist: jnp.ndarray
    share_hist: jnp.ndarray
    lam_hat: jnp.ndarray
    since_outage: jnp.ndarray
    t: jnp.ndarray
    heat: jnp.ndarray
    lat_hist: jnp.ndarray


@struct.dataclass
class StepInfo:
    """Metrics of one slot (all float32 [] / bool []).

    latency_s: per-request latency charged this slot: the partition's in this slot's link, or,
      for a request caught by an outage, the waits plus the edge fallback (the time to the
      failure where it failed; inf: the action can never run).
    energy_j, accuracy_drop, cloud_cost: per-request costs charged this slot (0 if the action
      cannot run).
    service: requests answered (mu); failed: requests that failed; arrivals: A(t); backlog:
      Q(t) at the start of the slot; backlog_next: Q(t+1), the backlog the slot leaves.
    penalty: p(t). dpp: the DPP expression; dpp_penalty (V p), dpp_backlog (Q (A - mu - failed)),
      dpp_energy, dpp_accuracy, dpp_cloud (Z_i (x_i - x_bar_i)): its terms.
    runnable: the action can ever run (memory and privacy floor); memory_ok, privacy_ok: why.
    caught: the action crossed the link during an outage (priced by ``costmodel.outage``).
    feasible: the slot's requests were answered (runnable and not failed).
    link_ok: the partition's costs were finite on this slot's link (not caught).
    link_up: the link carried traffic during the slot (nonzero throughput and no outage).
    """

    latency_s: jnp.ndarray
    energy_j: jnp.ndarray
    accuracy_drop: jnp.ndarray
    cloud_cost: jnp.ndarray
    service: jnp.ndarray
    failed: jnp.ndarray
    arrivals: jnp.ndarray
    backlog: jnp.ndarray
    backlog_next: jnp.ndarray
    penalty: jnp.ndarray
    dpp: jnp.ndarray
    dpp_penalty: jnp.ndarray
    dpp_backlog: jnp.ndarray
    dpp_energy: jnp.ndarray
    dpp_accuracy: jnp.ndarray
    dpp_cloud: jnp.ndarray
    runnable: jnp.ndarray
    caught: jnp.ndarray
    feasible: jnp.ndarray
    memory_ok: jnp.ndarray
    link_ok: jnp.ndarray
    privacy_ok: jnp.ndarray
    link_up: jnp.ndarray


OUTAGE_HORIZON = 1000  # cap of ``since_outage``, slots


def link_carried(sample: proc.LinkSample) -> jnp.ndarray:
    """Whether a measured slot's link carried traffic (no outage, nonzero throughput)."""
    return sample.up & (sample.bw_up_mbps > 0) & (sample.bw_down_mbps > 0)


def cost_link(sample: proc.LinkSample) -> LinkState:
    """The cost model's LinkState of a link sample."""
    return LinkState(sample.bw_up_mbps, sample.bw_down_mbps, sample.rtt_ms, sample.cloud_share)


def _ewma(old: LinkState, new: proc.LinkSample, alpha) -> LinkState:
    return jax.tree.map(lambda o, n: (1.0 - alpha) * o + alpha * n, old, cost_link(new))


def observe(state: EnvState) -> Obs:
    """The observation of a state (drops the current slot's link and the latent states)."""
    return Obs(state.queues, state.link_prev, state.link_ewma, state.bw_hist,
               state.share_hist, state.lam_hat, state.since_outage, state.t, state.heat,
               state.lat_hist)


def reset(key: jax.Array, params: EnvParams) -> tuple[Obs, EnvState]:
    """Empty queues; the link process is run for ``history`` warm-up slots so that slot 0's
    observation has a measured past. Same key, same arrival and link paths."""
    k_arr, k_link, k_warm = jax.random.split(key, 3)
    arr_state = proc.process_init(k_arr, params.arrivals)
    link_state = proc.link_init(k_link, params.link)

    def warm(s, kt):
        k, t = kt
        s, sample = proc.link_step(k, s, params.link)
        return s, _drift(sample, t, params)

    keys = jax.random.split(k_warm, params.history + 1)
    ts = jnp.arange(-params.history, 1, dtype=jnp.int32)
    link_state, samples = jax.lax.scan(warm, link_state, (keys, ts))
    past = jax.tree.map(lambda x: x[:-1], samples)
    link_t = jax.tree.map(lambda x: x[-1], samples)
    first = jax.tree.map(lambda x: x[0], past)

    def smooth(est, sample):
        return _ewma(est, sample, params.ewma), None

    est, _ = jax.lax.scan(smooth, cost_link(first), past)

    def count(n, sample):
        n = jnp.where(link_carried(sample), jnp.minimum(n + 1, OUTAGE_HORIZON), 0)
        return n, None

    since, _ = jax.lax.scan(count, jnp.int32(params.history), past)
    state = EnvState(
        queues=Queues.zeros(), link_t=link_t, link_prev=jax.tree.map(lambda x: x[-1], past),
        link_ewma=est, bw_hist=past.bw_down_mbps, share_hist=past.cloud_share,
        lam_hat=jnp.asarray(params.lam_mean, jnp.float32), since_outage=since,
        arr_state=arr_state, link_state=link_state, t=jnp.int32(0), heat=jnp.float32(0.0),
        lat_hist=jnp.zeros((params.history,), jnp.float32))
    return observe(state), state


def step(key: jax.Array, state: EnvState, action: Partition, params: EnvParams):
    """Run slot t under ``action``; returns ``(obs_{t+1}, state_{t+1}, reward, done, info)``.

    The arrivals and the next link are drawn from ``key`` independently of the action, so
    every policy sees the same paths for the same keys (common random numbers).
    """
    k_arr, k_link = jax.random.split(key)
    sp, spec = params.slot, charged_spec(state.heat, params)
    oc = with_outage(action, cost_link(state.link_t), spec, params.retry_wait_s,
                     params.retry_resumes, mean_link(params))
    costs, runnable, failed_ = oc.costs, oc.runnable, oc.failed
    answered = runnable & ~failed_
    lat = jnp.where(runnable, costs.latency_s, jnp.inf)
    departures = jnp.where(runnable, service_rate(lat, sp.tau), 0.0)
    mu = jnp.where(answered, departures, 0.0)
    failed = jnp.where(failed_, departures, 0.0)
    e = jnp.where(runnable, costs.energy_j, 0.0)
    a = jnp.where(answered, costs.accuracy_drop, 0.0)
    c = jnp.where(answered, costs.cloud_cost, 0.0)
    pen = jnp.where(answered, penalty_value(sp.penalty, jnp.where(answered, lat, 0.0), e, a, c),
                    params.failure_penalty)
    arr_state, arrivals = proc.process_step(k_arr, state.arr_state, params.arrivals)
    arr = arrivals.astype(jnp.float32)
    q, b = state.queues, sp.budgets
    zero = jnp.zeros_like(q.q)

    def only(qq=zero, ze=zero, za=zero, zc=zero, V=0.0):
        return dpp_objective(Queues(qq, ze, za, zc), V, pen, arr, departures, e, a, c, b)

    terms = (only(V=sp.V), only(qq=q.q), only(ze=q.z_e), only(za=q.z_a), only(zc=q.z_c))
    dpp = sum(terms)
    queues = update_queues(q, arr, departures, e, a, c, b)
    link_state, link_next = proc.link_step(k_link, state.link_state, params.link)
    link_next = _drift(link_next, state.t + 1, params)
    seen = state.link_t
    served = jnp.minimum(departures, q.q)
    busy = jnp.clip(served * jnp.where(runnable, costs.edge_compute_s, 0.0) / sp.tau, 0.0, 1.0)
    heat = state.heat + params.throttle_rate * (busy - state.heat)
    measured = jnp.where(runnable & jnp.isfinite(lat), lat, params.failure_penalty)
    new_state = EnvState(
        queues=queues, link_t=link_next, link_prev=seen,
        link_ewma=_ewma(state.link_ewma, seen, params.ewma),
        bw_hist=jnp.concatenate([state.bw_hist[1:], seen.bw_down_mbps[None]]),
        share_hist=jnp.concatenate([state.share_hist[1:], seen.cloud_share[None]]),
        lam_hat=(1.0 - params.lam_ewma) * state.lam_hat + params.lam_ewma * arr,
        since_outage=jnp.where(link_carried(seen),
                               jnp.minimum(state.since_outage + 1, OUTAGE_HORIZON), 0),
        arr_state=arr_state, link_state=link_state, t=state.t + 1,
        heat=jnp.where(params.throttle_max > 1.0, heat, 0.0).astype(jnp.float32),
        lat_hist=jnp.concatenate([state.lat_hist[1:], measured[None].astype(jnp.float32)]))
    info = StepInfo(
        latency_s=lat, energy_j=e, accuracy_drop=a, cloud_cost=c, service=mu, failed=failed,
        arrivals=arr, backlog=q.q, backlog_next=queues.q, penalty=pen, dpp=dpp,
        dpp_penalty=terms[0], dpp_backlog=terms[1], dpp_energy=terms[2],
        dpp_accuracy=terms[3], dpp_cloud=terms[4],
        runnable=runnable, caught=oc.caught, feasible=answered, memory_ok=costs.memory_ok,
        link_ok=costs.link_ok, privacy_ok=costs.privacy_ok, link_up=link_carried(seen))
    reward = -dpp / params.reward_scale
    done = new_state.t >= params.episode_slots
    return observe(new_state), new_state, reward, done, info


def obs_vector(obs: Obs, params: EnvParams) -> jnp.ndarray:
    """float32 [9 + 2 * history]: a normalized flat observation for learned policies.

    log1p of the four queues, log1p(EWMA downlink bandwidth / mean), last RTT / mean RTT,
    arrival estimate / mean rate, whether the last slot had an outage, log1p(slots since the
    last outage), then log1p(bandwidth / mean) of the past slots (0 marks an outage; the last
    one is the last slot's throughput) and their cloud shares.
    """
    bw_s = jnp.maximum(params.bw_mean_mbps, 1e-3)
    q = obs.queues
    scal = jnp.stack([
        jnp.log1p(q.q), jnp.log1p(q.z_e), jnp.log1p(q.z_a), jnp.log1p(q.z_c),
        jnp.log1p(obs.link_ewma.bw_down_mbps / bw_s),
        obs.link_last.rtt_ms / jnp.maximum(params.rtt_mean_ms, 1e-3),
        obs.lam_hat / jnp.maximum(params.lam_mean, 1e-6),
        1.0 - link_carried(obs.link_last).astype(jnp.float32),
        jnp.log1p(obs.since_outage.astype(jnp.float32)),
    ])
    return jnp.concatenate([scal, jnp.log1p(obs.bw_hist / bw_s), obs.share_hist]).astype(
        jnp.float32)
