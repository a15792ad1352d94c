"""Figure 12: the regime map (docs/design.md §2.6). Over RTT x bandwidth x cloud share, for
a datacenter and a MEC cloud, with and without a privacy floor, which strategy gives the
lowest request latency and by how much; and a LAN grid (RTT 0.1-2 ms x 100-10,000 Mbit/s,
cloud share 1) where the "cloud" is a peer of the same kind (`pi5-peer`, `orin-peer`) or a
desktop GPU on Wi-Fi 6 (`rtx4090-lan`).

Classes: cloud-only, edge-only, best layer cut (Neurosurgeon-style single cut c < L, embedding
on the edge, any activation precision), and head-level split: the exact head/FFN DP
(memory-constrained, costmodel.dp) counts as its own class only where it beats all three by
more than `tol` (it contains them, so elsewhere it ties). Margin: latency of the best *other*
class over the winner's. The whole grid is one vmapped batch per (model, privacy
floor), one compiled program per model; where the DP's memory multiplier leaves a duality
gap, up to `exact_checks` grid
points are re-solved with the exact resource DP (`costmodel.strategies.strategy_partition`)
and compared.

Two spaces side by side: the paper's (classes 1-4) and with tensor-parallel FFNs (§2.8): the
tensor-parallel split (best-tp) is a fifth class, counted only where it beats the four others by
more than `tol` (`winner_tp`, `margin_tp`). The two-device bound: a split of one request over
two devices is never faster than the work divided by the sum of their speeds, i.e. its latency
is at least `T_e·T_c / (T_e + T_c)` with `T_e` the edge's time for the whole request alone
(edge-only) and `T_c` the cloud's (cloud-only less its link terms); `bound` is the best
layer-wise latency over that, an upper bound on any split's margin (2x for identical peers).
The bound is exact when the two devices' speed ratio is the same for every block (peers); for
unlike devices it is the request-level statement of §2.6.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from costmodel.costs import TOKEN_BYTES
from costmodel.link import make_link
from costmodel.strategies import strategy_partition
from experiments.catalog import Experiment
from experiments.common import evaluate_links, get_spec, links, stack
from experiments.plotting import (
    DEVICE_LABEL,
    MODEL_LABEL,
    pyplot,
    save,
    strategy_color,
)
from experiments.tables import read_rows, write_config, write_rows

NAME = "regime_map"
CLASSES = ("cloud-only", "edge-only", "best-layer-cut", "head-level split",
           "tensor-parallel split")
CLASS_COLOR = tuple(strategy_color(s) for s in ("cloud-only", "edge-only", "best-layer-cut",
                                                 "best-headwise", "best-tp"))
SPACES = {"paper": "paper's space (heads, sequential FFN split)",
          "tp": "with tensor-parallel FFNs"}


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
    # LAN grid: (model, edge profile, cloud profile) with cloud share 1, no privacy floor.
    lan_cases: tuple[tuple[str, str, str], ...] = tuple(
        (m, d, c) for m in ("llama-7b", "llama-13b")
        for d, c in (("rpi5", "pi5-peer"), ("orin-nx", "orin-peer"), ("orin-nx", "rtx4090-lan"),
                     ("galaxy-s23", "rtx4090-lan")))
    lan_rtt_ms: tuple[float, float, int] = (0.1, 2.0, 16)
    lan_bw_mbps: tuple[float, float, int] = (100.0, 10000.0, 16)

    def grid(self, which: str) -> np.ndarray:
        lo, hi, n = getattr(self, which)
        return np.geomspace(lo, hi, n).astype(np.float32)


# Quick: one case where edge memory never binds and one where it does.
QUICK = Config(cases=(("llama-7b", "orin-nx"), ("llama-13b", "galaxy-s23")),
               rtt_ms=(0.5, 100.0, 8), bw_mbps=(1.0, 1000.0, 10), shares=(0.01, 1.0, 5),
               exact_checks=4,
               lan_cases=(("llama-7b", "rpi5", "pi5-peer"), ("llama-7b", "orin-nx", "orin-peer"),
                          ("llama-7b", "orin-nx", "rtx4090-lan")),
               lan_rtt_ms=(0.1, 2.0, 5), lan_bw_mbps=(100.0, 10000.0, 5))
FULL = Config()


def classify(lat: dict, tol: float, tp: bool = False):
    """(winner index into CLASSES, margin) per point from the latency arrays: each split class
    counts only where it beats every earlier class by more than `tol` (the head-level split
    the three layer-wise ones; with `tp`, the tensor-parallel split all four). Margin: the best
    other class's latency over the winner's."""
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
    if tp:
        best4 = np.minimum(best_simple, head)
        tpl = np.where(np.isfinite(lat["best-tp"]), lat["best-tp"], np.inf)
        tp_wins = tpl < best4 * (1.0 - tol)
        # where tp does not win, its latency ties the winner's: the runner-up is unchanged
        winner = np.where(tp_wins, 4, winner)
        margin = np.where(tp_wins, best4 / tpl, margin)
    return winner, margin


def two_device_bound(costs: dict, link_bw_up, link_bw_down, rtt_ms, msg_overhead_s):
    """(T_e, T_c, lower bound on any split's latency T_e·T_c/(T_e + T_c)) per point: T_e the
    edge-only latency (the edge doing all the work, feasible or not), T_c the cloud-only
    latency less its link terms (prompt upload and last token, each RTT/2 plus the per-message
    cost)."""
    t_e = np.asarray(costs["edge-only"].latency_s, np.float64)
    c = costs["cloud-only"]
    link_t = (2.0 * (np.asarray(rtt_ms, np.float64) * 1e-3 / 2.0 + msg_overhead_s)
              + np.asarray(c.bytes_up, np.float64) / (np.asarray(link_bw_up) * 1e6 / 8.0)
              + TOKEN_BYTES / (np.asarray(link_bw_down) * 1e6 / 8.0))
    t_c = np.asarray(c.latency_s, np.float64) - link_t
    return t_e, t_c, t_e * t_c / (t_e + t_c)


def _grid_rows(cfg: Config, grid: str, model: str, device: str, clouds, priv: int,
               rtt, bw, share, checks: list) -> list[dict]:
    """Rows of one (model, edge device, privacy floor) over `clouds` x the link grid."""
    g_rtt, g_bw, g_share = (x.ravel() for x in np.meshgrid(rtt, bw, share, indexing="ij"))
    n = g_rtt.size
    specs = [get_spec(model, device, c, priv) for c in clouds]
    spec_batch = stack([s for s in specs for _ in range(n)])
    bw_all, rtt_all, share_all = (np.tile(x, len(specs)) for x in (g_bw, g_rtt, g_share))
    link = links(bw_all, rtt_all, share_all)
    costs, extra = evaluate_links(spec_batch, link)
    lat = {s: np.where(c.feasible, c.latency_s, np.inf) for s, c in costs.items()}
    lat["best-layer-cut"] = extra["proper_cut_latency"]  # c < L (c = L is edge-only)
    cloud_col = np.repeat(clouds, n)
    # Exact re-solve where the multiplier left a gap (coarse: at most exact_checks points,
    # spread over the gap points); the exact latency replaces the grid's there.
    gap = np.flatnonzero(extra["headwise_gap"] > 0)
    picks = gap[np.unique(np.linspace(0, gap.size - 1, min(cfg.exact_checks, gap.size))
                          .astype(int))] if gap.size else gap
    for i in picks:
        lk = make_link(float(bw_all[i]), float(rtt_all[i]), cloud_share=float(share_all[i]))
        _, c = strategy_partition("best-headwise", lk, specs[i // n])
        exact = float(c.latency_s) if c is not None else float("inf")
        checks.append({"grid": grid, "model": model, "device": device, "cloud": cloud_col[i],
                       "privacy_layers": priv, "index": int(i),
                       "grid_latency_s": float(lat["best-headwise"][i]),
                       "exact_latency_s": exact, "gap_points": int(gap.size)})
        lat["best-headwise"][i] = min(lat["best-headwise"][i], exact)
    lat["best-tp"] = np.minimum(lat["best-tp"], lat["best-headwise"])  # tp contains the paper's
    winner, margin = classify(lat, cfg.tol)
    winner_tp, margin_tp = classify(lat, cfg.tol, tp=True)
    msg = np.repeat([float(s.msg_overhead_s) for s in specs], n)
    t_e, t_c, t_pair = two_device_bound(costs, bw_all, bw_all, rtt_all, msg)
    best_lw = np.stack([lat["cloud-only"], lat["edge-only"], lat["best-layer-cut"]]).min(0)
    checked = np.zeros(len(specs) * n, bool)
    checked[picks] = True
    rows = []
    for i in range(len(specs) * n):
        rows.append({"grid": grid, "model": model, "device": device, "cloud": cloud_col[i],
                     "privacy_layers": priv, "rtt_ms": rtt_all[i],
                     "bw_mbps": bw_all[i], "cloud_share": share_all[i],
                     **{f"lat_{s}": lat[s][i] for s in lat},
                     "winner": CLASSES[winner[i]], "margin": margin[i],
                     "winner_tp": CLASSES[winner_tp[i]], "margin_tp": margin_tp[i],
                     "t_edge_s": t_e[i], "t_cloud_s": t_c[i], "t_pair_bound_s": t_pair[i],
                     "bound": best_lw[i] / t_pair[i],
                     # the best split of each space over the best layer-wise choice (1: none
                     # better)
                     "split_margin": best_lw[i] / lat["best-headwise"][i],
                     "split_margin_tp": best_lw[i] / lat["best-tp"][i],
                     "dp_split": bool(extra["headwise_is_split"][i]),
                     "dp_gap": float(extra["headwise_gap"][i]),
                     "tp_is_tp": bool(extra["tp_is_tp"][i]),
                     "tp_gap": float(extra["tp_gap"][i]),
                     "exact_checked": bool(checked[i])})
    return rows


def run(cfg: Config, out_dir: Path, progress) -> None:
    rows, checks = [], []
    combos = ([("wan", m, d, cfg.clouds, p) for m, d in cfg.cases for p in cfg.privacy_layers]
              + [("lan", m, d, (c,), 0) for m, d, c in cfg.lan_cases])
    for grid, model, device, clouds, priv in progress(combos, desc="grid", total=len(combos)):
        if grid == "wan":
            axes = cfg.grid("rtt_ms"), cfg.grid("bw_mbps"), cfg.grid("shares")
        else:
            axes = cfg.grid("lan_rtt_ms"), cfg.grid("lan_bw_mbps"), np.ones(1, np.float32)
        rows += _grid_rows(cfg, grid, model, device, clouds, priv, *axes, checks)
    write_rows(out_dir / "regime.csv", rows)
    write_rows(out_dir / "exact_checks.csv", checks or [{"model": "", "note": "no DP gap"}])
    write_rows(out_dir / "summary.csv", summarize(rows))
    write_config(out_dir, cfg, experiment=NAME, classes=CLASSES, spaces=SPACES)


def summarize(rows) -> list[dict]:
    """Per (grid, model, device, cloud, privacy, space): share of the grid each class wins, its
    margins (inf: the only feasible class), where its largest margin is (RTT, bandwidth, share),
    the two-device bound there, and how many points had a memory-multiplier gap."""
    out = []
    keys = dict.fromkeys((r["grid"], r["model"], r["device"], r["cloud"], r["privacy_layers"])
                         for r in rows)
    for key in keys:
        sel = [r for r in rows if (r["grid"], r["model"], r["device"], r["cloud"],
                                   r["privacy_layers"]) == key]
        gaps = sum(r["dp_gap"] > 0 for r in sel)
        for space, wcol, mcol in (("paper", "winner", "margin"), ("tp", "winner_tp",
                                                                   "margin_tp")):
            classes = CLASSES if space == "tp" else CLASSES[:4]
            for cls in classes:
                won = [r for r in sel if r[wcol] == cls]
                top = max(won, key=lambda r: r[mcol]) if won else None
                out.append({"grid": key[0], "model": key[1], "device": key[2], "cloud": key[3],
                            "privacy_layers": key[4], "space": space, "class": cls,
                            "fraction": len(won) / len(sel),
                            "max_margin": top[mcol] if top else float("nan"),
                            "median_margin": float(np.median([r[mcol] for r in won]))
                            if won else float("nan"),
                            "at_rtt_ms": top["rtt_ms"] if top else float("nan"),
                            "at_bw_mbps": top["bw_mbps"] if top else float("nan"),
                            "at_cloud_share": top["cloud_share"] if top else float("nan"),
                            "bound_there": top["bound"] if top else float("nan"),
                            # over the whole grid: the space's best split over the best
                            # layer-wise choice, where, and the bound there
                            **_best_split(sel, "split_margin" if space == "paper"
                                          else "split_margin_tp"),
                            "gap_points": gaps,
                            "exact_checked": sum(r["exact_checked"] for r in sel)})
    return out


def _best_split(sel, col) -> dict:
    fin = [r for r in sel if np.isfinite(r[col])]
    if not fin:
        return {"split_margin_max": float("nan")}
    top = max(fin, key=lambda r: r[col])
    return {"split_margin_max": top[col], "split_at_rtt_ms": top["rtt_ms"],
            "split_at_bw_mbps": top["bw_mbps"], "split_at_cloud_share": top["cloud_share"],
            "split_bound_there": top["bound"]}


def _panel(ax, pts, wcol, mcol, cmap, label):
    """One map: winning class (colour) and margin contours over RTT x bandwidth."""
    from matplotlib.ticker import FormatStrFormatter, NullLocator

    rtts = sorted({r["rtt_ms"] for r in pts})
    bws = sorted({r["bw_mbps"] for r in pts})
    win = np.full((len(rtts), len(bws)), np.nan)
    mar = np.full_like(win, np.nan)
    for r in pts:
        a, b = rtts.index(r["rtt_ms"]), bws.index(r["bw_mbps"])
        win[a, b] = CLASSES.index(r[wcol])
        mar[a, b] = r[mcol]
    ax.pcolormesh(bws, rtts, win, cmap=cmap, vmin=-0.5, vmax=len(CLASSES) - 0.5,
                  shading="nearest")
    # inf margin: the only feasible class; left out of the contours (masked)
    finite = np.ma.masked_invalid(np.where(np.isfinite(mar), mar, np.nan))
    levels = ([lv for lv in (1.05, 1.2, 1.5, 2.0, 5.0, 20.0)
               if finite.min() < lv < finite.max()] if finite.count() else [])
    if levels and len(rtts) > 1 and len(bws) > 1:
        cs = ax.contour(bws, rtts, finite, levels=levels, colors="k", linewidths=0.6)
        ax.clabel(cs, fmt=lambda v: f"{v:g}x", fontsize=6)
    lines = []
    for cls in CLASSES[3:]:
        won = [r for r in pts if r[wcol] == cls]
        if won:
            top = max(won, key=lambda r: r[mcol])
            lines.append(f"{cls} wins by <= {top[mcol]:.3g}x (bound {top['bound']:.3g}x)")
    if lines:
        ax.text(0.02, 0.03, "\n".join(lines), transform=ax.transAxes, fontsize=6,
                bbox=dict(fc="white", alpha=0.8, lw=0))
    # Log axes without minor ticks: on dozens of small panels the minor ticks' objects took
    # most of the plot's time (tens of seconds).
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_locator(NullLocator())
    ax.grid(False)
    ax.set_title(label, fontsize=8)


def plot(run_dir: Path) -> list[Path]:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    rows = read_rows(Path(run_dir) / "regime.csv")
    cmap = ListedColormap(CLASS_COLOR)
    out = []
    wan = [r for r in rows if r.get("grid", "wan") == "wan"]
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in wan):
        sel = [r for r in wan if r["model"] == model and r["device"] == device]
        panels = list(dict.fromkeys((r["cloud"], r["privacy_layers"]) for r in sel))
        shares = sorted({r["cloud_share"] for r in sel}, reverse=True)
        picks = [shares[int(round(i))] for i in np.linspace(0, len(shares) - 1,
                                                             min(4, len(shares)))]
        # Each (cloud, privacy) panel twice: the paper's space, then with tp.
        cols = [(cl, pv, sp) for cl, pv in panels for sp in SPACES]
        fig, axes = plt.subplots(len(picks), len(cols), squeeze=False, sharex=True,
                                 sharey=True, figsize=(2.9 * len(cols), 2.6 * len(picks)))
        for i, sh in enumerate(picks):
            for j, (cloud, priv, sp) in enumerate(cols):
                pts = [r for r in sel if r["cloud"] == cloud and r["privacy_layers"] == priv
                       and r["cloud_share"] == sh]
                wcol, mcol = ("winner", "margin") if sp == "paper" else ("winner_tp",
                                                                         "margin_tp")
                priv_txt = f"privacy floor {priv}" if priv else "no privacy floor"
                _panel(axes[i, j], pts, wcol, mcol, cmap,
                       f"{cloud}, {priv_txt}, share {sh:.3g}\n{SPACES[sp]}")
                if i == len(picks) - 1:
                    axes[i, j].set_xlabel("bandwidth (Mbit/s)")
                if j == 0:
                    axes[i, j].set_ylabel("RTT (ms)")
        fig.suptitle(f"Which strategy has the lowest latency: {MODEL_LABEL.get(model, model)} on "
                     f"{DEVICE_LABEL.get(device, device)} (contours: margin over the best "
                     "other class)", y=0.985)
        fig.subplots_adjust(top=0.91, wspace=0.08, hspace=0.45)
        fig.legend([Patch(color=c) for c in CLASS_COLOR], CLASSES, loc="lower center",
                   ncol=len(CLASSES), bbox_to_anchor=(0.5, 0.99), frameon=False)
        out.append(save(fig, Path(run_dir) / f"regime_map_{model}_{device}.png"))
    lan = [r for r in rows if r.get("grid") == "lan"]
    for model in dict.fromkeys(r["model"] for r in lan):
        cases = list(dict.fromkeys((r["device"], r["cloud"]) for r in lan
                                   if r["model"] == model))
        fig, axes = plt.subplots(len(cases), 2, squeeze=False, sharex=True, sharey=True,
                                 figsize=(7.0, 2.8 * len(cases)))
        for i, (device, cloud) in enumerate(cases):
            pts = [r for r in lan if (r["model"], r["device"], r["cloud"])
                   == (model, device, cloud)]
            for j, (sp, wcol, mcol) in enumerate((("paper", "winner", "margin"),
                                                  ("tp", "winner_tp", "margin_tp"))):
                _panel(axes[i, j], pts, wcol, mcol, cmap,
                       f"{DEVICE_LABEL.get(device, device)} + {cloud}\n{SPACES[sp]}")
                if i == len(cases) - 1:
                    axes[i, j].set_xlabel("bandwidth (Mbit/s)")
                if j == 0:
                    axes[i, j].set_ylabel("RTT (ms)")
        fig.suptitle(f"LAN: {MODEL_LABEL.get(model, model)}, cloud share 1 (contours: margin "
                     "over the best other class; bound: two-device bound there)", fontsize=9,
                     y=0.985)
        fig.subplots_adjust(top=0.88, wspace=0.08, hspace=0.5)
        fig.legend([Patch(color=c) for c in CLASS_COLOR], CLASSES, loc="lower center",
                   ncol=3, bbox_to_anchor=(0.5, 0.99), frameon=False, fontsize=7)
        out.append(save(fig, Path(run_dir) / f"regime_map_lan_{model}.png"))
    return out


EXPERIMENT = Experiment(NAME, 12, "Regime map: winning strategy over RTT x bandwidth x share",
                        QUICK, FULL, run, plot)
