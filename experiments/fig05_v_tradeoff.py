"""Figure 5: the V trade-off of the drift-plus-penalty controller: time-average penalty against
time-average backlog over a sweep of V (docs/design.md §3), with the bounds of
proofs/performance.md (Theorem 1) drawn on the same axes:

    penalty <= p* + (B + C) / V            (O(1/V))
    backlog <= (B + C + V (p_max - p*)) / eps   (O(V))

The penalty is the cloud cost per request (in units of 1e-4 USD), so there is a real trade-off:
the edge is free but too slow to carry the load alone, the cloud is fast but costs money.
(With latency as the penalty there is none: the fastest partition also serves the most.)
The bounds need i.i.d. slot states, so the bandwidth and the cloud share here are i.i.d. draws
from a few levels (Markov chains whose rows all equal the stationary law), the RTT fixed, the
arrivals Poisson. The controller is the exact clairvoyant slot oracle, so C = 0.

Constants: B = proofs.bounds.drift_constant(mu_max = tau / min latency over states,
E[A^2] = lambda + lambda^2); p* is the optimal time-average penalty subject to stability,
computed exactly by LP duality over stationary randomized policies,
    p* = max_{nu >= 0}  nu lambda + E_s min_a [p(a, s) - nu mu(a, s)],
the inner minimum being the oracle's slot problem with Q = nu, V = 1 (exact); eps is the Slater
slack of the max-service policy, E_s[mu_max(s)] - lambda, and p_max that policy's expected
penalty (proofs.bounds.slater_slack).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.catalog import Experiment
from experiments.common import stack
from experiments.plotting import finish, log_axis, policy_line, pyplot
from experiments.sim import SOLVER_KW, arrivals, policy, rollouts, seed_keys
from experiments.tables import read_config, read_rows, write_config, write_rows
from proofs import bounds

NAME = "v_tradeoff"


@dataclasses.dataclass(frozen=True)
class Config:
    """model, device, cloud, rtt_ms: the setting; bw_levels_mbps, share_levels, probs: i.i.d.
    bandwidth and cloud-share levels and their probabilities; rate: Poisson arrivals per slot;
    tau_s: slot length (s); cost_unit_usd: penalty unit; Vs: the V sweep; n_slots, seeds;
    nu_grid: multipliers of the dual search for p* (lo, hi, n) on a log grid."""

    model: str = "llama-7b"
    device: str = "orin-nx"
    cloud: str = "datacenter"
    rtt_ms: float = 40.0
    bw_levels_mbps: tuple[float, ...] = (2.0, 10.0, 50.0)
    share_levels: tuple[float, ...] = (1.0, 0.3, 0.1)
    probs: tuple[float, ...] = (0.3, 0.4, 0.3)
    rate: float = 0.8
    tau_s: float = 2.0
    cost_unit_usd: float = 1e-4
    Vs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    n_slots: int = 3000
    seeds: int = 10
    nu_grid: tuple[float, float, int] = (1e-3, 1e3, 61)


QUICK = Config(Vs=(0.1, 1.0, 10.0, 100.0), n_slots=800, seeds=5, nu_grid=(1e-3, 1e3, 25))
FULL = Config(n_slots=5000)


def scenario(cfg: Config, V: float):
    """The slot environment's ``Scenario`` of this setting at weight ``V``: i.i.d. bandwidth
    and cloud-share levels, Poisson arrivals, the cloud cost as the penalty (figure 16 builds
    its persistent variant from it)."""
    from lyapunov import env as E
    from lyapunov import processes as proc

    iid = tuple(tuple(cfg.probs) for _ in cfg.probs)
    link = proc.LinkConfig(
        bandwidth=proc.BandwidthConfig(kind="markov", levels_mbps=cfg.bw_levels_mbps,
                                       transition=iid),
        rtt_ms=cfg.rtt_ms,
        share=proc.ShareConfig(kind="markov", levels=cfg.share_levels, transition=iid))
    return E.Scenario(model=cfg.model, device=cfg.device, cloud=cfg.cloud, tau_s=cfg.tau_s, V=V,
                      arrival=arrivals(cfg.rate, "poisson"), link=link, pen_latency=0.0,
                      pen_cloud_cost=1.0 / cfg.cost_unit_usd)


def constants(cfg: Config, params) -> dict:
    """B, p*, p_max, eps, mu_max of the scenario (see the module docstring)."""
    from costmodel.costs import request_costs
    from costmodel.link import LinkState
    from lyapunov.policies import slot_solution
    from lyapunov.queues import Queues

    bw, share = np.meshgrid(cfg.bw_levels_mbps, cfg.share_levels, indexing="ij")
    pi = np.outer(cfg.probs, cfg.probs).ravel()
    f = jnp.float32
    states = LinkState(f(bw.ravel()), f(bw.ravel()), jnp.full(bw.size, f(cfg.rtt_ms)),
                       f(share.ravel()))
    spec, sp0 = params.spec, params.slot
    tau, lam = cfg.tau_s, cfg.rate

    @jax.jit
    def slot_min(nu, V):
        """min_a V p(a, s) - nu mu(a, s) per state, and the minimizers' costs."""
        sp = sp0.replace(V=f(V))

        def one(link):
            sol = slot_solution(Queues(f(nu), f(0), f(0), f(0)), link, params, sp, **SOLVER_KW)
            c = request_costs(sol.partition, link, spec)
            return sol.objective, sol.exact, c.latency_s, c.cloud_cost

        return jax.vmap(one)(states)

    # Max-service (Slater) policy: V = 0, nu = 1 minimizes -mu.
    _, _, lat_min, cost_fast = (np.asarray(x) for x in slot_min(1.0, 0.0))
    mu_max = tau / lat_min
    p_fast = cost_fast / cfg.cost_unit_usd
    eps = bounds.slater_slack(lam, float(pi @ mu_max))
    p_max = float(pi @ p_fast)
    B = bounds.drift_constant(service_max=float(mu_max.max()),
                              arrival_second_moment=bounds.poisson_second_moment(lam))

    def dual(nu):
        # a Python float, as every call's: a NumPy float64 would compile a second program
        obj, exact, _, _ = slot_min(float(nu), 1.0)
        return nu * lam + float(pi @ np.asarray(obj)), bool(np.all(np.asarray(exact)))

    lo, hi, n = cfg.nu_grid
    grid = np.concatenate([[0.0], np.geomspace(lo, hi, n)])
    vals = [dual(float(nu)) for nu in grid]
    g = np.array([v for v, _ in vals])
    i = int(np.argmax(g))
    # Golden-section refinement of the concave dual around the best grid point.
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    r = (math.sqrt(5) - 1) / 2
    for _ in range(20):
        c, d = b - r * (b - a), a + r * (b - a)
        if dual(c)[0] >= dual(d)[0]:
            b = d
        else:
            a = c
    nu_star = 0.5 * (a + b)
    p_star, exact = dual(nu_star)
    p_star = max(p_star, float(g.max()))
    return {"B": B, "p_star": p_star, "nu_star": nu_star, "p_max": p_max, "eps": eps,
            "mu_max": mu_max.tolist(), "latency_min_s": lat_min.tolist(),
            "oracle_exact_at_dual": exact and all(e for _, e in vals), "C": 0.0}


def run(cfg: Config, out_dir: Path, progress) -> None:
    built = [scenario(cfg, V).build() for V in cfg.Vs]
    k = constants(cfg, built[0])
    batch = stack([b for b in built for _ in range(cfg.seeds)])
    keys = jnp.tile(seed_keys(cfg.seeds), (len(cfg.Vs), 1))
    from lyapunov.queues import is_rate_stable

    rows = []
    for _ in progress([0], desc="oracle V sweep", total=1):
        info, _ = rollouts(policy("oracle"), batch, cfg.n_slots, keys)
        for i, V in enumerate(cfg.Vs):
            for s in range(cfg.seeds):
                j = i * cfg.seeds + s
                rows.append({"V": V, "seed": s,
                             "penalty_mean": float(np.mean(info.penalty[j])),
                             "backlog_mean": float(np.mean(info.backlog[j])),
                             "latency_mean_s": float(np.mean(info.latency_s[j])),
                             "unrunnable_frac": float(1 - np.mean(info.runnable[j])),
                             "failure_frac": float(np.sum(info.failed[j]) / max(
                                 np.sum(info.failed[j]) + np.sum(info.service[j]), 1e-12)),
                             "settled": bool(is_rate_stable(info.backlog[j].astype(float),
                                                            cfg.rate)),
                             "penalty_bound": bounds.penalty_bound(k["B"], 0.0, V, k["p_star"]),
                             "backlog_bound": bounds.backlog_bound(k["B"], 0.0, V, k["eps"],
                                                                   k["p_max"], k["p_star"])})
    write_rows(out_dir / "v_tradeoff.csv", rows)
    write_config(out_dir, cfg, experiment=NAME, constants=k)


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    run_dir = Path(run_dir)
    rows = read_rows(run_dir / "v_tradeoff.csv")
    meta = read_config(run_dir)
    k = meta["constants"]
    Vs = sorted({r["V"] for r in rows})
    pen = np.array([[r["penalty_mean"] for r in rows if r["V"] == V] for V in Vs])
    blg = np.array([[r["backlog_mean"] for r in rows if r["V"] == V] for V in Vs])
    vv = np.geomspace(min(Vs) / 2, max(Vs) * 2, 100)
    pb = [bounds.penalty_bound(k["B"], 0.0, v, k["p_star"]) for v in vv]
    bb = [bounds.backlog_bound(k["B"], 0.0, v, k["eps"], k["p_max"], k["p_star"]) for v in vv]
    oracle_color = policy_line("oracle")["color"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    ax = axes[0]
    ax.errorbar(Vs, pen.mean(1), yerr=pen.std(1), fmt="o-", color=oracle_color, ms=4,
                label="oracle DPP controller (mean, sd over seeds)")
    ax.plot(vv, pb, "k--", lw=1, label="bound p* + B/V (O(1/V))")
    ax.axhline(k["p_star"], color="grey", lw=1, ls=":", label="p* (optimal, LP dual)")
    ax.set_xscale("log")
    log_axis(ax, "y")
    lo = min(pen.min() * 0.7, k["p_star"] * 0.5) if k["p_star"] > 0 else None
    ax.set_ylim(lo, max(pen.max() * 3, 1e-3))
    ax.set_xlabel("V")
    ax.set_ylabel("time-average penalty (1e-4 USD per request)")
    ax = axes[1]
    ax.errorbar(Vs, blg.mean(1), yerr=blg.std(1), fmt="o-", color=oracle_color, ms=4)
    ax.plot(vv, bb, "k-.", lw=1, label="bound (B + V (p_max - p*)) / eps (O(V))")
    ax.set_xscale("log")
    log_axis(ax, "y")
    ax.set_xlabel("V")
    ax.set_ylabel("time-average backlog (requests)")
    ax = axes[2]
    ax.plot(blg.mean(1), pen.mean(1), "o-", color=oracle_color, ms=4)
    for V, x, y in zip(Vs, blg.mean(1), pen.mean(1), strict=True):
        ax.annotate(f"V={V:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.plot(bb, pb, "k:", lw=1, label="bound pair (backlog bound, penalty bound) over V")
    ax.axhline(k["p_star"], color="grey", lw=1, ls=":")
    log_axis(ax, "x")
    ax.set_yscale("log")
    ax.set_ylim(axes[0].get_ylim())
    ax.set_xlabel("time-average backlog (requests)")
    ax.set_ylabel("time-average penalty (1e-4 USD per request)")
    cfg = meta["config"]
    transient = [f"{V:g}" for V, p in zip(Vs, pen.mean(1), strict=True)
                 if p < k["p_star"] * 0.98]
    return [finish(fig, axes, run_dir / "v_tradeoff.png",
                   f"V trade-off: {cfg['model']} on {cfg['device']}, {cfg['cloud']} cloud, "
                   f"Poisson {cfg['rate']:g} requests per {cfg['tau_s']:g} s slot, i.i.d. link; "
                   f"B={k['B']:.3g}, p*={k['p_star']:.3g}, eps={k['eps']:.3g}", ncol=3,
                   note=f"Time averages from slot 0 over {cfg['n_slots']} slots, "
                   f"{len(pen[0])} seeds; C = 0 (exact oracle). "
                   + (f"At V = {', '.join(transient)} the penalty is below p*, impossible in "
                      "steady state: the backlog is still building up (the controller idles "
                      "on the free edge meanwhile), so the horizon is too short for that V."
                      if transient else "Every V's time-average penalty is at or above p*."))]


EXPERIMENT = Experiment(NAME, 5, "V trade-off with the O(1/V) and O(V) bounds", QUICK, FULL, run,
                        plot)
