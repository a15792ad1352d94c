"""Figure 11: accuracy degradation (relative perplexity increase, %) of each strategy's
latency-optimal partition (and, hatched, of the joint latency + energy + accuracy objective),
from the cost model's accuracy terms (costmodel.accuracy), whose source (measured /
transferred / prior) is written beside the numbers. A latency-only objective picks int4
activations for a marginal latency gain, which the measured per-crossing cost makes expensive."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from costmodel.accuracy import accuracy_profile
from costmodel.cards import get_card
from costmodel.strategies import STRATEGIES
from experiments.common import (
    JOINT_ACCURACY_S_PER_PCT,
    JOINT_ENERGY_S_PER_J,
    STRATEGY_COLOR,
    STRATEGY_LABEL,
    panel_bars,
    read_rows,
    scenario,
    write_config,
    write_rows,
)
from experiments.registry import Experiment
from experiments.sweeps import PointConfig, point_rows

NAME = "accuracy"
QUICK = PointConfig()
FULL = PointConfig(bw_mbps=(5.0, 20.0, 100.0))


def run(cfg: PointConfig, out_dir: Path, progress) -> None:
    sources = {m: accuracy_profile(get_card(m)).source for m in cfg.models}
    rows = [{k: r[k] for k in ("model", "device", "scenario", "bw_mbps", "strategy",
                               "accuracy_drop", "n_crossings", "feasible")}
            | {"objective": r["objective"], "accuracy_source": sources[r["model"]]}
            for r in point_rows(cfg, progress) + [
                x for x in point_rows(cfg, progress, "joint")
                if x["strategy"] in ("best-layer-cut", "best-headwise")]]
    write_rows(out_dir / "accuracy.csv", rows)
    write_config(out_dir, cfg, experiment=NAME, accuracy_sources=sources,
                 scenarios={s: dataclasses.asdict(scenario(s)) for s in cfg.scenarios})


def plot(run_dir: Path) -> list[Path]:
    rows = read_rows(Path(run_dir) / "accuracy.csv")
    bw = min(r["bw_mbps"] for r in rows)
    rows = [r for r in rows if r["bw_mbps"] == bw]
    sources = sorted({f"{r['model']}: {r['accuracy_source']}" for r in rows})
    series = [(STRATEGY_LABEL[s], STRATEGY_COLOR[s], None,
               {"strategy": s, "objective": "latency"}) for s in STRATEGIES] + [
        (STRATEGY_LABEL[s] + " (joint objective)", STRATEGY_COLOR[s], "///",
         {"strategy": s, "objective": "joint"}) for s in ("best-layer-cut", "best-headwise")]
    return [panel_bars(rows, "accuracy_drop", "perplexity increase (%)",
                       f"Accuracy degradation of each strategy at {bw:g} Mbit/s",
                       Path(run_dir) / "accuracy.png", series, log=False,
                       note="Latency-optimal choices, and (hatched) the joint objective "
                            f"latency + {JOINT_ENERGY_S_PER_J:g} s/J x energy + "
                            f"{JOINT_ACCURACY_S_PER_PCT:g} s/% x accuracy drop. Source of the "
                            "accuracy terms - " + "; ".join(sources)
                            + ". No bar: 0%; x: infeasible.")]


EXPERIMENT = Experiment(NAME, 11, "Accuracy degradation per strategy", QUICK, FULL, run, plot)
