"""Runtime policies of ``splitwise run-edge`` (``docs/design.md §4``, ``§5``): a ``--policy``
string resolves through the one policy registry (``lyapunov.registry``: every registered name,
and ``checkpoint:DIR`` through ``agents.policy_loader``), and the policy acts on the
simulator's observation, built from what the runtime measured. Exported policies
(``onnx:FILE``, ``torch:FILE``) run without JAX through ``bridge.exported_policy``, which
builds the same observation with NumPy; this module imports JAX only inside the functions of
the registry path.

Scenario (``runtime_params``). The slot environment's ``EnvParams`` of the runtime, built once
per run: the executor's model card, this machine's device profiles (edge and cloud), the
request size, the slot length, the arrival process, the link's RTT and uplink ratio, the
trace's mean bandwidth (unlimited without a trace), no budgets and a latency penalty (the
``lyapunov.env.Scenario`` defaults otherwise).

Observation (``SlotObserver``). At the start of slot ``t`` the runtime has measured, for every
earlier slot, the link's mean bandwidth (``bridge.transport.LinkEmulator``) and the arrivals.
As in ``lyapunov.env``, a causal policy sees the backlog ``Q(t)`` (the requests waiting; the
virtual queues are 0: the runtime has no budgets), the last slot's link, the EWMA of the
measured links (weight ``params.ewma``), the last ``params.history`` slots' bandwidth and cloud
share (1: this client alone), the EWMA of the arrivals (weight ``params.lam_ewma``, from the
stationary mean), the slots since the last measured slot without throughput (counted from
``params.history``, as after the simulator's warm-up) and ``t``. Slot 0 has no past: its own
link stands in for the measurements (as ``lyapunov.env.reset``'s warm-up does). A clairvoyant
policy (the oracle) gets the ``EnvState`` whose ``link_t`` is the slot's own link.

``Observation`` is the runtime's record of a slot (what a custom ``Observation -> Partition``
function sees, and what ``bridge.edge_run`` logs).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import jax

UNLIMITED_MBPS = 1e6


class PolicyError(ValueError):
    """An unknown or unusable ``--policy``."""


@dataclasses.dataclass(frozen=True)
class Observation:
    """The runtime's measurements at the start of slot ``slot``.

    bw_mbps: mean bandwidth measured over the previous slot (the current one's for slot 0).
    bw_now_mbps: the slot's own mean bandwidth (only a clairvoyant policy may use it).
    rtt_ms: the link's RTT. queue: requests waiting (the one about to start included).
    arrivals: requests that arrived during the previous slot.
    """

    slot: int
    bw_mbps: float
    bw_now_mbps: float
    rtt_ms: float
    queue: int
    arrivals: int


def runtime_scenario(card, edge, cloud, workload, slot_s: float, arrival, rtt_ms: float,
                     up_ratio: float = 1.0, privacy_layers: int = 0, bandwidth=None):
    """The ``lyapunov.env.Scenario`` of the runtime (see the module docstring): what
    ``runtime_params`` builds, and what an agent for the runtime trains on (with
    ``bandwidth``, a ``lyapunov.processes.BandwidthConfig``, e.g. the trace's).

    card: ``costmodel.cards.ModelCard``; edge, cloud: ``DeviceProfile``; workload:
    ``costmodel.link.Workload``; arrival: ``lyapunov.processes.ArrivalConfig`` (per slot) or
    ``bridge.edge_run.Arrivals``; privacy_layers: the scenario's privacy floor.
    """
    from lyapunov import processes as proc
    from lyapunov.env import Scenario

    if not isinstance(arrival, proc.ArrivalConfig):  # bridge.edge_run.Arrivals: same fields
        arrival = proc.ArrivalConfig(**dataclasses.asdict(arrival))
    link = proc.LinkConfig(rtt_ms=float(rtt_ms), up_ratio=float(up_ratio))
    if bandwidth is not None:
        link = dataclasses.replace(link, bandwidth=bandwidth)
    return Scenario(model=card, device=edge, cloud=cloud, prompt_tokens=workload.prompt_tokens,
                    new_tokens=workload.new_tokens, tau_s=float(slot_s), arrival=arrival,
                    link=link, privacy_layers=int(privacy_layers))


def runtime_params(card, edge, cloud, workload, slot_s: float, arrival, rtt_ms: float,
                   up_ratio: float = 1.0, trace=None, privacy_layers: int = 0):
    """``lyapunov.env.EnvParams`` of the runtime scenario (``runtime_scenario``), its mean
    bandwidth the trace's (``lyapunov.traces.Trace``; None: unlimited bandwidth)."""
    import jax.numpy as jnp

    params = runtime_scenario(card, edge, cloud, workload, slot_s, arrival, rtt_ms, up_ratio,
                              privacy_layers).build()
    if trace is None:
        bw_mean = UNLIMITED_MBPS
    else:
        from lyapunov.traces import resample

        bw_mean = float(np.mean(resample(trace, slot_s)))
    return params.replace(bw_mean_mbps=jnp.float32(min(bw_mean, UNLIMITED_MBPS)),
                          rtt_mean_ms=jnp.float32(rtt_ms))


class SlotObserver:
    """The runtime's past in ``lyapunov.env`` form: ``measured`` records one finished slot,
    ``state`` gives the ``EnvState`` at the start of a slot (``lyapunov.env.observe`` of it is
    the causal ``Obs``)."""

    def __init__(self, params, up_ratio: float = 1.0, key: jax.Array | None = None):
        import jax

        self.params, self.up_ratio = params, float(up_ratio)
        _, self.template = _reset()(jax.random.key(0) if key is None else key, params)
        self.last = None
        self.ewma = None
        self.bw_hist: deque[float] = deque(maxlen=params.history)
        self.lam_hat = float(params.lam_mean)
        self.since_outage = int(params.history)

    def sample(self, bw_mbps: float, rtt_ms: float):
        """The ``lyapunov.processes.LinkSample`` of a measured bandwidth (capped)."""
        import jax.numpy as jnp

        from lyapunov.processes import LinkSample

        bw = min(float(bw_mbps), UNLIMITED_MBPS)
        f = jnp.float32
        return LinkSample(f(bw * self.up_ratio), f(bw), f(rtt_ms), f(1.0), jnp.asarray(bw > 0))

    def measured(self, bw_mbps: float, rtt_ms: float, arrivals: int) -> None:
        """One finished slot: its mean bandwidth and its arrivals."""
        import jax

        from lyapunov.env import OUTAGE_HORIZON, cost_link, link_carried

        s = self.sample(bw_mbps, rtt_ms)
        self.since_outage = min(self.since_outage + 1, OUTAGE_HORIZON) \
            if bool(link_carried(s)) else 0
        a = float(self.params.ewma)
        new = cost_link(s)
        self.ewma = new if self.ewma is None else jax.tree.map(
            lambda o, n: (1.0 - a) * o + a * n, self.ewma, new)
        self.last = s
        self.bw_hist.append(float(s.bw_down_mbps))
        b = float(self.params.lam_ewma)
        self.lam_hat = (1.0 - b) * self.lam_hat + b * float(arrivals)

    def state(self, obs: Observation):
        """The ``EnvState`` at the start of ``obs.slot``: queue ``Q = obs.queue``, the past as
        measured, and ``link_t`` the slot's own link."""
        import jax.numpy as jnp

        from lyapunov.env import cost_link, link_carried
        from lyapunov.queues import Queues

        f = jnp.float32
        link_t = self.sample(obs.bw_now_mbps, obs.rtt_ms)
        last = self.last if self.last is not None else link_t
        ewma = self.ewma if self.ewma is not None else cost_link(link_t)
        n = self.params.history
        hist = list(self.bw_hist) or [float(last.bw_down_mbps)]
        hist = [hist[0]] * (n - len(hist)) + hist
        since = self.since_outage if self.last is not None or bool(link_carried(last)) else 0
        return self.template.replace(
            queues=Queues(f(obs.queue), f(0.0), f(0.0), f(0.0)), link_t=link_t,
            link_prev=last, link_ewma=ewma, bw_hist=jnp.asarray(hist, jnp.float32),
            share_hist=jnp.ones(n, jnp.float32), lam_hat=f(self.lam_hat),
            since_outage=jnp.asarray(since, self.template.since_outage.dtype),
            t=jnp.asarray(obs.slot, self.template.t.dtype))


@functools.cache
def _reset():
    import jax

    from lyapunov.env import reset

    return jax.jit(reset)


@functools.lru_cache(maxsize=64)
def _jit(pol):
    """The jitted ``act`` of a registry policy (one per policy object: the registry returns
    the same object for the same string, so a second runtime policy compiles nothing)."""
    import jax

    return jax.jit(pol.act)


@dataclasses.dataclass
class RuntimePolicy:
    """A policy as the runtime drives it: ``measured`` after every finished slot, ``decide``
    at the start of a slot with work (-> ``costmodel.partition.Partition``)."""

    name: str
    decide: Callable[[Observation], object]
    measured: Callable[[float, float, int], None] = lambda bw, rtt, arrivals: None
    clairvoyant: bool = False


def _checkpoint_model(config: dict) -> str | None:
    """The model card name a checkpoint's config.json was trained for (None: not recorded)."""
    train = config.get("train")
    scenario = train.get("scenario") if isinstance(train, dict) else None
    model = scenario.get("model") if isinstance(scenario, dict) else None
    if isinstance(model, dict):
        model = model.get("name")
    return model if isinstance(model, str) else None


def check_checkpoint_model(arg: str, card) -> None:
    """PolicyError unless every seed directory that ``checkpoint:arg`` names was trained for
    ``card`` (by name where its config records one; layers and heads always)."""
    from agents import checkpoint
    from agents.policy_loader import checkpoint_dirs

    directory = arg[: -len(":sample")] if arg.endswith(":sample") else arg
    for d in checkpoint_dirs(Path(directory)):
        config = checkpoint.read_config(d)
        model = _checkpoint_model(config)
        space = config.get("space", {})
        shape = (space.get("n_layers"), space.get("n_heads"))
        if (model is not None and model != card.name) or shape != (card.n_layers,
                                                                   card.n_heads):
            raise PolicyError(
                f"--policy checkpoint:{arg}: {d} was trained for model "
                f"{model or 'unrecorded'} ({shape[0]} layers x {shape[1]} heads); the runtime "
                f"runs {card.name} ({card.n_layers} layers x {card.n_heads} heads): train one "
                f"for {card.name}")


def make_policy(policy: str | Callable, params, card=None, up_ratio: float = 1.0,
                seed: int = 0) -> RuntimePolicy:
    """The ``RuntimePolicy`` of ``--policy``.

    policy: a registered name (``lyapunov.registry.names()``), ``checkpoint:DIR[:sample]``
    (a seed directory, or a training run directory: its first seed, named in the policy's
    name), or a function ``Observation -> costmodel Partition``. params: the runtime's
    ``EnvParams`` (``runtime_params``). card: the runtime's model card, checked against a
    checkpoint's. The policy acts once on a slot-0 observation here, so that an unusable one
    fails before any request is served (and a jitted one is compiled).
    """
    if callable(policy):
        return RuntimePolicy(getattr(policy, "__name__", "custom"), policy)
    import jax

    import agents.policy_loader  # noqa: F401  (registers the checkpoint: loader)
    from agents.checkpoint import CheckpointError
    from lyapunov import registry
    from lyapunov.env import observe

    try:
        if policy.startswith("checkpoint:") and card is not None:
            check_checkpoint_model(policy.split(":", 1)[1], card)
        pol = registry.resolve(policy)[0]
    except (ValueError, CheckpointError) as err:
        if isinstance(err, PolicyError):
            raise
        raise PolicyError(f"--policy {policy}: {err}") from None
    observer = SlotObserver(params, up_ratio)
    act = _jit(pol) if pol.jittable else pol.act
    key = jax.random.key(seed)

    def decide(obs: Observation):
        state = observer.state(obs)
        x = state if pol.clairvoyant else observe(state)
        return act(jax.random.fold_in(key, obs.slot), x, params)

    try:
        decide(Observation(0, UNLIMITED_MBPS, UNLIMITED_MBPS, float(params.rtt_mean_ms), 1, 0))
    except ValueError as err:
        raise PolicyError(f"--policy {policy}: {err}") from None
    return RuntimePolicy(pol.name, decide, observer.measured, pol.clairvoyant)
