"""Figure 8: operational cost per request of each strategy: cloud GPU-seconds charged to the
client, bytes crossing the link (up + down), and their price (costmodel.profiles: A100 on-demand
GPU-second and internet egress for the datacenter, L4 GPU-second and free access-network bytes
for the MEC server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from costmodel.strategies import STRATEGIES
from experiments import sweeps
from experiments.catalog import Experiment
from experiments.conditions import condition
from experiments.plotting import (
    DEVICE_LABEL,
    MODEL_LABEL,
    STRATEGY_LABEL,
    finish,
    grouped_bars,
    pyplot,
    strategy_color,
)

NAME = "operational_cost"
PLOT_DEVICE = "rpi5"
METRICS = (("cloud_gpu_s", "cloud GPU-seconds\nper request", 1.0),
           ("bytes_total", "bytes over the link\nper request (kB)", 1e-3),
           ("cloud_cost", "cloud cost per\nrequest (USD)", 1.0))


def run(cfg: sweeps.PointConfig, out_dir: Path, progress) -> None:
    rows = [{k: r[k] for k in ("model", "device", "condition", "cloud", "bw_mbps", "strategy",
                               "cloud_gpu_s", "bytes_up", "bytes_down", "cloud_cost",
                               "latency_s", "feasible")}
            | {"bytes_total": r["bytes_up"] + r["bytes_down"]}
            for r in sweeps.point_rows(cfg, progress)]
    sweeps.write_table(out_dir, "operational_cost.csv", rows, cfg, NAME,
                       plot_device=PLOT_DEVICE)


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    rows, bw = sweeps.read_lowest_bandwidth(run_dir, "operational_cost.csv")
    device = PLOT_DEVICE if any(r["device"] == PLOT_DEVICE for r in rows) else rows[0]["device"]
    rows = [r for r in rows if r["device"] == device]
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(METRICS), len(conds), squeeze=False,
                             figsize=(3.7 * len(conds), 2.5 * len(METRICS)))
    for i, (key, label, scale) in enumerate(METRICS):
        for j, cname in enumerate(conds):
            vals = np.full((len(models), len(STRATEGIES)), np.nan)
            for g, m in enumerate(models):
                for k, s in enumerate(STRATEGIES):
                    r = [x for x in rows if x["condition"] == cname and x["model"] == m
                         and x["strategy"] == s]
                    if r and r[0]["feasible"] and r[0][key] > 0:
                        vals[g, k] = r[0][key] * scale
            ax = axes[i, j]
            grouped_bars(ax, [MODEL_LABEL.get(m, m) for m in models],
                         [STRATEGY_LABEL[s] for s in STRATEGIES], vals,
                         [strategy_color(s) for s in STRATEGIES], log=True)
            if i == 0:
                ax.set_title(condition(cname).describe(), fontsize=8)
            if j == 0:
                ax.set_ylabel(label)
    return [finish(fig, axes, Path(run_dir) / "operational_cost.png",
                   f"Operational cost per request, {DEVICE_LABEL.get(device, device)} edge, "
                   f"{bw:g} Mbit/s",
                   note="x = zero (nothing on the cloud, or free bytes) or infeasible.")]


EXPERIMENT = Experiment(NAME, 8, "Operational cost: cloud GPU-seconds and bytes per request",
                        sweeps.QUICK_POINT, sweeps.FULL_POINT, run, plot)
