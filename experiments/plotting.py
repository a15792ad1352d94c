"""Plot style and the helpers every figure shares: the non-interactive pyplot, log axes with
plain tick labels, one legend above all panels, grouped bars with a mark for missing values,
and the device x model x condition bar panels of the request-level figures.

Colours, labels and line styles of *policies* come from the policy registry
(`lyapunov.registry`, `policy_line`); this module holds only those of the request-level
*strategies* (`costmodel.strategies`), of devices and of models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lyapunov import registry

DEVICE_LABEL = {"rpi5": "Raspberry Pi 5", "orin-nx": "Jetson Orin NX",
                "galaxy-s23": "Galaxy S23"}
MODEL_LABEL = {"gpt2-xl": "GPT-2 XL", "llama-7b": "LLaMA-7B", "llama-13b": "LLaMA-13B"}
STRATEGY_LABEL = {"edge-only": "edge-only", "cloud-only": "cloud-only",
                  "best-layer-cut": "best layer cut", "best-headwise": "best head/FFN split",
                  "best-tp": "best with tensor-parallel FFN"}
# A strategy is drawn in the colour of the slot-level policy that makes the same choice per
# request: the best head/FFN split is the exact DP that dp-estimate solves every slot.
STRATEGY_POLICY = {"edge-only": "edge-only", "cloud-only": "cloud-only",
                   "best-layer-cut": "best-cut", "best-headwise": "dp-estimate"}
# Strategies no registered policy plays per slot (the learned agents' tp space) get their own.
STRATEGY_COLOR = {"best-tp": "#6a3d9a"}
STRATEGY_STYLE = {"edge-only": dict(ls="-", lw=3.2, alpha=0.45),
                  "cloud-only": dict(ls="-", lw=1.6),
                  "best-layer-cut": dict(ls="-.", lw=1.6),
                  "best-headwise": dict(ls="--", lw=1.6),
                  "best-tp": dict(ls=":", lw=1.8)}


def strategy_color(name: str) -> str | None:
    if name in STRATEGY_COLOR:
        return STRATEGY_COLOR[name]
    return registry.color_of(STRATEGY_POLICY[name])


def policy_line(name: str) -> dict:
    """Matplotlib keyword arguments of a policy's curve: colour, label and style from the
    registry (a checkpoint label such as "hier/seed0" is drawn as its kind, "hier")."""
    kind = name.split("/")[0]
    return {"color": registry.color_of(kind), "label": registry.label_of(kind),
            **registry.style_of(kind)}


def policy_label(name: str) -> str:
    return policy_line(name)["label"]


def pyplot():
    """matplotlib.pyplot with the non-interactive backend and the shared style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "font.size": 9,
                         "axes.titlesize": 9, "legend.fontsize": 8, "axes.grid": True,
                         "grid.alpha": 0.3})
    return plt


def save(fig, path: Path) -> Path:
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(path)


def finish(fig, axes, path: Path, title: str, ncol: int = 5, note: str | None = None) -> Path:
    """Title, tight layout, one legend above the panels, an optional note below; saved."""
    fig.suptitle(title)
    fig.tight_layout()
    fig_legend(fig, axes, ncol=ncol, y=0.99)
    if note:
        fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=7, wrap=True)
    return save(fig, path)


def log_axis(ax, which: str = "y") -> None:
    """Log scale with plain-number tick labels (1, 2, 5, 10 ...), minor labels when the axis
    spans less than a decade."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = (ax.get_ylim() if which == "y" else ax.get_xlim())
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    span = hi / max(lo, 1e-30)
    if span < 1000:
        subs = (2.0, 3.0, 5.0) if span < 30 else (2.0, 5.0)
        axis.set_minor_locator(LogLocator(base=10, subs=subs))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
    else:
        axis.set_minor_formatter(NullFormatter())


def fig_legend(fig, axes, ncol: int = 5, y: float = 1.0):
    """One legend for all panels, above them (labels deduplicated)."""
    handles = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    return fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol,
                      bbox_to_anchor=(0.5, y), frameon=False)


def grouped_bars(ax, groups: Sequence[str], series: Sequence[str], values, colors,
                 hatches=None, log: bool = False, width: float = 0.8, errors=None):
    """Bars of `values` float [G, S] in G groups of S series (`errors` [G, S]: error bars);
    NaN draws an x at the base (not available / infeasible)."""
    values = np.asarray(values, float)
    n_s = len(series)
    w = width / n_s
    x = np.arange(len(groups))
    base = np.nanmin(values[values > 0]) / 3 if log and np.any(values > 0) else 0.0
    for j, name in enumerate(series):
        xs = x - width / 2 + w * (j + 0.5)
        v = values[:, j]
        ok = np.isfinite(v)
        # An all-missing series still gets a bar patch (NaN height) so its legend entry
        # carries the series color.
        bx, bv = (xs[ok], v[ok]) if ok.any() else (xs[:1], np.array([np.nan]))
        err = None if errors is None or not ok.any() else np.asarray(errors, float)[ok, j]
        ax.bar(bx, bv, w, color=colors[j], label=name, yerr=err, capsize=2 if err is not None
               else 0, hatch=None if hatches is None else hatches[j], edgecolor="white", lw=0.3)
        if (~ok).any():
            ax.plot(xs[~ok], np.full((~ok).sum(), base if log else 0.0), "x", color=colors[j],
                    ms=5, mew=1.5, clip_on=False)
    ax.set_xticks(x, groups)
    if log:
        log_axis(ax, "y")
    ax.grid(axis="x", visible=False)


def panel_bars(rows, value: str, ylabel: str, title: str, path: Path, series: Sequence[tuple],
               log: bool = False, transform=None, hline=None, note: str | None = None):
    """Rows = conditions, columns = models, groups = devices, bars = `series`.

    series: (label, color, hatch, selector dict) per bar; the value of a bar is the `value`
    column of the row matching the panel, the device and the selector (NaN if infeasible).
    transform: f(value, row) -> value to plot; hline: f(ax, model, condition, devices) draws
    references.
    """
    plt = pyplot()
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, axes = plt.subplots(len(conds), len(models), squeeze=False,
                             figsize=(3.6 * len(models), 2.7 * len(conds)))
    for i, cname in enumerate(conds):
        for j, model in enumerate(models):
            ax = axes[i, j]
            vals = np.full((len(devices), len(series)), np.nan)
            for g, device in enumerate(devices):
                for k, (_, _, _, sel) in enumerate(series):
                    match = [r for r in rows if r["condition"] == cname and r["model"] == model
                             and r["device"] == device
                             and all(r.get(a) == b for a, b in sel.items())]
                    if match and match[0]["feasible"]:
                        v = match[0][value]
                        vals[g, k] = transform(v, match[0]) if transform else v
            grouped_bars(ax, [DEVICE_LABEL.get(d, d).replace(" ", "\n", 1) for d in devices],
                         [s[0] for s in series], vals, [s[1] for s in series],
                         [s[2] for s in series], log=log)
            if hline is not None:
                hline(ax, model, cname, devices)
            ax.set_title(f"{MODEL_LABEL.get(model, model)}; {cname}")
            if j == 0:
                ax.set_ylabel(ylabel)
    return finish(fig, axes, path, title, ncol=min(len(series) + 1, 6), note=note)


def strategy_series(strategies: Sequence[str], objective: str | None = None,
                    suffix: str = "", hatch: str | None = None) -> list[tuple]:
    """`panel_bars` series of request-level strategies (optionally of one objective)."""
    return [(STRATEGY_LABEL[s] + suffix, strategy_color(s), hatch,
             {"strategy": s} | ({"objective": objective} if objective else {}))
            for s in strategies]
