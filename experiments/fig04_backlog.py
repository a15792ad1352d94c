"""Figure 4: task backlog over time under Poisson and bursty (MMPP) arrivals, and the stability
region: over a sweep of the mean arrival rate, the time-average backlog of each policy and
whether it is rate-stable (lyapunov.queues.is_rate_stable: the backlog's growth over the second
half is under 5% of the arrival rate). One condition (contended datacenter by default) on the
Norway traces; seeds are trace offsets and arrival / share paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from experiments import sim
from experiments.catalog import Experiment
from experiments.common import stack
from experiments.conditions import Condition, condition
from experiments.plotting import DEVICE_LABEL, MODEL_LABEL, finish, log_axis, policy_line, pyplot
from experiments.tables import read_config, read_rows, write_config, write_rows

NAME = "backlog"
KINDS = ("poisson", "bursty")


@dataclasses.dataclass(frozen=True)
class Config:
    """model, device, condition: the setting (a name of experiments.conditions); policies:
    registered policy names (default: every jittable one); rates: mean arrivals per slot
    swept (for both kinds); show_rate: the rate of the backlog-over-time panels; V, tau_s: DPP
    weight and slot length (s); n_slots, seeds."""

    model: str = "llama-7b"
    device: str = "orin-nx"
    condition: str = "dc-contended"
    policies: tuple[str, ...] = dataclasses.field(default_factory=sim.slot_policies)
    rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
    show_rate: float = 0.4
    V: float = 10.0
    tau_s: float = 2.0
    n_slots: int = 2000
    seeds: int = 5


# Batch = kinds x rates x seeds: 30 (quick) and 90 (full), as in figure 3.
# Quick mode: the bound, the model-based controller and the three baselines the claims
# compare (the static cut and greedy are in full mode).
QUICK = Config(rates=(0.2, 0.5, 0.9), show_rate=0.5, n_slots=500, seeds=5,
               policies=("oracle", "dp-estimate", "cloud-only", "edge-only", "best-cut"))
FULL = Config(seeds=5)


def run(cfg: Config, out_dir: Path, progress) -> None:
    from lyapunov import simulate

    trace = sim.norway_trace(out_dir)
    cond = condition(cfg.condition)
    combos = [(k, r) for k in KINDS for r in cfg.rates]
    built = [sim.slot_scenario(cfg.model, cfg.device, cond, trace, rate=r, arrival_kind=k,
                           V=cfg.V, tau_s=cfg.tau_s).build() for k, r in combos]
    batch = stack([b for b in built for _ in range(cfg.seeds)])
    keys = jax.numpy.tile(sim.seed_keys(cfg.seeds), (len(combos), 1))
    rows, traj = [], {}
    for pname in progress(cfg.policies, desc="policies", total=len(cfg.policies)):
        info, _ = sim.rollouts(sim.policy(pname), batch, cfg.n_slots, keys)
        for i, (kind, rate) in enumerate(combos):
            q = info.backlog[i * cfg.seeds:(i + 1) * cfg.seeds]
            traj[f"{kind}|{rate:g}|{pname}"] = q.astype(np.float32)
            for s in range(cfg.seeds):
                one = jax.tree.map(lambda x, j=i * cfg.seeds + s: x[j], info)
                summ = simulate.summarize(one, float(built[i].lam_mean), 0.0)
                rows.append({"policy": pname, "arrivals": kind, "rate": rate, "seed": s,
                             "backlog_mean": summ["backlog_mean"],
                             "backlog_final": float(one.backlog[-1]),
                             "backlog_growth": summ["backlog_growth"],
                             "stable": summ["stable"], "latency_mean_s": summ["latency_mean_s"],
                             "service_mean": summ["service_mean"],
                             "arrivals_mean": summ["arrivals_mean"]})
    write_rows(out_dir / "stability.csv", rows)
    np.savez_compressed(out_dir / "backlog_traces.npz", **traj)
    write_config(out_dir, cfg, experiment=NAME, condition=dataclasses.asdict(cond),
                 burst=dict(zip(("p_lo_to_hi", "p_hi_to_lo", "ratio"), sim.BURST, strict=True)))


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    run_dir = Path(run_dir)
    rows = read_rows(run_dir / "stability.csv")
    traj = np.load(run_dir / "backlog_traces.npz")
    meta = read_config(run_dir)
    cfg = meta["config"]
    show = cfg["show_rate"] if cfg["show_rate"] in cfg["rates"] else cfg["rates"][
        len(cfg["rates"]) // 2]
    pols = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    for j, kind in enumerate(KINDS):
        ax = axes[0, j]
        for p in pols:
            q = traj[f"{kind}|{show:g}|{p}"]
            t = np.arange(q.shape[1]) * cfg["tau_s"]
            m = q.mean(0)
            ax.plot(t, m, **policy_line(p))
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("backlog Q(t) (requests)")
        ax.set_title(f"{kind} arrivals, mean {show:g} requests per {cfg['tau_s']:g} s slot "
                     "(mean over seeds)", fontsize=8)
        ax = axes[1, j]
        for p in pols:
            rates = sorted({r["rate"] for r in rows})
            m, st = [], []
            for rate in rates:
                sel = [r for r in rows if r["policy"] == p and r["arrivals"] == kind
                       and r["rate"] == rate]
                m.append(np.mean([r["backlog_mean"] for r in sel]))
                st.append(np.mean([r["stable"] for r in sel]) >= 0.5)
            m, st = np.array(m), np.array(st)
            line = policy_line(p)
            ax.plot(rates, m, **line)
            ax.plot(np.array(rates)[st], m[st], "o", color=line["color"], ms=4)
            ax.plot(np.array(rates)[~st], m[~st], "o", mfc="white", color=line["color"], ms=4)
        ax.set_xlabel("mean arrival rate (requests per slot)")
        ax.set_ylabel("time-average backlog (requests)")
        log_axis(ax, "y")
        ax.set_title(f"stability region, {kind} arrivals (filled: rate-stable in most seeds, "
                     "hollow: not)", fontsize=8)
    return [finish(fig, axes, run_dir / "backlog.png",
                   f"Backlog: {MODEL_LABEL.get(cfg['model'], cfg['model'])} on "
                   f"{DEVICE_LABEL.get(cfg['device'], cfg['device'])}, "
                   f"{Condition(**meta['condition']).describe(slot_level=True)}, Norway traces, "
                   f"V={cfg['V']:g}", ncol=3)]


EXPERIMENT = Experiment(NAME, 4, "Backlog over time and the stability region", QUICK, FULL, run,
                        plot)
