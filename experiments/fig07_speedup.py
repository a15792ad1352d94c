"""Figure 7: speedup over cloud-only (cloud-only latency / strategy latency) across GPT-2 XL,
LLaMA-7B, LLaMA-13B and the three edge devices, in each condition, at a reference bandwidth."""

from __future__ import annotations

from pathlib import Path

from experiments import sweeps
from experiments.catalog import Experiment
from experiments.plotting import panel_bars, strategy_series
from experiments.tables import by_key

NAME = "speedup"
KEYS = ("model", "device", "condition", "bw_mbps")


def run(cfg: sweeps.PointConfig, out_dir: Path, progress) -> None:
    rows = sweeps.point_rows(cfg, progress)
    cloud = by_key([r for r in rows if r["strategy"] == "cloud-only"], *KEYS)
    out = []
    for r in rows:
        c = cloud[tuple(r[k] for k in KEYS)]
        ok = bool(r["feasible"]) and bool(c["feasible"])
        out.append({k: r[k] for k in (*KEYS, "cloud", "rtt_ms", "cloud_share", "strategy",
                                      "latency_s", "feasible")}
                   | {"cloud_only_latency_s": c["latency_s"],
                      "speedup": c["latency_s"] / r["latency_s"] if ok else float("nan")})
    sweeps.write_table(out_dir, "speedup.csv", out, cfg, NAME)


def plot(run_dir: Path) -> list[Path]:
    rows, bw = sweeps.read_lowest_bandwidth(run_dir, "speedup.csv")

    def hline(ax, model, cname, devices):
        ax.axhline(1.0, color="k", lw=0.8, ls=":", label="cloud-only (1x)")

    return [panel_bars(rows, "speedup", "speedup over cloud-only (x)",
                       f"Speedup over cloud-only at {bw:g} Mbit/s (>1: faster than cloud-only)",
                       Path(run_dir) / "speedup.png",
                       strategy_series(("edge-only", "best-layer-cut", "best-headwise")),
                       log=True, hline=hline, note="x = infeasible (edge memory budget).")]


EXPERIMENT = Experiment(NAME, 7, "Speedup vs cloud-only across models and devices",
                        sweeps.QUICK_POINT, sweeps.FULL_POINT, run, plot)
