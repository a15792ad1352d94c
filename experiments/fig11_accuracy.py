"""Figure 11: accuracy degradation (relative perplexity increase, %) of each strategy's
latency-optimal partition (and, hatched, of the joint latency + energy + accuracy objective),
from the cost model's accuracy terms (costmodel.accuracy), whose source (measured /
transferred / prior) is written beside the numbers. A latency-only objective picks int4
activations for a marginal latency gain, which the measured per-crossing cost makes expensive."""

from __future__ import annotations

from pathlib import Path

from costmodel.accuracy import accuracy_profile
from costmodel.cards import get_card
from costmodel.strategies import STRATEGIES
from experiments import sweeps
from experiments.catalog import Experiment
from experiments.plotting import panel_bars, strategy_series
from lyapunov.policies import JOINT_ACCURACY_S_PER_PCT, JOINT_ENERGY_S_PER_J

NAME = "accuracy"


def run(cfg: sweeps.PointConfig, out_dir: Path, progress) -> None:
    sources = {m: accuracy_profile(get_card(m)).source for m in cfg.models}
    rows = [{k: r[k] for k in ("model", "device", "condition", "bw_mbps", "strategy",
                               "accuracy_drop", "n_crossings", "feasible", "objective")}
            | {"accuracy_source": sources[r["model"]]}
            for r in sweeps.point_rows(cfg, progress) + [
                x for x in sweeps.point_rows(cfg, progress, "joint")
                if x["strategy"] in sweeps.TUNED]]
    sweeps.write_table(out_dir, "accuracy.csv", rows, cfg, NAME, accuracy_sources=sources)


def plot(run_dir: Path) -> list[Path]:
    rows, bw = sweeps.read_lowest_bandwidth(run_dir, "accuracy.csv")
    sources = sorted({f"{r['model']}: {r['accuracy_source']}" for r in rows})
    series = (strategy_series(STRATEGIES, "latency")
              + strategy_series(sweeps.TUNED, "joint", " (joint objective)", "///"))
    return [panel_bars(rows, "accuracy_drop", "perplexity increase (%)",
                       f"Accuracy degradation of each strategy at {bw:g} Mbit/s",
                       Path(run_dir) / "accuracy.png", series, log=False,
                       note="Latency-optimal choices, and (hatched) the joint objective "
                            f"latency + {JOINT_ENERGY_S_PER_J:g} s/J x energy + "
                            f"{JOINT_ACCURACY_S_PER_PCT:g} s/% x accuracy drop. Source of the "
                            "accuracy terms - " + "; ".join(sources)
                            + ". No bar: 0%; x: infeasible.")]


EXPERIMENT = Experiment(NAME, 11, "Accuracy degradation per strategy", sweeps.QUICK_POINT,
                        sweeps.FULL_POINT, run, plot)
