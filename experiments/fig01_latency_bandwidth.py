"""Figure 1: end-to-end request latency versus bandwidth (1-200 Mbit/s) for every strategy,
per model x edge device, in each static scenario (idle datacenter, contended datacenter,
contended MEC server). Cost model only; uplink = downlink bandwidth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from costmodel.strategies import STRATEGIES
from experiments.common import (
    DEVICE_LABEL,
    DEVICES,
    MODEL_LABEL,
    MODELS,
    STRATEGY_COLOR,
    STRATEGY_LABEL,
    STRATEGY_STYLE,
    column,
    fig_legend,
    log_axis,
    pyplot,
    read_rows,
    save,
    scenario,
    write_config,
    write_rows,
)
from experiments.registry import Experiment
from experiments.sweeps import request_sweep

NAME = "latency_vs_bandwidth"


@dataclasses.dataclass(frozen=True)
class Config:
    """models, devices: cards and edge profiles; scenarios: experiments.common.SCENARIOS names;
    bw_lo_mbps, bw_hi_mbps, n_bw: log-spaced bandwidth grid (Mbit/s)."""

    models: tuple[str, ...] = MODELS
    devices: tuple[str, ...] = DEVICES
    scenarios: tuple[str, ...] = ("dc-idle", "dc-contended", "mec-contended")
    bw_lo_mbps: float = 1.0
    bw_hi_mbps: float = 200.0
    n_bw: int = 64

    def bandwidths(self) -> np.ndarray:
        return np.geomspace(self.bw_lo_mbps, self.bw_hi_mbps, self.n_bw).astype(np.float32)


QUICK = Config(n_bw=16)
FULL = Config(n_bw=64)


def run(cfg: Config, out_dir: Path, progress) -> None:
    rows = request_sweep(cfg.models, cfg.devices, cfg.scenarios, tuple(cfg.bandwidths()),
                         progress=progress)
    write_rows(out_dir / "latency.csv", rows)
    write_config(out_dir, cfg, experiment=NAME, scenarios={
        s: dataclasses.asdict(scenario(s)) for s in cfg.scenarios})


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    rows = read_rows(Path(run_dir) / "latency.csv")
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    devices = list(dict.fromkeys(r["device"] for r in rows))
    out = []
    for sname in scenarios:
        fig, axes = plt.subplots(len(models), len(devices), squeeze=False, sharex=True,
                                 figsize=(3.3 * len(devices), 2.6 * len(models)))
        for i, model in enumerate(models):
            for j, device in enumerate(devices):
                ax = axes[i, j]
                missing = []
                for s in STRATEGIES:
                    sel = dict(scenario=sname, model=model, device=device, strategy=s)
                    bw = column(rows, "bw_mbps", **sel)
                    lat = column(rows, "latency_s", **sel)
                    ok = column(rows, "feasible", **sel) > 0
                    if not ok.any():
                        missing.append(STRATEGY_LABEL[s])
                    lat = np.where(ok, lat, np.nan)
                    ax.plot(bw, lat, color=STRATEGY_COLOR[s], label=STRATEGY_LABEL[s],
                            **STRATEGY_STYLE[s])
                    if s == "best-headwise":
                        split = column(rows, "is_split", **sel) > 0
                        if split.any():
                            ax.plot(bw[split], lat[split], "o", ms=3, color=STRATEGY_COLOR[s],
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
        fig.suptitle(f"Latency vs bandwidth: {scenario(sname).label}; prompt 128, 32 new tokens")
        fig.tight_layout()
        fig_legend(fig, axes, y=0.99)
        out.append(save(fig, Path(run_dir) / f"latency_vs_bandwidth_{sname}.png"))
    return out


EXPERIMENT = Experiment(NAME, 1, "Latency vs bandwidth per strategy, model x device",
                        QUICK, FULL, run, plot)
