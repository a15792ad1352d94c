"""Figure 12: the regime map (docs/design.md §2). Over RTT x bandwidth x cloud share, for
a datacenter and a MEC cloud, with and without a privacy floor, which strategy gives the
lowest request latency and by how much.

Classes: cloud-only, edge-only, best layer cut (Neurosurgeon-style single cut c < L, embedding
on the edge, any activation precision), and head-level split: the exact head/FFN DP
(memory-constrained, costmodel.dp) counts as its own class only where it beats all three by
more than `tol` (it contains them, so elsewhere it ties). Margin: latency of the best *other*
class over the winner's. The whole grid is one vmapped batch per static shape (privacy
floor); where the DP's memory multiplier leaves a duality gap, up to `exact_checks` grid
points are re-solved with the exact resource DP (`costmodel.strategies.strategy_partition`)
and compared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from costmodel.link import make_link
from costmodel.strategies import strategy_partition
from experiments.catalog import Experiment
from experiments.common import evaluate_links, get_spec, links, stack
from experiments.plotting import (
    DEVICE_LABEL,
    MODEL_LABEL,
    log_axis,
    pyplot,
    save,
    strategy_color,
)
from experiments.tables import read_rows, write_config, write_rows

NAME = "regime_map"
CLASSES = ("cloud-only", "edge-only", "best-layer-cut", "head-level split")
CLASS_COLOR = tuple(strategy_color(s) for s in ("cloud-only", "edge-only", "best-layer-cut",
                                                 "best-headwise"))


@dataclasses.dataclass(frozen=True)
class Config:
    """cases: (model card, edge profile) pairs; clouds: cloud profiles;
    privacy_layers: the floors compared (0 = none; k = embedding + first k layers on the edge);
    rtt_ms, bw_mbps, shares: (lo, hi, n) log-spaced grids;
    tol: relative margin below which a head-level split counts as a tie;
    exact_checks: per case and privacy floor, at most this many grid points where the DP's
      memory multiplier has a gap are re-solved with the exact memory-resource DP
      (costmodel.strategies), and the exact latency replaces the grid's."""

    cases: tuple[tuple[str, str], ...] = tuple((m, d) for m in ("gpt2-xl", "llama-7b",
                                                                 "llama-13b")
                                               for d in ("orin-nx", "galaxy-s23", "rpi5"))
    clouds: tuple[str, ...] = ("datacenter", "mec")
    privacy_layers: tuple[int, ...] = (0, 2)
    rtt_ms: tuple[float, float, int] = (0.5, 100.0, 16)
    bw_mbps: tuple[float, float, int] = (1.0, 1000.0, 24)
    shares: tuple[float, float, int] = (0.01, 1.0, 13)
    tol: float = 1e-3
    exact_checks: int = 32

    def grid(self, which: str) -> np.ndarray:
        lo, hi, n = getattr(self, which)
        return np.geomspace(lo, hi, n).astype(np.float32)


# Quick: one case where edge memory never binds and one where it does.
QUICK = Config(cases=(("llama-7b", "orin-nx"), ("llama-13b", "galaxy-s23")),
               rtt_ms=(0.5, 100.0, 8), bw_mbps=(1.0, 1000.0, 10), shares=(0.01, 1.0, 5),
               exact_checks=4)
FULL = Config()


def classify(lat: dict, tol: float):
    """(winner index into CLASSES, margin) per point from the four latency arrays."""
    simple = np.stack([lat["cloud-only"], lat["edge-only"], lat["best-layer-cut"]])
    simple = np.where(np.isfinite(simple), simple, np.inf)
    best_simple = simple.min(0)
    head = np.where(np.isfinite(lat["best-headwise"]), lat["best-headwise"], np.inf)
    head_wins = head < best_simple * (1.0 - tol)
    order = np.argsort(simple, axis=0, kind="stable")  # ties: cloud-only, edge-only, cut
    first = order[0]
    second = np.take_along_axis(simple, order[1:2], 0)[0]
    winner = np.where(head_wins, 3, first)
    margin = np.where(head_wins, best_simple / head, second / best_simple)
    return winner, margin


def run(cfg: Config, out_dir: Path, progress) -> None:
    rtt, bw, share = cfg.grid("rtt_ms"), cfg.grid("bw_mbps"), cfg.grid("shares")
    g_rtt, g_bw, g_share = (x.ravel() for x in np.meshgrid(rtt, bw, share, indexing="ij"))
    n = g_rtt.size
    rows, checks = [], []
    combos = [(m, d, p) for m, d in cfg.cases for p in cfg.privacy_layers]
    for model, device, priv in progress(combos, desc="grid", total=len(combos)):
        specs = [get_spec(model, device, c, priv) for c in cfg.clouds]
        spec_batch = stack([s for s in specs for _ in range(n)])
        bw_all, rtt_all, share_all = (np.tile(x, len(specs)) for x in (g_bw, g_rtt, g_share))
        link = links(bw_all, rtt_all, share_all)
        costs, extra = evaluate_links(spec_batch, link)
        lat = {s: np.where(c.feasible, c.latency_s, np.inf) for s, c in costs.items()}
        lat["best-layer-cut"] = extra["proper_cut_latency"]  # c < L (c = L is edge-only)
        cloud_col = np.repeat(cfg.clouds, n)
        # Exact re-solve where the multiplier left a gap (coarse: at most exact_checks points,
        # spread over the gap points); the exact latency replaces the grid's there.
        gap = np.flatnonzero(extra["headwise_gap"] > 0)
        picks = gap[np.unique(np.linspace(0, gap.size - 1, min(cfg.exact_checks, gap.size))
                              .astype(int))] if gap.size else gap
        for i in picks:
            lk = make_link(float(bw_all[i]), float(rtt_all[i]),
                           cloud_share=float(share_all[i]))
            _, c = strategy_partition("best-headwise", lk, specs[i // n])
            exact = float(c.latency_s) if c is not None else float("inf")
            checks.append({"model": model, "device": device, "cloud": cloud_col[i],
                           "privacy_layers": priv, "index": int(i),
                           "grid_latency_s": float(lat["best-headwise"][i]),
                           "exact_latency_s": exact, "gap_points": int(gap.size)})
            lat["best-headwise"][i] = min(lat["best-headwise"][i], exact)
        winner, margin = classify(lat, cfg.tol)
        checked = np.zeros(len(specs) * n, bool)
        checked[picks] = True
        for i in range(len(specs) * n):
            rows.append({"model": model, "device": device, "cloud": cloud_col[i],
                         "privacy_layers": priv, "rtt_ms": rtt_all[i],
                         "bw_mbps": bw_all[i], "cloud_share": share_all[i],
                         **{f"lat_{s}": lat[s][i] for s in lat},
                         "winner": CLASSES[winner[i]], "margin": margin[i],
                         "dp_split": bool(extra["headwise_is_split"][i]),
                         "dp_gap": float(extra["headwise_gap"][i]),
                         "exact_checked": bool(checked[i])})
    write_rows(out_dir / "regime.csv", rows)
    write_rows(out_dir / "exact_checks.csv", checks or [{"model": "", "note": "no DP gap"}])
    write_rows(out_dir / "summary.csv", summarize(rows))
    write_config(out_dir, cfg, experiment=NAME, classes=CLASSES)


def summarize(rows) -> list[dict]:
    """Per (model, device, cloud, privacy): share of the grid each class wins, its margins
    (inf: the only feasible class), and how many points had a memory-multiplier gap."""
    out = []
    keys = dict.fromkeys((r["model"], r["device"], r["cloud"], r["privacy_layers"])
                         for r in rows)
    for model, device, cloud, priv in keys:
        sel = [r for r in rows if (r["model"], r["device"], r["cloud"], r["privacy_layers"])
               == (model, device, cloud, priv)]
        gaps = sum(r["dp_gap"] > 0 for r in sel)
        for cls in CLASSES:
            won = [r for r in sel if r["winner"] == cls]
            out.append({"model": model, "device": device, "cloud": cloud,
                        "privacy_layers": priv, "class": cls,
                        "fraction": len(won) / len(sel),
                        "max_margin": max((r["margin"] for r in won), default=float("nan")),
                        "median_margin": float(np.median([r["margin"] for r in won]))
                        if won else float("nan"),
                        "gap_points": gaps,
                        "exact_checked": sum(r["exact_checked"] for r in sel)})
    return out


def plot(run_dir: Path) -> list[Path]:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    rows = read_rows(Path(run_dir) / "regime.csv")
    cmap = ListedColormap(CLASS_COLOR)
    out = []
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in rows):
        sel = [r for r in rows if r["model"] == model and r["device"] == device]
        panels = list(dict.fromkeys((r["cloud"], r["privacy_layers"]) for r in sel))
        shares = sorted({r["cloud_share"] for r in sel}, reverse=True)
        picks = [shares[int(round(i))] for i in np.linspace(0, len(shares) - 1,
                                                             min(4, len(shares)))]
        fig, axes = plt.subplots(len(picks), len(panels), squeeze=False, sharex=True,
                                 sharey=True, figsize=(3.1 * len(panels), 2.6 * len(picks)))
        for i, sh in enumerate(picks):
            for j, (cloud, priv) in enumerate(panels):
                pts = [r for r in sel if r["cloud"] == cloud and r["privacy_layers"] == priv
                       and r["cloud_share"] == sh]
                rtts = sorted({r["rtt_ms"] for r in pts})
                bws = sorted({r["bw_mbps"] for r in pts})
                win = np.full((len(rtts), len(bws)), np.nan)
                mar = np.full_like(win, np.nan)
                for r in pts:
                    a, b = rtts.index(r["rtt_ms"]), bws.index(r["bw_mbps"])
                    win[a, b] = CLASSES.index(r["winner"])
                    mar[a, b] = r["margin"]
                ax = axes[i, j]
                ax.pcolormesh(bws, rtts, win, cmap=cmap, vmin=-0.5, vmax=3.5, shading="nearest")
                # inf margin: the only feasible class; left out of the contours (masked)
                finite = np.ma.masked_invalid(np.where(np.isfinite(mar), mar, np.nan))
                levels = ([lv for lv in (1.05, 1.5, 2.0, 5.0, 20.0)
                           if finite.min() < lv < finite.max()] if finite.count() else [])
                if levels and len(rtts) > 1 and len(bws) > 1:
                    cs = ax.contour(bws, rtts, finite, levels=levels, colors="k",
                                    linewidths=0.6)
                    ax.clabel(cs, fmt=lambda v: f"{v:g}x", fontsize=6)
                head = [r["margin"] for r in pts if r["winner"] == CLASSES[3]]
                if head:
                    ax.text(0.02, 0.03, f"head split wins by <= {100 * (max(head) - 1):.1f}%",
                            transform=ax.transAxes, fontsize=7,
                            bbox=dict(fc="white", alpha=0.8, lw=0))
                ax.set_xscale("log")
                log_axis(ax, "y")
                ax.grid(False)
                priv_txt = f"privacy floor {priv} layers" if priv else "no privacy floor"
                ax.set_title(f"{cloud}, {priv_txt}\ncloud share {sh:.3g}", fontsize=8)
                if i == len(picks) - 1:
                    ax.set_xlabel("bandwidth (Mbit/s)")
                if j == 0:
                    ax.set_ylabel("RTT (ms)")
        fig.suptitle(f"Which strategy has the lowest latency: {MODEL_LABEL.get(model, model)} on "
                     f"{DEVICE_LABEL.get(device, device)} (contours: margin over the best "
                     "other class)")
        fig.tight_layout()
        fig.legend([Patch(color=c) for c in CLASS_COLOR], CLASSES, loc="lower center", ncol=4,
                   bbox_to_anchor=(0.5, 0.99), frameon=False)
        out.append(save(fig, Path(run_dir) / f"regime_map_{model}_{device}.png"))
    return out


EXPERIMENT = Experiment(NAME, 12, "Regime map: winning strategy over RTT x bandwidth x share",
                        QUICK, FULL, run, plot)
