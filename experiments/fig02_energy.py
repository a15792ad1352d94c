"""Figure 2: edge energy per request for each strategy, per device (and model, scenario), at a
reference bandwidth. The latency-optimal choice of each strategy, plus the energy-optimal best
layer cut and head/FFN split (the DP run with energy weights). Cost model only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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

NAME = "energy"
QUICK = PointConfig()
FULL = PointConfig(bw_mbps=(5.0, 20.0, 100.0))


def run(cfg: PointConfig, out_dir: Path, progress) -> None:
    rows = point_rows(cfg, progress) + [r for r in point_rows(cfg, progress, "energy")
                                        if r["strategy"] in ("best-layer-cut", "best-headwise")]
    write_rows(out_dir / "energy.csv", rows)
    write_config(out_dir, cfg, experiment=NAME,
                 scenarios={s: dataclasses.asdict(scenario(s)) for s in cfg.scenarios})


SERIES = [(STRATEGY_LABEL[s], STRATEGY_COLOR[s], None, {"strategy": s, "objective": "latency"})
          for s in STRATEGIES] + [
    (STRATEGY_LABEL[s] + " (energy-optimal)", STRATEGY_COLOR[s], "///",
     {"strategy": s, "objective": "energy"}) for s in ("best-layer-cut", "best-headwise")]


def plot(run_dir: Path) -> list[Path]:
    rows = read_rows(Path(run_dir) / "energy.csv")
    bw = min(r["bw_mbps"] for r in rows)
    rows = [r for r in rows if r["bw_mbps"] == bw]
    return [panel_bars(rows, "energy_j", "edge energy per request (J)",
                       f"Edge energy per request at {bw:g} Mbit/s (prompt 128, 32 new tokens)",
                       Path(run_dir) / "energy.png", SERIES, log=True,
                       note="x = infeasible (edge memory budget). Latency-optimal choices "
                            "unless marked energy-optimal.")]


EXPERIMENT = Experiment(NAME, 2, "Edge energy per request per strategy and device", QUICK,
                        FULL, run, plot)
