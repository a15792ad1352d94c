"""Figure 14: stability certificates of the shipped controllers (docs/design.md §3,
proofs/performance.md): each policy's additive gap C to the per-slot minimum, the penalty and
backlog bounds that C implies at the run's V, and the measured time averages beside them
(`lyapunov.certify`). The trained agents are certified where `<out>/train/{hier,layerwise}`
holds a run (figure 10 trains them); the model-based ones always.

Two comparators: the clairvoyant one (it sees the slot's link, so C is conservative) with the
LP's p*, and the observation-conditional one (C_bayes: the least expected DPP under the
predictive link law given what the controller observes) with the information-blind p*; the
scenario's link processes are not i.i.d., so every verdict is empirical (the certificate says
so).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from experiments.catalog import Experiment
from experiments.conditions import condition
from experiments.plotting import finish, pyplot
from experiments.sim import norway_trace, slot_scenario
from experiments.tables import read_config, read_rows, write_config, write_rows
from experiments.training import FULL_TRAIN, QUICK_TRAIN, TrainSpec

NAME = "certificate"
KEYS = ("C_mean", "C_p95", "C_max", "C_search_max", "B", "p_star", "eps", "penalty_bound",
        "backlog_bound", "penalty_mean", "backlog_mean", "penalty_ok", "backlog_ok", "C_bayes_mean",
        "C_bayes_p95", "C_bayes_max", "p_star_blind", "eps_blind", "penalty_bound_bayes",
        "backlog_bound_bayes", "penalty_ok_bayes", "backlog_ok_bayes", "verdict",
        "oracle_exact_frac")


@dataclasses.dataclass(frozen=True)
class Config:
    """The scenario is the trained agents' (`experiments.training`: model, device, condition,
    rate, V on the Norway traces), so that they can be certified where they were trained;
    policies: registered names certified; trained: also certify the agents found under
    <out>/train; n_slots: rollout length; examples: hypothesis-drawn states searched for the
    worst gap; n_states: link states of the reduced linear program for p* and eps;
    bayes_draws: (bandwidth, share) nodes of the predictive law of C_bayes's comparator."""

    train: TrainSpec = QUICK_TRAIN
    policies: tuple[str, ...] = ("dp-estimate", "best-cut")
    trained: bool = True
    n_slots: int = 200
    examples: int = 20
    n_states: int = 16
    bayes_draws: tuple[int, int] = (4, 3)


QUICK = Config()
FULL = Config(train=FULL_TRAIN, n_slots=1000, examples=200, n_states=64, bayes_draws=(8, 4),
              policies=("dp-estimate", "dp-outage", "best-cut", "neurosurgeon", "greedy"))


def scenario(cfg: Config, out_dir: Path):
    t = cfg.train
    return slot_scenario(t.model, t.device, condition(t.condition), norway_trace(out_dir),
                         rate=t.rate, V=t.V, tau_s=t.tau_s)


def _specs(cfg: Config, out_dir: Path) -> list[str]:
    specs = list(cfg.policies)
    if cfg.trained:
        for kind in ("hier", "layerwise"):
            run = Path(out_dir).parent / "train" / kind
            if (run / "seed0" / "config.json").exists():
                specs.append(f"checkpoint:{run / 'seed0'}")
    return specs


def run(cfg: Config, out_dir: Path, progress) -> None:
    import agents.policy_loader  # noqa: F401  (registers checkpoint:)
    from lyapunov.certify import certify

    params = scenario(cfg, out_dir).build()
    rows, skipped = [], []
    for spec in progress(_specs(cfg, out_dir), desc="certify"):
        try:
            cert = certify(spec, params, n_slots=cfg.n_slots, examples=cfg.examples,
                           n_states=cfg.n_states, bayes_draws=cfg.bayes_draws)
        except ValueError as err:  # e.g. a checkpoint trained for another model
            skipped.append(f"{spec}: {err}")
            continue
        rows.append({"policy": cert.policy, **{k: getattr(cert, k) for k in KEYS}})
    write_rows(out_dir / "certificate.csv", rows)
    write_config(out_dir, cfg, experiment=NAME, skipped=skipped,
                 comparator=("clairvoyant (conservative C) and, for causal policies, "
                             "observation-conditional (C_bayes)" if rows else None))


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    rows = read_rows(Path(run_dir) / "certificate.csv")
    meta = read_config(run_dir)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    names = [r["policy"] for r in rows]
    x = np.arange(len(rows))
    axes[0].bar(x - 0.27, [r["C_mean"] for r in rows], 0.27,
                label="C mean (clairvoyant comparator)", color="#e7298a")
    axes[0].bar(x, [r.get("C_bayes_mean") or 0.0 for r in rows], 0.27,
                label="C_bayes mean (given the observation)", color="#66a61e")
    axes[0].bar(x + 0.27, [r["C_search_max"] or 0.0 for r in rows], 0.27,
                label="worst C found (hypothesis search)", color="#7570b3")
    axes[0].set_ylabel("additive gap C (DPP units)")
    for ax, meas, bound, label in ((axes[1], "penalty_mean", "penalty_bound", "penalty"),
                                   (axes[2], "backlog_mean", "backlog_bound", "backlog")):
        ax.bar(x - 0.2, [r[meas] for r in rows], 0.4, label=f"measured {label}",
               color="#1b9e77")
        ax.bar(x + 0.2, [r[bound] for r in rows], 0.4, label="bound p* + (B + C)/V"
               if label == "penalty" else "bound (B + C + V (p_max - p*)) / eps",
               color="#d95f02")
        ax.set_yscale("log")
        ax.set_ylabel(f"time-average {label}")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    t = meta["config"]["train"]
    ok = all(bool(r["penalty_ok"]) and bool(r["backlog_ok"]) for r in rows)
    return [finish(fig, axes, Path(run_dir) / "certificate.png",
                   f"Stability certificates: {t['model']} on {t['device']}, {t['condition']}, "
                   f"Norway traces, {t['rate']:g} req/slot, V {t['V']:g}",
                   ncol=3,
                   note=("Every bound holds" if ok else "Some bound fails") + " on the measured "
                        "time averages (clairvoyant C with p*). C_bayes: against the least "
                        "expected DPP given the observation (pairs with the blind p*); "
                        "C - C_bayes is the cost of not seeing the link. The link is not "
                        "i.i.d., so the verdicts are empirical.")]


EXPERIMENT = Experiment(NAME, 14, "Stability certificates: additive gap C and the bounds it "
                        "implies", QUICK, FULL, run, plot)
