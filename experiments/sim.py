"""Shared pieces of the queue-level experiments (figures 3, 4, 5, 10): slot-environment
scenarios, the Norway trace set, and batched rollouts of `lyapunov.simulate.rollout`.

Batching: every scenario of one figure uses the same process kinds (the share is always an
AR(1) on the logit; "idle" is a median of 0.99 with zero spread), so their `EnvParams` share one
pytree structure and are stacked and vmapped together with the seeds: one compilation per
policy (and static shape: model, privacy floor) for a whole figure.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np

from experiments.registry import Unavailable

REFERENCE_POLICIES = ("cloud-only", "edge-only", "best-cut", "static-cut", "dp-estimate",
                      "oracle")
POLICY_LABEL = {
    "cloud-only": "cloud-only", "edge-only": "edge-only",
    "best-cut": "best layer cut (adaptive, Neurosurgeon-style)",
    "static-cut": "static best cut (mean link)",
    "dp-estimate": "ours, model-based: DPP solved exactly on last-slot estimate",
    "dp-joint": "ours, model-based, joint penalty (latency + 0.05 s/J energy + 0.2 s/% accuracy)",
    "oracle": "clairvoyant DPP oracle (upper bound)",
    "greedy": "greedy penalty-only",
    "hier": "ours: hierarchical PPO (trained)",
    "layerwise": "layer-wise DRL (trained PPO over cuts)",
}
POLICY_STYLE = {"cloud-only": dict(lw=3.0, alpha=0.45), "best-cut": dict(lw=3.0, alpha=0.45),
                "static-cut": dict(lw=1.3, ls=":"), "dp-estimate": dict(lw=1.3),
                "oracle": dict(lw=1.1, ls="--"), "edge-only": dict(lw=1.3),
                "dp-joint": dict(lw=1.3, ls="-."),
                "hier": dict(lw=1.6), "layerwise": dict(lw=1.3, ls="-.")}
POLICY_COLOR = {"cloud-only": "#7570b3", "edge-only": "#1b9e77", "best-cut": "#d95f02",
                "static-cut": "#a6761d", "dp-estimate": "#e7298a", "oracle": "#000000",
                "greedy": "#66a61e", "dp-joint": "#1b7837", "hier": "#e6ab02",
                "layerwise": "#1f78b4"}


def require_lyapunov():
    """Import the slot environment and simulator, or raise Unavailable."""
    try:
        from lyapunov import env, policies, simulate  # noqa: F401
    except ImportError as err:
        raise Unavailable(f"waiting on lyapunov.env / policies / simulate ({err})") from None
    return env, policies, simulate


@dataclasses.dataclass(frozen=True)
class Condition:
    """A slot-environment condition: cloud, RTT and the cloud-share process.

    name: key; cloud: "datacenter" or "mec"; rtt_ms, rtt_jitter_ms: RTT base and mean jitter;
    share_median, share_logit_std, share_rho: AR(1)-on-logit cloud share; label: legend text.
    """

    name: str
    cloud: str
    rtt_ms: float
    rtt_jitter_ms: float
    share_median: float
    share_logit_std: float
    share_rho: float = 0.95
    label: str = ""


CONDITIONS = {
    "dc-idle": Condition("dc-idle", "datacenter", 40.0, 5.0, 0.99, 0.0, 0.95,
                         "datacenter, idle GPU (share 0.99)"),
    "dc-contended": Condition("dc-contended", "datacenter", 40.0, 5.0, 0.1, 1.5, 0.95,
                              "datacenter, contended (share median 0.1, logit sd 1.5)"),
    "mec-contended": Condition("mec-contended", "mec", 2.0, 0.5, 0.2, 1.5, 0.95,
                               "MEC server, contended (share median 0.2, logit sd 1.5)"),
}


def norway_trace(out_dir: Path) -> Path:
    """The four shipped Norway HSDPA traces (bus, car, ferry, metro) concatenated into one
    pensieve-format file in `out_dir` (replayed from a random offset per seed)."""
    from lyapunov.traces import SHIPPED_TRACES, load_shipped

    path = Path(out_dir) / "norway_concat.txt"
    t0, lines = 0.0, []
    for name in SHIPPED_TRACES:
        tr = load_shipped(name)
        for t, v in zip(tr.time_s - tr.time_s[0], tr.mbps, strict=True):
            lines.append(f"{t0 + t:.3f} {v:.6f}")
        t0 += tr.duration_s
    path.write_text("\n".join(lines) + "\n")
    return path


def scenario(model: str, device: str, cond: Condition, trace: Path | None, *, rate=0.3,
             arrival_kind="poisson", V=10.0, tau_s=2.0, privacy_layers=0, bw=None, **kw):
    """A lyapunov.env.Scenario for `cond`; bandwidth from `trace` (random offset per seed) or
    the given BandwidthConfig `bw`; extra keyword arguments go to the Scenario. (Figures 3 and
    4 use one batch size and slot count per mode and the same process kinds, so their
    rollouts share compiled code.)"""
    from lyapunov import env as E
    from lyapunov import processes as proc

    if bw is None:
        bw = proc.BandwidthConfig(kind="trace", trace_path=str(trace), trace_offset=None)
    share = proc.ShareConfig(kind="ar1", median_share=cond.share_median,
                             logit_std=cond.share_logit_std, rho=cond.share_rho,
                             min_share=1e-3)
    link = proc.LinkConfig(bandwidth=bw, rtt_ms=cond.rtt_ms, rtt_jitter_ms=cond.rtt_jitter_ms,
                           share=share)
    arrival = arrivals(rate, arrival_kind)
    return E.Scenario(model=model, device=device, cloud=cond.cloud, tau_s=tau_s, V=V,
                      arrival=arrival, link=link, privacy_layers=privacy_layers, **kw)


BURST = (0.05, 0.2, 4.0)  # MMPP: Pr(lo -> hi), Pr(hi -> lo), rate_hi / rate_lo


def arrivals(rate: float, kind: str = "poisson"):
    """ArrivalConfig of mean `rate` requests per slot. Both kinds are built as an MMPP (one
    pytree structure, so one compiled rollout serves both): "poisson" has equal rates in its
    two regimes (exactly Poisson); "bursty" spends 20% of the time (mean 5 slots) at 4x the
    rate of the other regime."""
    from lyapunov import processes as proc

    p_lh, p_hl, ratio = BURST
    if kind == "poisson":
        return proc.ArrivalConfig(kind="mmpp", rate_lo=rate, rate_hi=rate, p_lo_to_hi=p_lh,
                                  p_hi_to_lo=p_hl)
    if kind == "bursty":
        pi_hi = p_lh / (p_lh + p_hl)
        lo = rate / (1.0 - pi_hi + pi_hi * ratio)
        return proc.ArrivalConfig(kind="mmpp", rate_lo=lo, rate_hi=lo * ratio, p_lo_to_hi=p_lh,
                                  p_hi_to_lo=p_hl)
    raise ValueError(f"arrival kind must be 'poisson' or 'bursty', got {kind!r}")


def stack(trees):
    return jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *trees)


# Solver options of the DPP-solving policies. units=0 skips the oracle's final sweep over the
# rounded-down memory budget, which only matters where edge memory binds (it does not for
# LLaMA-7B on these devices: 3.9 GB against budgets of 4-14 GB); under vmap that sweep's
# resource DP runs on every iteration of every slot (a batched cond becomes a select), which
# makes batched rollouts two orders of magnitude slower.
SOLVER_KW = {"units": 0}


def _solver_policy(name: str):
    """dp-estimate / oracle / greedy built on lyapunov.oracle.solve_slot with SOLVER_KW (for
    policy factories that do not take solver options)."""
    import jax.numpy as jnp

    from lyapunov.env import cost_link
    from lyapunov.oracle import solve_slot
    from lyapunov.policies import Policy, estimate_link
    from lyapunov.queues import Queues

    def act(key, x, params):
        del key
        if name == "oracle":
            q, link, sp = x.queues, cost_link(x.link_t), params.slot
        elif name == "greedy":
            q, link = Queues.zeros(), estimate_link(x, "last")
            sp = params.slot.replace(V=jnp.float32(1.0))
        else:
            q, link, sp = x.queues, estimate_link(x, "last"), params.slot
        return solve_slot(q, link, params.spec, sp, params.precisions, **SOLVER_KW).partition

    return Policy(name, act, clairvoyant=name == "oracle")


@functools.cache
def policy(name: str):
    """One Policy object per name (jit caches by its identity); the DPP-solving ones with
    SOLVER_KW."""
    _, policies, _ = require_lyapunov()
    if name in ("oracle", "dp-estimate", "greedy"):
        try:
            return policies.get_policy(name, **SOLVER_KW)
        except TypeError:
            return _solver_policy(name)
    return policies.get_policy(name)


@functools.cache
def _batched_rollout():
    _, _, simulate = require_lyapunov()
    return jax.jit(jax.vmap(simulate.rollout, in_axes=(None, 0, None, 0)),
                   static_argnums=(0, 2))


def rollouts(pol, params_batch, n_slots: int, keys):
    """(StepInfo [B, T] as NumPy, actions [B, T]) of `pol` on B (params, key) pairs."""
    info, actions, _ = _batched_rollout()(pol, params_batch, n_slots, keys)
    return jax.tree.map(np.asarray, info), actions


def seed_keys(n_seeds: int, base: int = 0):
    return jax.random.split(jax.random.PRNGKey(base), n_seeds)


def mean_ci(x, axis=None):
    """(mean, half-width of the 95% t-interval) of samples (NaN-free)."""
    from scipy import stats

    x = np.asarray(x, float)
    n = x.size if axis is None else x.shape[axis]
    m = np.mean(x, axis=axis)
    if n < 2:
        return m, np.zeros_like(m) * np.nan
    half = stats.t.ppf(0.975, n - 1) * np.std(x, axis=axis, ddof=1) / np.sqrt(n)
    return m, half
