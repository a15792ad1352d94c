"""Figure 6: edge memory (weights at the edge precision + KV cache of edge heads) of each
strategy's latency-optimal partition, per model x device, against the device's budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from costmodel.profiles import get_profile
from costmodel.strategies import STRATEGIES
from experiments.common import (
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

NAME = "memory"
QUICK = PointConfig()
FULL = PointConfig(bw_mbps=(5.0, 20.0, 100.0))


def run(cfg: PointConfig, out_dir: Path, progress) -> None:
    rows = [dict(r, budget_gb=get_profile(r["device"]).mem_budget_gb)
            for r in point_rows(cfg, progress)]
    write_rows(out_dir / "memory.csv", rows)
    write_config(out_dir, cfg, experiment=NAME,
                 scenarios={s: dataclasses.asdict(scenario(s)) for s in cfg.scenarios})


def plot(run_dir: Path) -> list[Path]:
    rows = read_rows(Path(run_dir) / "memory.csv")
    bw = min(r["bw_mbps"] for r in rows)
    rows = [r for r in rows if r["bw_mbps"] == bw]
    # Memory is shown even where it exceeds the budget (that is the point of the figure).
    rows = [dict(r, feasible=1) for r in rows]
    budgets = {r["device"]: r["budget_gb"] for r in rows}

    def hline(ax, model, sname, devices):
        for g, d in enumerate(devices):
            ax.hlines(budgets[d], g - 0.45, g + 0.45, colors="k", linestyles=":", lw=1.2,
                      label="device memory budget")

    series = [(STRATEGY_LABEL[s], STRATEGY_COLOR[s], None, {"strategy": s})
              for s in STRATEGIES]
    return [panel_bars(rows, "edge_memory_gb", "edge memory (GB)",
                       f"Edge memory of each strategy's latency-optimal partition at {bw:g} "
                       "Mbit/s", Path(run_dir) / "memory.png", series, log=False,
                       transform=lambda v, r: np.nan if v == 0 else v, hline=hline,
                       note="Bars above the dotted budget line are infeasible (never chosen); "
                            "x = no edge memory (cloud-only or all layers on the cloud).")]


EXPERIMENT = Experiment(NAME, 6, "Edge memory per model x device vs budget", QUICK, FULL, run,
                        plot)
