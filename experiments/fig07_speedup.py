"""Figure 7: speedup over cloud-only (cloud-only latency / strategy latency) across GPT-2 XL,
LLaMA-7B, LLaMA-13B and the three edge devices, in each scenario, at a reference bandwidth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
from experiments.sweeps import PointConfig, by_key, point_rows

NAME = "speedup"
QUICK = PointConfig()
FULL = PointConfig(bw_mbps=(5.0, 20.0, 100.0))


def run(cfg: PointConfig, out_dir: Path, progress) -> None:
    rows = point_rows(cfg, progress)
    cloud = by_key([r for r in rows if r["strategy"] == "cloud-only"], "model", "device",
                   "scenario", "bw_mbps")
    out = []
    for r in rows:
        c = cloud[(r["model"], r["device"], r["scenario"], r["bw_mbps"])]
        ok = bool(r["feasible"]) and bool(c["feasible"])
        out.append({k: r[k] for k in ("model", "device", "scenario", "cloud", "rtt_ms",
                                      "cloud_share", "bw_mbps", "strategy", "latency_s",
                                      "feasible")}
                   | {"cloud_only_latency_s": c["latency_s"],
                      "speedup": c["latency_s"] / r["latency_s"] if ok else float("nan")})
    write_rows(out_dir / "speedup.csv", out)
    write_config(out_dir, cfg, experiment=NAME,
                 scenarios={s: dataclasses.asdict(scenario(s)) for s in cfg.scenarios})


def plot(run_dir: Path) -> list[Path]:
    rows = read_rows(Path(run_dir) / "speedup.csv")
    bw = min(r["bw_mbps"] for r in rows)
    rows = [r for r in rows if r["bw_mbps"] == bw]

    def hline(ax, model, sname, devices):
        ax.axhline(1.0, color="k", lw=0.8, ls=":", label="cloud-only (1x)")

    series = [(STRATEGY_LABEL[s], STRATEGY_COLOR[s], None, {"strategy": s})
              for s in ("edge-only", "best-layer-cut", "best-headwise")]
    return [panel_bars(rows, "speedup", "speedup over cloud-only (x)",
                       f"Speedup over cloud-only at {bw:g} Mbit/s (>1: faster than cloud-only)",
                       Path(run_dir) / "speedup.png", series, log=True, hline=hline,
                       note="x = infeasible (edge memory budget).")]


EXPERIMENT = Experiment(NAME, 7, "Speedup vs cloud-only across models and devices", QUICK, FULL,
                        run, plot)
