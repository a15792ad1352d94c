"""Figure 9: robustness of a split request under link outages: completion within a deadline and
latency, for checkpoint-resume with exponential backoff (and edge fallback) versus restart from
scratch.

The model (a small request-level simulation on top of the cost model and the outage process):

- The link is up/down following `lyapunov.processes` (two-state Markov chain at `dt_s`
  resolution; stationary outage fraction q, mean outage length `mean_outage_s`).
- One request under a fixed split partition (the best layer cut of the layer-wise family with
  the first `privacy_layers` layers pinned to the edge; it must be a proper cut, so that every
  pass crosses the link) is K = 1 + T segments:
  the prefill pass, then T decode steps. Segment times come from the cost model: the decode
  step t_step = (L(T) - L(T/2)) / (T/2) (the mean step at this context), prefill = L(T) - T
  t_step. A segment needs the link up for its whole duration.
- An outage that hits a segment is detected a timeout after it starts. The edge then retries
  with full-jitter exponential backoff, each attempt waiting the timeout again; the schedule
  is a `costmodel.outage.RetryConfig`, the same one the runtime (`bridge`) and the slot
  environment use (docs/design.md §2.7). Two are compared: the runtime's defaults (5 s
  timeout, up to 30 s delays: chosen to outlast a server restart) and a fast-detection one
  (0.5 s timeout, delays up to 1 s).
  - checkpoint-resume: on reconnection it resumes at the failed segment (the checkpoint is the
    last acknowledged layer boundary; the partial segment is lost). When the retry budget is
    spent it falls back to the edge: it recomputes the KV cache of the cloud's layers (an edge
    prefill, conservative) and runs the remaining decode steps edge-only.
  - restart: retries (fast schedule, no budget) until the link is back, then restarts the
    request from its first segment (no checkpoint, no fallback).
- Beside the simulation, the slot model's price of a caught request
  (`RetryConfig.recovery` for an outage of the mean remaining length, then the planned
  latency) is drawn for each schedule: the number the slot environment charges.
- A request that has not finished `deadline_factor` x its outage-free latency after it started
  is a failure.
Seeds are independent outage paths (and request start times).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from costmodel import partition as P
from costmodel.costs import decode_token_time, prefill_time, request_costs
from costmodel.link import make_link
from costmodel.outage import RetryConfig
from costmodel.strategies import best_layer_cut
from experiments.catalog import Experiment
from experiments.common import get_spec
from experiments.plotting import finish, pyplot
from experiments.stats import finite_mean_ci
from experiments.tables import read_config, read_rows, write_config, write_rows
from lyapunov.processes import make_outage, sample_path

NAME = "robustness"
POLICIES = ("checkpoint-resume", "checkpoint-resume-fast", "restart")
FAST = RetryConfig(timeout_s=0.5, base_s=0.05, factor=2.0, cap_s=1.0, max_retries=5)


@dataclasses.dataclass(frozen=True)
class Config:
    """model, device, cloud, rtt_ms, bw_mbps, cloud_share: the request's setting;
    privacy_layers: layers pinned to the edge (the partition is the best cut >= this);
    outage_fracs: stationary outage fractions swept; mean_outage_s: mean outage length (s);
    dt_s: resolution of the outage path (s);
    retry: the runtime's retry schedule (checkpoint-resume); retry_fast: a fast-detection
    schedule (checkpoint-resume-fast, and restart's retries);
    deadline_factor: a request not done within this multiple of its outage-free latency fails;
    n_requests: requests per seed; seeds: independent outage paths."""

    model: str = "llama-7b"
    device: str = "galaxy-s23"
    cloud: str = "datacenter"
    rtt_ms: float = 40.0
    bw_mbps: float = 20.0
    cloud_share: float = 0.3
    privacy_layers: int = 2
    outage_fracs: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
    mean_outage_s: float = 3.0
    dt_s: float = 0.05
    retry: RetryConfig = RetryConfig()
    retry_fast: RetryConfig = FAST
    deadline_factor: float = 3.0
    n_requests: int = 1000
    seeds: int = 10


QUICK = Config(n_requests=150, seeds=5, outage_fracs=(0.0, 0.02, 0.05, 0.1, 0.2, 0.3))
FULL = Config()


@jax.jit
def _segment_costs(link, spec):
    """The best layer cut, its latency with all and with half the new tokens, and the edge's
    prefill and per-token times: one program (run eagerly, its ops compiled one by one took
    6 s)."""
    cut = best_layer_cut(link, spec)
    half = spec.replace(new_tokens=jnp.floor(spec.new_tokens / 2))
    return (cut, request_costs(cut, link, spec).latency_s,
            request_costs(cut, link, half).latency_s, prefill_time(spec),
            decode_token_time(spec))


def segment_times(cfg: Config):
    """(prefill_s, step_s, T, edge_prefill_s, edge_step_s, partition name) of the best layer
    cut (`costmodel.strategies.best_layer_cut`, least latency) at the configured link."""
    spec = get_spec(cfg.model, cfg.device, cfg.cloud, cfg.privacy_layers)
    link = make_link(cfg.bw_mbps, cfg.rtt_ms, cloud_share=cfg.cloud_share)
    cut, lat, lat_half, e_prefill, e_step = _segment_costs(link, spec)
    on_edge = int(np.sum(np.asarray(cut.ffn) == P.EDGE))
    if not bool(cut.embed_edge) or on_edge == spec.n_layers:
        raise ValueError(f"the best layer cut at {cfg.bw_mbps} Mbit/s is "
                         f"{'cloud-only' if not bool(cut.embed_edge) else 'edge-only'}: no "
                         f"request crosses the link, nothing for an outage to hit")
    t = int(spec.new_tokens)
    lat, lat_half = float(lat), float(lat_half)
    step = (lat - lat_half) / (t - t // 2)
    prefill = lat - t * step
    name = (f"layer cut after layer {on_edge}, {P.ACT_PRECISIONS[int(cut.act_prec)]} "
            "activations")
    return (prefill, step, t, float(e_prefill), float(e_step), name)


def _next_true(x: np.ndarray) -> np.ndarray:
    """int [N+1]: index of the first True at or after i (N if none)."""
    n = x.size
    idx = np.where(x, np.arange(n), n)
    out = np.minimum.accumulate(idx[::-1])[::-1]
    return np.append(out, n)


def schedule(cfg: Config, policy: str) -> RetryConfig:
    return cfg.retry if policy == "checkpoint-resume" else cfg.retry_fast


def caught_latency(cfg: Config, policy: str, seg) -> float:
    """The slot model's latency of a request caught by an outage of the mean remaining length
    (memoryless: the mean outage length) under ``policy``'s schedule: the wait until the
    attempt that finds the link back plus the planned latency, or the whole budget plus an
    edge-only run (``costmodel.outage``)."""
    prefill, step, t_tokens, e_prefill, e_step, _ = seg
    wait, resumes = schedule(cfg, policy).recovery(cfg.mean_outage_s)
    return wait + (prefill + t_tokens * step if resumes else e_prefill + t_tokens * e_step)


def simulate_requests(cfg: Config, up: np.ndarray, starts: np.ndarray, seg, policy: str,
                      rng: np.random.Generator, deadline_s: float):
    """(latency_s [R] (nan if failed), fallback [R] bool) of R requests on one up/down path."""
    rc = schedule(cfg, policy)
    prefill, step, t_tokens, e_prefill, e_step, _ = seg
    durations = np.array([prefill] + [step] * t_tokens)
    next_down, next_up = _next_true(~up), _next_true(up)
    dt, horizon = cfg.dt_s, up.size

    def idx(t):
        return min(int(t / dt), horizon - 1)

    lat = np.full(starts.size, np.nan)
    fell_back = np.zeros(starts.size, bool)
    for r, t0 in enumerate(starts):
        t, k = t0, 0
        while k < durations.size and t - t0 <= deadline_s:
            d = durations[k]
            down_at = next_down[idx(t)] * dt
            if down_at >= t + d:  # segment completes
                t += d
                k += 1
                continue
            t = max(down_at, t) + rc.timeout_s  # detected
            attempt = 0
            while t - t0 <= deadline_s:
                if policy != "restart" and attempt >= rc.max_retries:
                    # Fall back to the edge: rebuild the cloud layers' KV, finish locally.
                    t += e_prefill + (durations.size - max(k, 1)) * e_step
                    k = durations.size
                    fell_back[r] = True
                    break
                ceiling = min(rc.cap_s, rc.base_s * rc.factor ** attempt)
                t += rng.uniform(0.0, ceiling) if rc.jitter == "full" else ceiling
                if up[idx(t)]:
                    k = 0 if policy == "restart" else k
                    break
                t += rc.timeout_s  # the attempt goes unanswered
                attempt += 1
        if k >= durations.size and t - t0 <= deadline_s:
            lat[r] = t - t0
    del next_up
    return lat, fell_back


def run(cfg: Config, out_dir: Path, progress) -> None:
    seg = segment_times(cfg)
    nominal = seg[0] + seg[2] * seg[1]
    deadline_s = cfg.deadline_factor * nominal
    horizon_s = cfg.n_requests * deadline_s / 4 + 2 * deadline_s
    n_slots = int(horizon_s / cfg.dt_s)
    sample = jax.jit(sample_path, static_argnums=2)
    rows = []
    combos = [(q, s) for q in cfg.outage_fracs for s in range(cfg.seeds)]
    for q, seed in progress(combos, desc="outage paths", total=len(combos)):
        if q > 0:
            params = make_outage(q, cfg.mean_outage_s / cfg.dt_s)
            up = np.asarray(sample(jax.random.PRNGKey(seed), params, n_slots))
        else:
            up = np.ones(n_slots, bool)
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.uniform(0, horizon_s - 2 * deadline_s, cfg.n_requests))
        for policy in POLICIES:
            lat, fb = simulate_requests(cfg, up, starts, seg, policy,
                                        np.random.default_rng([seed, POLICIES.index(policy)]),
                                        deadline_s)
            done = np.isfinite(lat)
            rows.append({"policy": policy, "outage_frac": q, "seed": seed,
                         "measured_outage_frac": float(1.0 - up.mean()),
                         "completion": float(done.mean()),
                         "latency_mean_s": float(np.mean(lat[done])) if done.any() else None,
                         "latency_p95_s": float(np.percentile(lat[done], 95))
                         if done.any() else None,
                         "fallback_frac": float(fb.mean()), "nominal_latency_s": nominal,
                         "slot_model_caught_s": caught_latency(cfg, policy, seg)})
    write_rows(out_dir / "robustness.csv", rows)
    write_config(out_dir, cfg, experiment=NAME, partition=seg[5], prefill_s=seg[0],
                 decode_step_s=seg[1], edge_prefill_s=seg[3], edge_step_s=seg[4],
                 nominal_latency_s=nominal, deadline_s=deadline_s)


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    rows = read_rows(Path(run_dir) / "robustness.csv")
    meta = read_config(run_dir)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    colors = {"checkpoint-resume": "#e7298a", "checkpoint-resume-fast": "#7570b3",
              "restart": "#666666"}
    for policy in POLICIES:
        qs = sorted({r["outage_frac"] for r in rows})
        for ax, key, scale in ((axes[0], "completion", 100.0), (axes[1], "latency_mean_s", 1.0),
                               (axes[2], "latency_p95_s", 1.0)):
            m, h = np.array([finite_mean_ci([r[key] for r in rows if r["policy"] == policy
                                             and r["outage_frac"] == q])[:2]
                             for q in qs]).T * scale
            h = np.nan_to_num(h)
            x = 100 * np.asarray(qs)
            ax.plot(x, m, "o-", color=colors[policy], label=policy, ms=3)
            ax.fill_between(x, m - h, m + h, color=colors[policy], alpha=0.2)
        if policy != "restart":
            caught = next(r["slot_model_caught_s"] for r in rows if r["policy"] == policy)
            axes[2].axhline(caught, color=colors[policy], ls="--", lw=0.9,
                            label=f"slot model, caught ({policy})")
    nominal = meta["nominal_latency_s"]
    for ax in axes[1:]:
        ax.axhline(nominal, color="k", ls=":", lw=0.8, label="no outage")
    axes[0].set_ylabel("requests completed within deadline (%)")
    axes[1].set_ylabel("mean latency of completed (s)")
    axes[2].set_ylabel("p95 latency of completed (s)")
    for ax in axes:
        ax.set_xlabel("link outage fraction (% of time)")
    cfg = meta["config"]
    fb = [r["fallback_frac"] for r in rows if r["policy"] == "checkpoint-resume"
          and r["outage_frac"] == max(r["outage_frac"] for r in rows)]
    return [finish(fig, axes, Path(run_dir) / "robustness.png",
                   f"Link outages (mean {cfg['mean_outage_s']:g} s): {cfg['model']} on "
                   f"{cfg['device']}, {meta['partition']};\ndeadline {meta['deadline_s']:.3g} s "
                   f"({cfg['deadline_factor']:g}x outage-free latency); mean and 95% CI over "
                   "seeds", ncol=3,
                   note="Latencies are over completed requests only (failures are the "
                        "completion panel's complement). With the runtime's restart-safe "
                        f"defaults checkpoint-resume finished {100 * np.mean(fb):.0f}% of "
                        "requests on the edge at the highest outage fraction. Dashed: what "
                        "the slot environment charges a caught request (costmodel.outage).")]


EXPERIMENT = Experiment(NAME, 9, "Robustness under link outages: checkpoint resume vs restart",
                        QUICK, FULL, run, plot)
