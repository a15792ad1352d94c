"""Figure 10: training curves of the hierarchical and the layer-wise PPO agents (the metrics CSV
that `agents.train` writes: one row per seed and logged update) against the clairvoyant oracle
and the model-based dp-estimate controller on the training scenario (lines: their mean per-slot
DPP, latency and backlog over `seeds` rollouts of `n_slots`).

The runs are read from <out>/train/<kind> (made by figure 3's `ensure_runs` with the mode's
training budget when missing, or by `splitwise train ... --out <out>/train/hier` and
`--layerwise --out <out>/train/layerwise`). Without any run the experiment is skipped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from experiments.catalog import Experiment, Unavailable
from experiments.common import stack
from experiments.plotting import finish, policy_line, pyplot
from experiments.sim import policy, rollouts, seed_keys
from experiments.tables import read_rows, write_config, write_rows
from experiments.training import FULL_TRAIN, QUICK_TRAIN, TrainSpec, ensure_runs

NAME = "training_curves"
METRICS = (("dpp", "per-slot DPP objective"), ("latency_s", "request latency (s)"),
           ("backlog", "backlog (requests)"))


@dataclasses.dataclass(frozen=True)
class Config:
    """runs: (label, directory) of training runs; a relative directory is looked up under the
    results folder, then the working directory; n_slots, seeds: reference rollouts."""

    runs: tuple[tuple[str, str], ...] = (("hier", "train/hier"),
                                         ("layerwise", "train/layerwise"))
    n_slots: int = 1000
    seeds: int = 5
    train: TrainSpec | None = FULL_TRAIN


QUICK = Config(n_slots=300, train=QUICK_TRAIN)
FULL = Config()


def find_runs(cfg: Config, out: Path) -> dict[str, Path]:
    found = {}
    for label, d in cfg.runs:
        for base in (Path(out), Path.cwd()):
            p = Path(d) if Path(d).is_absolute() else base / d
            if (p / "metrics.csv").exists() and (p / "train_config.json").exists():
                found[label] = p
                break
    return found


def run(cfg: Config, out_dir: Path, progress) -> None:
    ensure_runs(Path(out_dir).parent, cfg.train, progress)
    runs = find_runs(cfg, Path(out_dir).parent)
    if not runs:
        raise Unavailable("no training run found (metrics.csv + train_config.json) under "
                          + ", ".join(d for _, d in cfg.runs) + "; produce one with "
                          "`splitwise train ... --out results/train/hier` (and --layerwise)")
    from agents.train import build_env_params, config_from_json

    rows, refs = [], []
    for label, path in progress(list(runs.items()), desc="runs", total=len(runs)):
        for r in read_rows(path / "metrics.csv"):
            rows.append({"run": label, **r})
        tcfg = config_from_json(json.loads((path / "train_config.json").read_text()))
        params = build_env_params(tcfg)
        batch = stack([params] * cfg.seeds)
        for pname in ("oracle", "dp-estimate"):
            info, _ = rollouts(policy(pname), batch, cfg.n_slots, seed_keys(cfg.seeds))
            for s in range(cfg.seeds):
                refs.append({"run": label, "policy": pname, "seed": s,
                             "dpp": float(np.mean(info.dpp[s])),
                             "latency_s": float(np.mean(info.latency_s[s][info.feasible[s]])),
                             "backlog": float(np.mean(info.backlog[s]))})
    write_rows(out_dir / "metrics.csv", rows)
    write_rows(out_dir / "reference.csv", refs)
    write_config(out_dir, cfg, experiment=NAME, runs={k: str(v) for k, v in runs.items()})


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    run_dir = Path(run_dir)
    rows = read_rows(run_dir / "metrics.csv")
    refs = read_rows(run_dir / "reference.csv")
    labels = list(dict.fromkeys(r["run"] for r in rows))
    fig, axes = plt.subplots(len(labels), len(METRICS), squeeze=False,
                             figsize=(3.8 * len(METRICS), 2.7 * len(labels)))
    for i, label in enumerate(labels):
        sel = [r for r in rows if r["run"] == label]
        seeds = sorted({r["seed"] for r in sel})
        for j, (key, name) in enumerate(METRICS):
            ax = axes[i, j]
            if key not in sel[0]:
                ax.set_visible(False)
                continue
            for s in seeds:
                u = [r["update"] for r in sel if r["seed"] == s]
                v = [r[key] for r in sel if r["seed"] == s]
                ax.plot(u, v, color=policy_line(label)["color"] or "C0", lw=1, alpha=0.8,
                        label=f"{label} PPO (one line per seed)")
            for pname, ls in (("oracle", "--"), ("dp-estimate", ":")):
                ref = [r[key] for r in refs if r["run"] == label and r["policy"] == pname]
                if ref:
                    ax.axhline(np.mean(ref), color=policy_line(pname)["color"], ls=ls, lw=1.2,
                               label=f"{pname} (mean over {len(ref)} rollouts)")
            if key != "backlog":  # early updates are orders of magnitude above the oracle
                ax.set_yscale("log")
            ax.set_xlabel("PPO update")
            ax.set_ylabel(name)
            ax.set_title(f"{label}: {name}")
    return [finish(fig, axes, run_dir / "training_curves.png",
                   "Training curves against the oracle and dp-estimate on the training "
                   "scenario", ncol=4)]


EXPERIMENT = Experiment(NAME, 10, "Training curves of the agents vs the oracle", QUICK, FULL,
                        run, plot)
