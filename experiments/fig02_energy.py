"""Figure 2: edge energy per request for each strategy, per device (and model, condition), at a
reference bandwidth. The latency-optimal choice of each strategy, plus the energy-optimal best
layer cut and head/FFN split (the DP run with energy weights). Cost model only."""

from __future__ import annotations

from pathlib import Path

from costmodel.strategies import STRATEGIES
from experiments import sweeps
from experiments.catalog import Experiment
from experiments.plotting import panel_bars, strategy_series

NAME = "energy"


def run(cfg: sweeps.PointConfig, out_dir: Path, progress) -> None:
    rows = sweeps.point_rows(cfg, progress) + [
        r for r in sweeps.point_rows(cfg, progress, "energy") if r["strategy"] in sweeps.TUNED]
    sweeps.write_table(out_dir, "energy.csv", rows, cfg, NAME)


SERIES = (strategy_series(STRATEGIES, "latency")
          + strategy_series(sweeps.TUNED, "energy", " (energy-optimal)", "///"))


def plot(run_dir: Path) -> list[Path]:
    rows, bw = sweeps.read_lowest_bandwidth(run_dir, "energy.csv")
    return [panel_bars(rows, "energy_j", "edge energy per request (J)",
                       f"Edge energy per request at {bw:g} Mbit/s (prompt 128, 32 new tokens)",
                       Path(run_dir) / "energy.png", SERIES, log=True,
                       note="x = infeasible (edge memory budget). Latency-optimal choices "
                            "unless marked energy-optimal.")]


EXPERIMENT = Experiment(NAME, 2, "Edge energy per request per strategy and device",
                        sweeps.QUICK_POINT, sweeps.FULL_POINT, run, plot)
