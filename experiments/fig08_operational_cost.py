"""Figure 8: operational cost per request of each strategy: cloud GPU-seconds charged to the
client, bytes crossing the link (up + down), and their price (costmodel.profiles: A100 on-demand
GPU-second and internet egress for the datacenter, L4 GPU-second and free access-network bytes
for the MEC server)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from costmodel.strategies import STRATEGIES
from experiments.common import (
    DEVICE_LABEL,
    MODEL_LABEL,
    STRATEGY_COLOR,
    STRATEGY_LABEL,
    fig_legend,
    grouped_bars,
    pyplot,
    read_rows,
    save,
    scenario,
    write_config,
    write_rows,
)
from experiments.registry import Experiment
from experiments.sweeps import PointConfig, point_rows

NAME = "operational_cost"
QUICK = PointConfig()
FULL = PointConfig(bw_mbps=(5.0, 20.0, 100.0))
PLOT_DEVICE = "rpi5"


def run(cfg: PointConfig, out_dir: Path, progress) -> None:
    rows = [{k: r[k] for k in ("model", "device", "scenario", "cloud", "bw_mbps", "strategy",
                               "cloud_gpu_s", "bytes_up", "bytes_down", "cloud_cost",
                               "latency_s", "feasible")}
            | {"bytes_total": r["bytes_up"] + r["bytes_down"]} for r in point_rows(cfg, progress)]
    write_rows(out_dir / "operational_cost.csv", rows)
    write_config(out_dir, cfg, experiment=NAME, plot_device=PLOT_DEVICE,
                 scenarios={s: dataclasses.asdict(scenario(s)) for s in cfg.scenarios})


METRICS = (("cloud_gpu_s", "cloud GPU-seconds\nper request", 1.0),
           ("bytes_total", "bytes over the link\nper request (kB)", 1e-3),
           ("cloud_cost", "cloud cost per\nrequest (USD)", 1.0))


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    rows = read_rows(Path(run_dir) / "operational_cost.csv")
    bw = min(r["bw_mbps"] for r in rows)
    device = PLOT_DEVICE if any(r["device"] == PLOT_DEVICE for r in rows) else rows[0]["device"]
    rows = [r for r in rows if r["bw_mbps"] == bw and r["device"] == device]
    scen = list(dict.fromkeys(r["scenario"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(METRICS), len(scen), squeeze=False,
                             figsize=(3.7 * len(scen), 2.5 * len(METRICS)))
    for i, (key, label, scale) in enumerate(METRICS):
        for j, sname in enumerate(scen):
            vals = np.full((len(models), len(STRATEGIES)), np.nan)
            for g, m in enumerate(models):
                for k, s in enumerate(STRATEGIES):
                    r = [x for x in rows if x["scenario"] == sname and x["model"] == m
                         and x["strategy"] == s]
                    if r and r[0]["feasible"] and r[0][key] > 0:
                        vals[g, k] = r[0][key] * scale
            ax = axes[i, j]
            grouped_bars(ax, [MODEL_LABEL.get(m, m) for m in models],
                         [STRATEGY_LABEL[s] for s in STRATEGIES], vals,
                         [STRATEGY_COLOR[s] for s in STRATEGIES], log=True)
            if i == 0:
                ax.set_title(scenario(sname).label, fontsize=8)
            if j == 0:
                ax.set_ylabel(label)
    fig.suptitle(f"Operational cost per request, {DEVICE_LABEL.get(device, device)} edge, "
                 f"{bw:g} Mbit/s")
    fig.tight_layout()
    fig_legend(fig, axes, y=0.99)
    fig.text(0.5, -0.01, "x = zero (nothing on the cloud, or free bytes) or infeasible.",
             ha="center", va="top", fontsize=7)
    return [save(fig, Path(run_dir) / "operational_cost.png")]


EXPERIMENT = Experiment(NAME, 8, "Operational cost: cloud GPU-seconds and bytes per request",
                        QUICK, FULL, run, plot)
