"""Figure 6: edge memory (weights at the edge precision + KV cache of edge heads) of each
strategy's latency-optimal partition, per model x device, against the device's budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from costmodel.profiles import get_profile
from costmodel.strategies import STRATEGIES
from experiments import sweeps
from experiments.catalog import Experiment
from experiments.plotting import panel_bars, strategy_series

NAME = "memory"


def run(cfg: sweeps.PointConfig, out_dir: Path, progress) -> None:
    rows = [dict(r, budget_gb=get_profile(r["device"]).mem_budget_gb)
            for r in sweeps.point_rows(cfg, progress)]
    sweeps.write_table(out_dir, "memory.csv", rows, cfg, NAME)


def plot(run_dir: Path) -> list[Path]:
    rows, bw = sweeps.read_lowest_bandwidth(run_dir, "memory.csv")
    # Memory is shown even where it exceeds the budget (that is the point of the figure).
    rows = [dict(r, feasible=1) for r in rows]
    budgets = {r["device"]: r["budget_gb"] for r in rows}

    def hline(ax, model, cname, devices):
        for g, d in enumerate(devices):
            ax.hlines(budgets[d], g - 0.45, g + 0.45, colors="k", linestyles=":", lw=1.2,
                      label="device memory budget")

    return [panel_bars(rows, "edge_memory_gb", "edge memory (GB)",
                       f"Edge memory of each strategy's latency-optimal partition at {bw:g} "
                       "Mbit/s", Path(run_dir) / "memory.png", strategy_series(STRATEGIES),
                       log=False, transform=lambda v, r: np.nan if v == 0 else v, hline=hline,
                       note="Bars above the dotted budget line are infeasible (never chosen); "
                            "x = no edge memory (cloud-only or all layers on the cloud).")]


EXPERIMENT = Experiment(NAME, 6, "Edge memory per model x device vs budget",
                        sweeps.QUICK_POINT, sweeps.FULL_POINT, run, plot)
