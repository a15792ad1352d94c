"""Slot-level pieces of the queue-level experiments (figures 3, 4, 5, 10): environment scenarios
of the named conditions (`experiments.conditions`), the Norway trace set, the policies with
the experiments' solver options, and `rollouts`, the one batcher of `lyapunov.simulate.rollout`
over (scenario, seed) pairs, and `partition_kinds` (which slots' partitions are interior).

Batching: every scenario of one figure uses the same process kinds (the share is always an
AR(1) on the logit; the idle datacenter has zero spread), so their `EnvParams` share one pytree
structure and are stacked and batched together with the seeds: one compilation per policy
(and static shape: model, privacy floor) for a whole figure.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from experiments.conditions import Condition
from lyapunov import registry
from lyapunov.simulate import batched_rollout

# Solver options of the DPP-solving policies. units=0 skips the oracle's final sweep over the
# rounded-down memory budget, which only matters where edge memory binds (it does not for
# LLaMA-7B on these devices: 3.9 GB against budgets of 4-14 GB); in a batch that sweep's
# resource DP runs on every iteration of every slot (a batched cond becomes a select).
# The solver-based policies take these as keywords (lyapunov.policies).
SOLVER_KW = {"units": 0}
SOLVER_POLICIES = ("oracle", "dp-estimate", "dp-joint", "greedy", "dp-bayes")
BURST = (0.05, 0.2, 4.0)  # MMPP: Pr(lo -> hi), Pr(hi -> lo), rate_hi / rate_lo


def norway_trace(out_dir: Path) -> Path:
    """The four shipped Norway HSDPA traces (bus, car, ferry, metro) concatenated into one
    pensieve-format file in `out_dir` (replayed from a random offset per seed)."""
    from lyapunov.traces import NORWAY_TRACES, load_shipped

    path = Path(out_dir) / "norway_concat.txt"
    t0, lines = 0.0, []
    for name in NORWAY_TRACES:
        tr = load_shipped(name)
        for t, v in zip(tr.time_s - tr.time_s[0], tr.mbps, strict=True):
            lines.append(f"{t0 + t:.3f} {v:.6f}")
        t0 += tr.duration_s
    path.write_text("\n".join(lines) + "\n")
    return path


def slot_scenario(model: str, device: str, cond: Condition, trace: Path | None, *, rate=0.3,
                  arrival_kind="poisson", V=10.0, tau_s=2.0, privacy_layers=0, bw=None, **kw):
    """The `lyapunov.env.Scenario` of `cond`: bandwidth from `trace` (random offset per seed) or
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
    return E.Scenario(model=model, device=device, cloud=cond.cloud, tau_s=tau_s, V=V,
                      arrival=arrivals(rate, arrival_kind), link=link,
                      privacy_layers=privacy_layers, **kw)


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


def policy(name: str):
    """The registered policy `name`, the DPP-solving ones with SOLVER_KW (one object per name:
    jit caches by its identity)."""
    kw = SOLVER_KW if name in SOLVER_POLICIES else {}
    (pol,) = registry.resolve(name, **kw)
    return pol


def slot_policies() -> tuple[str, ...]:
    """Every registered policy that runs in a jitted rollout (all but the learned ones, which
    need a checkpoint, and the cvx program, which runs in Python), in registration order."""
    return tuple(n for n in registry.names(learned=False) if policy(n).jittable)


def rollouts(pol, params_batch, n_slots: int, keys):
    """(StepInfo [B, T] as NumPy, actions [B, T]) of `pol` on B (params, key) pairs, batched
    (the experiments' policies run without the memory sweep: SOLVER_KW)."""
    return batched_rollout(pol, params_batch, n_slots, keys)[:2]


def seed_keys(n_seeds: int, base: int = 0):
    return jax.random.split(jax.random.PRNGKey(base), n_seeds)


def partition_kinds(actions, n_heads: int) -> dict[str, np.ndarray]:
    """Per slot (bool, the actions' leading shape): "all_edge" (every layer's heads and FFN on
    the edge), "all_cloud" (every layer's on the cloud; the embedding's side is not counted),
    "interior" (neither: the partition uses both sides) and "tp" (some layer is tensor
    parallel). `actions`: Partitions with [..., L] layer fields (`rollouts`' actions)."""
    from costmodel.partition import CLOUD, EDGE, TP

    heads, ffn = np.asarray(actions.edge_heads), np.asarray(actions.ffn)
    edge = ((heads == n_heads) & (ffn == EDGE)).all(-1)
    cloud = ((heads == 0) & (ffn == CLOUD)).all(-1)
    return {"all_edge": edge, "all_cloud": cloud, "interior": ~(edge | cloud),
            "tp": (ffn == TP).any(-1)}
