"""Figure 1: end-to-end request latency versus bandwidth (1-200 Mbit/s) for every strategy,
per model x edge device, in each condition (idle datacenter, contended datacenter, contended
MEC server; `experiments.conditions`, at the median share). Cost model only; uplink = downlink
bandwidth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from costmodel.strategies import STRATEGIES
from experiments.catalog import Experiment
from experiments.common import DEVICES, MODELS
from experiments.conditions import NAMES, condition
from experiments.plotting import (
    DEVICE_LABEL,
    MODEL_LABEL,
    STRATEGY_LABEL,
    STRATEGY_STYLE,
    finish,
    log_axis,
    pyplot,
    strategy_color,
)
from experiments.sweeps import request_sweep, write_table
from experiments.tables import column, read_rows

NAME = "latency_vs_bandwidth"


@dataclasses.dataclass(frozen=True)
class Config:
    """models, devices: cards and edge profiles; conditions: experiments.conditions names;
    bw_lo_mbps, bw_hi_mbps, n_bw: log-spaced bandwidth grid (Mbit/s)."""

    models: tuple[str, ...] = MODELS
    devices: tuple[str, ...] = DEVICES
    conditions: tuple[str, ...] = NAMES
    bw_lo_mbps: float = 1.0
    bw_hi_mbps: float = 200.0
    n_bw: int = 64

    def bandwidths(self) -> np.ndarray:
        return np.geomspace(self.bw_lo_mbps, self.bw_hi_mbps, self.n_bw).astype(np.float32)


QUICK = Config(n_bw=16)
FULL = Config(n_bw=64)


def run(cfg: Config, out_dir: Path, progress) -> None:
    rows = request_sweep(cfg.models, cfg.devices, cfg.conditions, tuple(cfg.bandwidths()),
                         progress=progress)
    write_table(out_dir, "latency.csv", rows, cfg, NAME)


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    rows = read_rows(Path(run_dir) / "latency.csv")
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    devices = list(dict.fromkeys(r["device"] for r in rows))
    out = []
    for cname in conds:
        fig, axes = plt.subplots(len(models), len(devices), squeeze=False, sharex=True,
                                 figsize=(3.3 * len(devices), 2.6 * len(models)))
        for i, model in enumerate(models):
            for j, device in enumerate(devices):
                ax = axes[i, j]
                missing = []
                for s in STRATEGIES:
                    sel = dict(condition=cname, model=model, device=device, strategy=s)
                    bw = column(rows, "bw_mbps", **sel)
                    lat = column(rows, "latency_s", **sel)
                    ok = column(rows, "feasible", **sel) > 0
                    if not ok.any():
                        missing.append(STRATEGY_LABEL[s])
                    lat = np.where(ok, lat, np.nan)
                    ax.plot(bw, lat, color=strategy_color(s), label=STRATEGY_LABEL[s],
                            **STRATEGY_STYLE[s])
                    if s == "best-headwise":
                        split = column(rows, "is_split", **sel) > 0
                        if split.any():
                            ax.plot(bw[split], lat[split], "o", ms=3, color=strategy_color(s),
                                    label="head/FFN split chosen")
                if missing:
                    ax.text(0.98, 0.97, "infeasible (memory): " + ", ".join(missing),
                            transform=ax.transAxes, ha="right", va="top", fontsize=7)
                ax.set_xscale("log")
                log_axis(ax, "y")
                ax.set_title(f"{MODEL_LABEL.get(model, model)} on "
                             f"{DEVICE_LABEL.get(device, device)}")
                if i == len(models) - 1:
                    ax.set_xlabel("bandwidth (Mbit/s)")
                if j == 0:
                    ax.set_ylabel("request latency (s)")
        out.append(finish(fig, axes, Path(run_dir) / f"latency_vs_bandwidth_{cname}.png",
                          f"Latency vs bandwidth: {condition(cname).describe()}; prompt 128, "
                          "32 new tokens"))
    return out


EXPERIMENT = Experiment(NAME, 1, "Latency vs bandwidth per strategy, model x device",
                        QUICK, FULL, run, plot)
