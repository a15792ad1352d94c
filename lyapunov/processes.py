"""Per-slot random inputs of the slot environment: arrivals, bandwidth, RTT, cloud share, outages.

Every process is a pair of pure functions over pytrees (docs/design.md §3):

- ``process_init(key, params) -> state``: the latent state of slot 0, drawn from the
  process's stationary law unless a fixed start is configured;
- ``process_step(key, state_t, params) -> (state_tp1, value_t)``: emits slot ``t``'s value
  and advances the latent state;
- ``sample_path(key, params, n_slots) -> values [n_slots]``: ``init`` then ``lax.scan`` of
  ``step`` (``n_slots`` static), jit- and vmap-able.

Parameters are ``flax.struct.dataclass`` pytrees of float32/int32 arrays, so scenarios can be
stacked and vmapped like data; the kind of process is the pytree's type and is resolved at
trace time. Build them with the ``make_*`` constructors, which validate every field and raise
:class:`ProcessConfigError` naming it (negative rate, probability outside [0, 1], share
outside (0, 1], NaN, non-stochastic transition matrix), or from the frozen ``*Config``
dataclasses with :func:`make_arrivals` and :func:`make_link`.

Processes (units in the names; one value per slot):

- arrivals, int32 requests per slot: :class:`PoissonParams` (rate per slot) and the bursty
  two-state Markov-modulated Poisson process :class:`MMPPParams`; the stationary mean is
  :func:`arrival_mean_rate`.
- bandwidth, Mbit/s: Gauss-Markov AR(1) (:func:`make_ar1_bandwidth`, on the log by default),
  a finite-state Markov chain (:func:`make_markov_bandwidth`), trace replay
  (:func:`make_replay_bandwidth`).
- RTT, ms: constant plus optional i.i.d. exponential jitter (:class:`RTTParams`).
- cloud compute share in (0, 1]: AR(1) on the logit (:func:`make_ar1_share`), a Markov chain
  over levels (:func:`make_markov_share`), a replayed utilization series, share =
  ``max(1 - utilization, min_share)`` (:func:`make_replay_share`).
- link outages: a two-state up/down Markov chain (:func:`make_outage`).

:func:`sample_link_path` combines bandwidth, RTT, share and outage into per-slot
:class:`LinkSample` pytrees (field names as ``costmodel.link.LinkState``, plus ``up``);
during an outage both bandwidths are exactly 0. Each component draws from its own sub-key
(``jax.random.split(key, 4)`` in a fixed order), so switching outages on or changing the share
process leaves the bandwidth path of a key unchanged (common random numbers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from lyapunov.traces import Trace, load_trace, resample

# --------------------------------------------------------------------------------------------
# Validation


class ProcessConfigError(ValueError):
    """A bad process parameter. ``field`` names it (dotted from a config: ``bandwidth.rho``)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@contextlib.contextmanager
def _field_prefix(prefix: str):
    """Re-raise ProcessConfigError with ``prefix.`` in front of its field name."""
    try:
        yield
    except ProcessConfigError as e:
        raise ProcessConfigError(f"{prefix}.{e.field}", e.reason) from None


def _number(field: str, x: Any) -> float:
    if isinstance(x, bool):
        raise ProcessConfigError(field, f"must be a number, got {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ProcessConfigError(field, f"must be a number, got {x!r}") from None
    if math.isnan(v):
        raise ProcessConfigError(field, "is NaN")
    if math.isinf(v):
        raise ProcessConfigError(field, f"must be finite, got {v}")
    return v


def _in_range(field: str, x: Any, lo: float, hi: float, lo_open=False, hi_open=False) -> float:
    v = _number(field, x)
    if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ProcessConfigError(field, f"must be in {rng}, got {v!r}")
    return v


def _nonneg(field, x):
    return _in_range(field, x, 0.0, math.inf)


def _positive(field, x):
    return _in_range(field, x, 0.0, math.inf, lo_open=True)


def _prob(field, x):
    return _in_range(field, x, 0.0, 1.0)


def _vector(field: str, x: Any, lo: float, hi: float, lo_open=False) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProcessConfigError(field, "must be an array of numbers") from None
    if a.ndim != 1 or a.size == 0:
        raise ProcessConfigError(field, f"must be a non-empty 1-D array, got shape {a.shape}")
    if np.any(np.isnan(a)):
        raise ProcessConfigError(field, f"contains NaN at index {int(np.argmax(np.isnan(a)))}")
    bad = ~np.isfinite(a) | (a <= lo if lo_open else a < lo) | (a > hi)
    if np.any(bad):
        i = int(np.argmax(bad))
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ProcessConfigError(field, f"entries must be in {rng}; index {i} is {a[i]!r}")
    return a


def _offset(field: str, offset: int | None, n: int) -> int:
    if offset is None:
        return -1
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise ProcessConfigError(field, f"must be an integer or None, got {offset!r}")
    if not 0 <= offset < n:
        raise ProcessConfigError(field, f"must be in [0, {n}) for {n} values, got {offset}")
    return int(offset)


def _f32(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


# --------------------------------------------------------------------------------------------
# Parameter pytrees


@struct.dataclass
class PoissonParams:
    """Poisson arrivals. ``rate``: float32 [], mean requests per slot."""

    rate: jax.Array


@struct.dataclass
class MMPPParams:
    """Two-state Markov-modulated Poisson arrivals (bursty).

    rate_lo, rate_hi: float32 [], mean requests per slot in the low / high regime.
    p_lo_to_hi, p_hi_to_lo: float32 [], per-slot regime switch probabilities (mean sojourn
      ``1 / p`` slots).
    """

    rate_lo: jax.Array
    rate_hi: jax.Array
    p_lo_to_hi: jax.Array
    p_hi_to_lo: jax.Array


@struct.dataclass
class AR1Params:
    """Gauss-Markov AR(1) latent ``x_t`` with a static output transform.

    ``x_{t+1} = mean + rho (x_t - mean) + std sqrt(1 - rho^2) eps_t``, ``x_0 ~ N(mean, std^2)``
    (stationary from slot 0); value ``max(T(x_t), floor)`` with ``T`` = ``exp`` (bandwidth on
    the log), ``identity`` (bandwidth, linear) or ``sigmoid`` (share on the logit).

    mean, std: float32 [], stationary mean and standard deviation of ``x``.
    rho: float32 [], lag-1 autocorrelation in (-1, 1].
    floor: float32 [], lower clip of the value (0 for bandwidth, ``min_share`` for a share).
    transform: static, ``"exp"``, ``"identity"`` or ``"sigmoid"``.
    """

    mean: jax.Array
    std: jax.Array
    rho: jax.Array
    floor: jax.Array
    transform: str = struct.field(pytree_node=False, default="exp")


@struct.dataclass
class MarkovParams:
    """Finite-state Markov chain over levels; value ``levels[s_t]``.

    levels: float32 [K], the value in each state (Mbit/s, or a share).
    transition: float32 [K, K], row-stochastic, ``P[i, j] = Pr(s_{t+1} = j | s_t = i)``.
    init_probs: float32 [K], law of ``s_0`` (the stationary law, or one-hot for a fixed start).
    """

    levels: jax.Array
    transition: jax.Array
    init_probs: jax.Array


@struct.dataclass
class ReplayParams:
    """Replay of a per-slot series, wrapping around at its end; value ``values[(o + t) % N]``.

    values: float32 [M], the N per-slot values (Mbit/s, or a share) then zeros up to the
      replay bucket M >= N (:func:`replay_bucket`), never read.
    offset: int32 [], start index ``o`` in [0, N), or -1 for a uniform random start.
    length: int32 [], N; None: the whole of ``values``.

    The series is padded to a bucket so that traces of different lengths give arrays of one
    shape: a program compiled for one replayed trace (a rollout, a policy) serves every trace
    of its bucket (docs/design.md §4.5).
    """

    values: jax.Array
    offset: jax.Array
    length: jax.Array | None = None

    def n(self):
        """N, the number of slots of the series (traced where ``length`` is)."""
        return self.values.shape[0] if self.length is None else self.length

    def series(self) -> np.ndarray:
        """The N values (NumPy, concrete parameters only)."""
        return np.asarray(self.values)[:int(self.n())]


REPLAY_MIN_BUCKET = 1024  # every shipped trace at a 1 s slot or longer fits one bucket


def replay_bucket(n: int) -> int:
    """The padded length of a replayed series of ``n`` slots: ``REPLAY_MIN_BUCKET``, or the
    next power of two above it."""
    return max(REPLAY_MIN_BUCKET, 1 << max(int(n) - 1, 0).bit_length())


def _replay(v: np.ndarray, offset) -> ReplayParams:
    padded = np.zeros(replay_bucket(v.size), np.float32)
    padded[:v.size] = v
    return ReplayParams(jnp.asarray(padded), jnp.asarray(_offset("offset", offset, v.size),
                                                         jnp.int32), jnp.int32(v.size))


@struct.dataclass
class RTTParams:
    """RTT ``base_ms + jitter_ms * Exp(1)`` i.i.d. per slot: never below the base (propagation)
    delay, mean ``base_ms + jitter_ms``. Both float32 [], ms."""

    base_ms: jax.Array
    jitter_ms: jax.Array


@struct.dataclass
class OutageParams:
    """Two-state up/down Markov chain of link outages.

    p_fail: float32 [], Pr(down at t+1 | up at t).
    p_recover: float32 [], Pr(up at t+1 | down at t); mean outage length ``1 / p_recover``
      slots; stationary outage fraction ``p_fail / (p_fail + p_recover)``.
    """

    p_fail: jax.Array
    p_recover: jax.Array


@struct.dataclass
class LinkParams:
    """The link and cloud processes of one client.

    bandwidth: downlink bandwidth process (AR1Params, MarkovParams or ReplayParams), Mbit/s.
    rtt: RTTParams.
    share: cloud compute share process (AR1Params, MarkovParams or ReplayParams), (0, 1].
    outage: OutageParams, or None for a link that never fails.
    up_ratio: float32 [], uplink bandwidth / downlink bandwidth.
    """

    bandwidth: Any
    rtt: RTTParams
    share: Any
    outage: OutageParams | None
    up_ratio: jax.Array


@struct.dataclass
class LinkState:
    """Latent states of the link's component processes (one pytree per component)."""

    bandwidth: Any
    rtt: Any
    share: Any
    outage: Any


@struct.dataclass
class LinkSample:
    """One slot's link draw (add a leading [T] or [B] axis for paths and batches).

    bw_up_mbps, bw_down_mbps: float32, Mbit/s, >= 0, exactly 0 while the link is down.
    rtt_ms: float32, ms.
    cloud_share: float32, in (0, 1], fraction of the cloud GPU this client gets.
    up: bool, False during an outage (then only edge-side execution is feasible).
    """

    bw_up_mbps: jax.Array
    bw_down_mbps: jax.Array
    rtt_ms: jax.Array
    cloud_share: jax.Array
    up: jax.Array


# --------------------------------------------------------------------------------------------
# Constructors (validate, then build the pytree)


def make_poisson(rate: float) -> PoissonParams:
    """Poisson arrivals with ``rate`` (>= 0) mean requests per slot."""
    return PoissonParams(rate=_f32(_nonneg("rate", rate)))


def make_mmpp(rate_lo: float, rate_hi: float, p_lo_to_hi: float, p_hi_to_lo: float) -> MMPPParams:
    """Two-state MMPP; rates >= 0 per slot, switch probabilities in [0, 1], not both 0."""
    lo, hi = _nonneg("rate_lo", rate_lo), _nonneg("rate_hi", rate_hi)
    p_lh, p_hl = _prob("p_lo_to_hi", p_lo_to_hi), _prob("p_hi_to_lo", p_hi_to_lo)
    if p_lh + p_hl == 0:
        raise ProcessConfigError(
            "p_lo_to_hi", "p_lo_to_hi and p_hi_to_lo are both 0: no stationary regime law"
        )
    return MMPPParams(_f32(lo), _f32(hi), _f32(p_lh), _f32(p_hl))


def make_ar1_bandwidth(
    mean_mbps: float, std_mbps: float, rho: float, log_domain: bool = True
) -> AR1Params:
    """Gauss-Markov bandwidth with stationary mean ``mean_mbps`` and std ``std_mbps``.

    ``log_domain=True`` (default): AR(1) on ``log`` bandwidth, log-normal marginal matched to
    the two moments: ``s^2 = log(1 + (std/mean)^2)``, ``m = log(mean) - s^2 / 2``; always > 0.
    ``log_domain=False``: AR(1) on the bandwidth itself, clipped at 0 (the clip raises the
    mean slightly when ``std`` is comparable to ``mean``).
    ``rho`` in (-1, 1] is the lag-1 autocorrelation of the latent (1: frozen at its first draw).
    """
    std = _nonneg("std_mbps", std_mbps)
    r = _in_range("rho", rho, -1.0, 1.0, lo_open=True)
    if log_domain:
        mean = _positive("mean_mbps", mean_mbps)
        s2 = math.log1p((std / mean) ** 2)
        return AR1Params(_f32(math.log(mean) - s2 / 2), _f32(math.sqrt(s2)), _f32(r), _f32(0.0),
                         transform="exp")
    mean = _nonneg("mean_mbps", mean_mbps)
    return AR1Params(_f32(mean), _f32(std), _f32(r), _f32(0.0), transform="identity")


def make_ar1_share(
    median_share: float, logit_std: float, rho: float, min_share: float = 1e-3
) -> AR1Params:
    """Cloud share ``max(sigmoid(x_t), min_share)`` with ``x`` an AR(1) on the logit.

    ``median_share`` in (0, 1) is the median of the share (``sigmoid`` of the latent mean);
    ``logit_std`` >= 0 the stationary std of the logit; ``rho`` in (-1, 1]; ``min_share`` in
    (0, 1] keeps the share away from 0.
    """
    med = _in_range("median_share", median_share, 0.0, 1.0, lo_open=True, hi_open=True)
    std = _nonneg("logit_std", logit_std)
    r = _in_range("rho", rho, -1.0, 1.0, lo_open=True)
    floor = _in_range("min_share", min_share, 0.0, 1.0, lo_open=True)
    if floor > med:
        raise ProcessConfigError(
            "min_share", f"{floor:g} is above median_share {med:g}: the floor would "
            "replace the share process (lower min_share)")
    return AR1Params(_f32(math.log(med / (1 - med))), _f32(std), _f32(r), _f32(floor),
                     transform="sigmoid")


def markov_stationary(transition: Any) -> np.ndarray:
    """Stationary law ``pi = pi P`` of a row-stochastic matrix: float64 [K].

    Solves ``pi (P - I) = 0, sum(pi) = 1`` by least squares; for a reducible chain with several
    closed classes this is one of the stationary laws (the minimum-norm one).
    """
    p = np.asarray(transition, dtype=np.float64)
    k = p.shape[0]
    a = np.vstack([p.T - np.eye(k), np.ones((1, k))])
    b = np.append(np.zeros(k), 1.0)
    pi = np.linalg.lstsq(a, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _make_markov(levels: np.ndarray, transition: Any, init_state: int | None) -> MarkovParams:
    k = levels.size
    try:
        p = np.asarray(transition, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProcessConfigError("transition", "must be a matrix of numbers") from None
    if p.shape != (k, k):
        raise ProcessConfigError(
            "transition", f"must have shape ({k}, {k}) for {k} levels, got {p.shape}"
        )
    if np.any(np.isnan(p)):
        raise ProcessConfigError("transition", "contains NaN")
    if np.any((p < 0) | (p > 1)):
        i, j = np.argwhere((p < 0) | (p > 1))[0]
        raise ProcessConfigError("transition", f"entry [{i}, {j}] = {p[i, j]!r} is not in [0, 1]")
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1) > 1e-6):
        i = int(np.argmax(np.abs(sums - 1)))
        raise ProcessConfigError(
            "transition", f"must be row-stochastic; row {i} sums to {sums[i]!r}"
        )
    p = p / sums[:, None]
    if init_state is None:
        init = markov_stationary(p)
    else:
        init = np.eye(k)[_offset("init_state", init_state, k)]
    return MarkovParams(_f32(levels), _f32(p), _f32(init))


def make_markov_bandwidth(
    levels_mbps: Sequence[float], transition: Any, init_state: int | None = None
) -> MarkovParams:
    """Markov-chain bandwidth over ``levels_mbps`` (>= 0) with a row-stochastic ``transition``
    [K, K]; starts from the stationary law, or in state ``init_state``."""
    levels = _vector("levels_mbps", levels_mbps, 0.0, math.inf)
    return _make_markov(levels, transition, init_state)


def make_markov_share(
    levels: Sequence[float], transition: Any, init_state: int | None = None
) -> MarkovParams:
    """Markov-chain cloud share over ``levels`` in (0, 1] (see make_markov_bandwidth)."""
    lv = _vector("levels", levels, 0.0, 1.0, lo_open=True)
    return _make_markov(lv, transition, init_state)


def make_constant_bandwidth(mbps: float) -> MarkovParams:
    """A bandwidth fixed at ``mbps`` (>= 0): a one-state chain."""
    return make_markov_bandwidth([_nonneg("mbps", mbps)], [[1.0]])


def make_constant_share(share: float = 1.0) -> MarkovParams:
    """A cloud share fixed at ``share`` in (0, 1] (1 = idle cloud): a one-state chain."""
    return make_markov_share([_in_range("share", share, 0.0, 1.0, lo_open=True)], [[1.0]])


def make_replay_bandwidth(
    values_mbps: Sequence[float] | Trace,
    slot_s: float | None = None,
    offset: int | None = None,
) -> ReplayParams:
    """Replay per-slot bandwidth values (Mbit/s, >= 0), wrapping at the end.

    ``values_mbps`` is an array of per-slot values, or a :class:`Trace` that is put on the
    slot grid with ``resample(trace, slot_s)`` (its whole slots). ``offset``: start index in
    [0, N), or None for a uniform random start drawn by ``process_init``.
    """
    if isinstance(values_mbps, Trace):
        if slot_s is None:
            raise ProcessConfigError("slot_s", "is required to replay a Trace")
        values_mbps = resample(values_mbps, _positive("slot_s", slot_s))
    return _replay(_vector("values_mbps", values_mbps, 0.0, math.inf), offset)


def make_replay_share(
    utilization: Sequence[float], min_share: float = 0.05, offset: int | None = None
) -> ReplayParams:
    """Replay a per-slot cloud utilization series (in [0, 1]) as the share this client gets,
    ``max(1 - utilization, min_share)`` with ``min_share`` in (0, 1]; wraps at the end."""
    u = _vector("utilization", utilization, 0.0, 1.0)
    floor = _in_range("min_share", min_share, 0.0, 1.0, lo_open=True)
    return _replay(np.maximum(1.0 - u, floor), offset)


def make_rtt(base_ms: float, jitter_ms: float = 0.0) -> RTTParams:
    """RTT of ``base_ms`` (>= 0) plus i.i.d. exponential jitter of mean ``jitter_ms`` (>= 0)."""
    return RTTParams(_f32(_nonneg("base_ms", base_ms)), _f32(_nonneg("jitter_ms", jitter_ms)))


def make_outage(outage_prob: float, mean_outage_slots: float) -> OutageParams:
    """Up/down chain with stationary outage fraction ``outage_prob`` in [0, 1) and mean
    outage length ``mean_outage_slots`` >= 1.

    ``p_recover = 1 / L`` and ``p_fail = p_recover * q / (1 - q)``; a probability requires
    ``q <= L / (L + 1)`` (outages shorter than the gaps between them, on average, allowed).
    """
    q = _in_range("outage_prob", outage_prob, 0.0, 1.0, hi_open=True)
    length = _in_range("mean_outage_slots", mean_outage_slots, 1.0, math.inf)
    p_recover = 1.0 / length
    p_fail = p_recover * q / (1.0 - q)
    # The bound itself is reachable (p_fail = 1); its float64 image may land a few ulps above.
    if p_fail > 1.0 + 1e-12:
        raise ProcessConfigError(
            "outage_prob",
            f"{q} is unreachable with mean_outage_slots={length}: at most "
            f"{length / (length + 1):.4g} (the link must be up at least one slot between outages)",
        )
    return OutageParams(_f32(min(p_fail, 1.0)), _f32(p_recover))


def make_link_params(
    bandwidth: AR1Params | MarkovParams | ReplayParams,
    rtt: RTTParams,
    share: AR1Params | MarkovParams | ReplayParams | None = None,
    outage: OutageParams | None = None,
    up_ratio: float = 1.0,
) -> LinkParams:
    """Combine validated component params; ``share=None`` is an idle cloud (share 1) and
    ``up_ratio`` (> 0) is uplink / downlink bandwidth."""
    for field, value, types in (
        ("bandwidth", bandwidth, (AR1Params, MarkovParams, ReplayParams)),
        ("rtt", rtt, (RTTParams,)),
        ("share", share, (AR1Params, MarkovParams, ReplayParams, type(None))),
        ("outage", outage, (OutageParams, type(None))),
    ):
        if not isinstance(value, types):
            raise ProcessConfigError(field, f"must be one of {[t.__name__ for t in types]}, "
                                            f"got {type(value).__name__}")
    if share is None:
        share = make_constant_share(1.0)
    return LinkParams(bandwidth, rtt, share, outage, _f32(_positive("up_ratio", up_ratio)))


# --------------------------------------------------------------------------------------------
# Kernels: init(key, params) -> state; step(key, state, params) -> (state, value)


def poisson_init(key, params: PoissonParams):
    """Poisson arrivals are memoryless: the state is an empty tuple."""
    del key, params
    return ()


def poisson_step(key, state, params: PoissonParams):
    """int32 [] arrivals ~ Poisson(rate)."""
    return state, jax.random.poisson(key, params.rate).astype(jnp.int32)


def mmpp_init(key, params: MMPPParams) -> jax.Array:
    """int32 [] regime (0 low, 1 high) drawn from its stationary law."""
    p_hi = params.p_lo_to_hi / (params.p_lo_to_hi + params.p_hi_to_lo)
    return jax.random.bernoulli(key, p_hi).astype(jnp.int32)


def mmpp_step(key, regime, params: MMPPParams):
    """Arrivals ~ Poisson(rate of the current regime), then the regime switches."""
    k_arr, k_sw = jax.random.split(key)
    rate = jnp.where(regime == 1, params.rate_hi, params.rate_lo)
    arrivals = jax.random.poisson(k_arr, rate).astype(jnp.int32)
    p_switch = jnp.where(regime == 1, params.p_hi_to_lo, params.p_lo_to_hi)
    regime_tp1 = jnp.where(jax.random.bernoulli(k_sw, p_switch), 1 - regime, regime)
    return regime_tp1, arrivals


_TRANSFORMS = {"exp": jnp.exp, "identity": lambda x: x, "sigmoid": jax.nn.sigmoid}


def ar1_init(key, params: AR1Params) -> jax.Array:
    """float32 [] latent ``x_0 ~ N(mean, std^2)``."""
    return params.mean + params.std * jax.random.normal(key, params.mean.shape)


def ar1_step(key, x_t, params: AR1Params):
    """Emit ``max(T(x_t), floor)`` (clipped to <= 1 for a share), then advance the AR(1)."""
    value = jnp.maximum(_TRANSFORMS[params.transform](x_t), params.floor)
    if params.transform == "sigmoid":
        value = jnp.minimum(value, 1.0)
    innov = params.std * jnp.sqrt(jnp.maximum(1.0 - params.rho**2, 0.0))
    x_tp1 = params.mean + params.rho * (x_t - params.mean) + innov * jax.random.normal(
        key, x_t.shape
    )
    return x_tp1, value


def markov_init(key, params: MarkovParams) -> jax.Array:
    """int32 [] state index drawn from ``init_probs``."""
    return jax.random.categorical(key, jnp.log(params.init_probs)).astype(jnp.int32)


def markov_step(key, s_t, params: MarkovParams):
    """Emit ``levels[s_t]``, then draw ``s_{t+1}`` from row ``s_t`` of the transition matrix."""
    s_tp1 = jax.random.categorical(key, jnp.log(params.transition[s_t])).astype(jnp.int32)
    return s_tp1, params.levels[s_t]


def replay_init(key, params: ReplayParams) -> jax.Array:
    """int32 [] start index: ``offset``, or uniform in [0, N) when ``offset`` is -1."""
    random_start = jax.random.randint(key, (), 0, params.n(), dtype=jnp.int32)
    return jnp.where(params.offset < 0, random_start, params.offset).astype(jnp.int32)


def replay_step(key, i_t, params: ReplayParams):
    """Emit ``values[i_t]``; the index advances and wraps."""
    del key
    return (i_t + 1) % params.n(), params.values[i_t]


def rtt_init(key, params: RTTParams):
    """The RTT is i.i.d. per slot: the state is an empty tuple."""
    del key, params
    return ()


def rtt_step(key, state, params: RTTParams):
    """float32 [] RTT in ms: ``base_ms + jitter_ms * Exp(1)``."""
    return state, params.base_ms + params.jitter_ms * jax.random.exponential(key)


def outage_init(key, params: OutageParams) -> jax.Array:
    """bool [] ``down`` drawn from the stationary outage fraction."""
    return jax.random.bernoulli(key, outage_fraction(params))


def outage_step(key, down_t, params: OutageParams):
    """Emit ``up = not down_t``, then advance the up/down chain."""
    p_down_next = jnp.where(down_t, 1.0 - params.p_recover, params.p_fail)
    return jax.random.bernoulli(key, p_down_next), jnp.logical_not(down_t)


_KERNELS = {
    PoissonParams: (poisson_init, poisson_step),
    MMPPParams: (mmpp_init, mmpp_step),
    AR1Params: (ar1_init, ar1_step),
    MarkovParams: (markov_init, markov_step),
    ReplayParams: (replay_init, replay_step),
    RTTParams: (rtt_init, rtt_step),
    OutageParams: (outage_init, outage_step),
}


def _kernel(params):
    try:
        return _KERNELS[type(params)]
    except KeyError:
        raise TypeError(
            f"no random process for parameters of type {type(params).__name__}"
        ) from None


def process_init(key: jax.Array, params) -> Any:
    """Slot-0 latent state of the process that ``params`` describes (dispatch on its type)."""
    return _kernel(params)[0](key, params)


def process_step(key: jax.Array, state, params) -> tuple[Any, jax.Array]:
    """``(state_{t+1}, value_t)`` of the process that ``params`` describes."""
    return _kernel(params)[1](key, state, params)


def _scan_path(init_fn, step_fn, key, params, n_slots: int):
    k_init, k_steps = jax.random.split(key)
    state = init_fn(k_init, params)

    def body(s, k):
        return step_fn(k, s, params)

    _, values = lax.scan(body, state, jax.random.split(k_steps, n_slots))
    return values


def sample_path(key: jax.Array, params, n_slots: int) -> jax.Array:
    """Values of slots ``0 .. n_slots-1``: [n_slots] (int32 arrivals, bool ``up`` for outages,
    float32 otherwise). ``n_slots`` is static under ``jit``. Same key, same path."""
    init_fn, step_fn = _kernel(params)
    return _scan_path(init_fn, step_fn, key, params, n_slots)


# --------------------------------------------------------------------------------------------
# Stationary moments


def arrival_mean_rate(params: PoissonParams | MMPPParams) -> jax.Array:
    """Stationary mean arrivals per slot: ``rate``, or for the MMPP
    ``(p_hl * rate_lo + p_lh * rate_hi) / (p_lh + p_hl)``."""
    if isinstance(params, PoissonParams):
        return params.rate
    if isinstance(params, MMPPParams):
        p_lh, p_hl = params.p_lo_to_hi, params.p_hi_to_lo
        return (p_hl * params.rate_lo + p_lh * params.rate_hi) / (p_lh + p_hl)
    raise TypeError(f"not an arrival process: {type(params).__name__}")


def outage_fraction(params: OutageParams) -> jax.Array:
    """Stationary fraction of slots in outage, ``p_fail / (p_fail + p_recover)``."""
    return params.p_fail / (params.p_fail + params.p_recover)


# --------------------------------------------------------------------------------------------
# The link: bandwidth + RTT + share + outage


def link_init(key: jax.Array, params: LinkParams) -> LinkState:
    """Slot-0 latent states of the link's components."""
    k_bw, k_rtt, k_share, k_out = jax.random.split(key, 4)
    return LinkState(
        bandwidth=process_init(k_bw, params.bandwidth),
        rtt=process_init(k_rtt, params.rtt),
        share=process_init(k_share, params.share),
        outage=() if params.outage is None else process_init(k_out, params.outage),
    )


def link_step(key: jax.Array, state: LinkState, params: LinkParams) -> tuple[LinkState, LinkSample]:
    """Slot ``t``'s :class:`LinkSample` and the states of slot ``t+1``.

    Downlink = the bandwidth process, uplink = ``up_ratio`` times it, both exactly 0 when the
    outage chain is down.
    """
    k_bw, k_rtt, k_share, k_out = jax.random.split(key, 4)
    s_bw, bw = process_step(k_bw, state.bandwidth, params.bandwidth)
    s_rtt, rtt = process_step(k_rtt, state.rtt, params.rtt)
    s_share, share = process_step(k_share, state.share, params.share)
    if params.outage is None:
        s_out, up = (), jnp.bool_(True)
    else:
        s_out, up = process_step(k_out, state.outage, params.outage)
    bw_down = jnp.where(up, bw, 0.0).astype(jnp.float32)
    sample = LinkSample(
        bw_up_mbps=(bw_down * params.up_ratio).astype(jnp.float32),
        bw_down_mbps=bw_down,
        rtt_ms=rtt.astype(jnp.float32),
        cloud_share=share.astype(jnp.float32),
        up=up,
    )
    return LinkState(s_bw, s_rtt, s_share, s_out), sample


def sample_link_path(key: jax.Array, params: LinkParams, n_slots: int) -> LinkSample:
    """``n_slots`` slots of the link: a LinkSample whose fields have a leading [n_slots] axis.
    ``n_slots`` is static under ``jit``."""
    return _scan_path(link_init, link_step, key, params, n_slots)


# --------------------------------------------------------------------------------------------
# Frozen configs (what a CLI parses) and their builders


@dataclasses.dataclass(frozen=True)
class ArrivalConfig:
    """Request arrivals at the edge.

    kind: "poisson" or "mmpp" (bursty two-state Markov-modulated Poisson).
    rate: Poisson mean requests per slot.
    rate_lo, rate_hi: MMPP mean requests per slot in the low / high regime.
    p_lo_to_hi, p_hi_to_lo: MMPP per-slot regime switch probabilities.
    """

    kind: Literal["poisson", "mmpp"] = "poisson"
    rate: float = 1.0
    rate_lo: float = 0.5
    rate_hi: float = 4.0
    p_lo_to_hi: float = 0.05
    p_hi_to_lo: float = 0.2


@dataclasses.dataclass(frozen=True)
class BandwidthConfig:
    """Downlink bandwidth process.

    kind: "ar1", "markov", "trace" or "constant".
    mean_mbps, std_mbps, rho: AR(1) stationary mean and std (Mbit/s) and lag-1 correlation;
      also the value of "constant" (mean_mbps).
    log_domain: AR(1) on log bandwidth (True) or on bandwidth clipped at 0 (False).
    levels_mbps, transition: Markov levels (Mbit/s) and row-stochastic transition matrix.
    trace_path, trace_format: trace file and its format ("auto", "pensieve", "mahimahi",
      "csv"), resampled to the slot length.
    trace_offset: replay start slot; None for a random start.
    """

    kind: Literal["ar1", "markov", "trace", "constant"] = "ar1"
    mean_mbps: float = 10.0
    std_mbps: float = 5.0
    rho: float = 0.9
    log_domain: bool = True
    levels_mbps: tuple[float, ...] = (1.0, 5.0, 20.0)
    transition: tuple[tuple[float, ...], ...] = (
        (0.90, 0.10, 0.00),
        (0.05, 0.90, 0.05),
        (0.00, 0.10, 0.90),
    )
    trace_path: str | None = None
    trace_format: str = "auto"
    trace_offset: int | None = None


@dataclasses.dataclass(frozen=True)
class ShareConfig:
    """The cloud compute share this client gets, in (0, 1].

    kind: "constant", "ar1" (on the logit), "markov" or "replay" (of a utilization series).
    share: the "constant" share (1 = idle cloud).
    median_share, logit_std, rho: AR(1)-on-logit median share, stationary logit std and lag-1
      correlation.
    levels, transition: Markov share levels and row-stochastic transition matrix.
    utilization, replay_offset: per-slot utilization series in [0, 1] and its start slot
      (None: random).
    min_share: floor of the share for "ar1" and "replay".
    """

    kind: Literal["constant", "ar1", "markov", "replay"] = "constant"
    share: float = 1.0
    median_share: float = 0.5
    logit_std: float = 1.0
    rho: float = 0.95
    levels: tuple[float, ...] = (1.0, 0.5, 0.1)
    transition: tuple[tuple[float, ...], ...] = (
        (0.95, 0.05, 0.00),
        (0.05, 0.90, 0.05),
        (0.00, 0.10, 0.90),
    )
    utilization: tuple[float, ...] = ()
    replay_offset: int | None = None
    min_share: float = 0.05


@dataclasses.dataclass(frozen=True)
class LinkConfig:
    """The link and cloud processes of one client.

    bandwidth: downlink bandwidth process.
    up_ratio: uplink / downlink bandwidth.
    rtt_ms, rtt_jitter_ms: base RTT and mean of its exponential jitter, ms.
    share: cloud compute share process.
    outage_prob: stationary fraction of slots in outage (0: outages off).
    mean_outage_slots: mean outage length in slots.
    """

    bandwidth: BandwidthConfig = BandwidthConfig()
    up_ratio: float = 1.0
    rtt_ms: float = 50.0
    rtt_jitter_ms: float = 0.0
    share: ShareConfig = ShareConfig()
    outage_prob: float = 0.0
    mean_outage_slots: float = 5.0


def make_arrivals(cfg: ArrivalConfig) -> PoissonParams | MMPPParams:
    """Arrival params from a config; errors name the field, e.g. ``ArrivalConfig.rate``."""
    with _field_prefix("ArrivalConfig"):
        if cfg.kind == "poisson":
            return make_poisson(cfg.rate)
        if cfg.kind == "mmpp":
            return make_mmpp(cfg.rate_lo, cfg.rate_hi, cfg.p_lo_to_hi, cfg.p_hi_to_lo)
        raise ProcessConfigError("kind", f"must be 'poisson' or 'mmpp', got {cfg.kind!r}")


def _make_bandwidth(cfg: BandwidthConfig, slot_s: float | None):
    if cfg.kind == "ar1":
        return make_ar1_bandwidth(cfg.mean_mbps, cfg.std_mbps, cfg.rho, cfg.log_domain)
    if cfg.kind == "markov":
        return make_markov_bandwidth(cfg.levels_mbps, cfg.transition)
    if cfg.kind == "constant":
        return make_constant_bandwidth(cfg.mean_mbps)
    if cfg.kind == "trace":
        if cfg.trace_path is None:
            raise ProcessConfigError("trace_path", "is required for kind='trace'")
        if slot_s is None:
            raise ProcessConfigError("slot_s", "is required for kind='trace'")
        trace = load_trace(cfg.trace_path, cfg.trace_format)
        return make_replay_bandwidth(trace, slot_s, offset=cfg.trace_offset)
    raise ProcessConfigError(
        "kind", f"must be 'ar1', 'markov', 'trace' or 'constant', got {cfg.kind!r}"
    )


def _make_share(cfg: ShareConfig):
    if cfg.kind == "constant":
        return make_constant_share(cfg.share)
    if cfg.kind == "ar1":
        return make_ar1_share(cfg.median_share, cfg.logit_std, cfg.rho, cfg.min_share)
    if cfg.kind == "markov":
        return make_markov_share(cfg.levels, cfg.transition)
    if cfg.kind == "replay":
        return make_replay_share(cfg.utilization, cfg.min_share, offset=cfg.replay_offset)
    raise ProcessConfigError(
        "kind", f"must be 'constant', 'ar1', 'markov' or 'replay', got {cfg.kind!r}"
    )


def make_link(cfg: LinkConfig, slot_s: float | None = None) -> LinkParams:
    """Link params from a config; ``slot_s`` (seconds) is needed to resample a trace.

    Errors name the field, e.g. ``LinkConfig.bandwidth.rho``; a trace file that cannot be read
    raises ``TraceFormatError`` with its line.
    """
    with _field_prefix("LinkConfig"):
        with _field_prefix("bandwidth"):
            bandwidth = _make_bandwidth(cfg.bandwidth, slot_s)
        with _field_prefix("share"):
            share = _make_share(cfg.share)
        rtt = RTTParams(_f32(_nonneg("rtt_ms", cfg.rtt_ms)),
                        _f32(_nonneg("rtt_jitter_ms", cfg.rtt_jitter_ms)))
        outage = make_outage(cfg.outage_prob, cfg.mean_outage_slots)
        if cfg.outage_prob == 0:
            outage = None
        return make_link_params(bandwidth, rtt, share, outage, cfg.up_ratio)
