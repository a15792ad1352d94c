"""Shared pieces of the experiments: scenarios, the batched strategy evaluator, table I/O and
plot style.

The evaluator (`evaluate_links`) computes, for one cost spec (model x edge device x cloud) and a
batch of link states, the per-request costs of the four strategies of `costmodel.strategies`:

- edge-only and cloud-only: fixed partitions;
- best-layer-cut: the best of all single cut points x activation precisions (embedding on the
  edge), scored by the same weighted objective as the DP;
- best-headwise: the memory-constrained additive DP (`costmodel.dp.solve_memory`, Lagrangian on
  the edge-memory budget), then the better of it and the best layer cut. Where the multiplier
  leaves a duality gap the DP result is only an upper bound on the optimum; the `gap` array says
  where (and `costmodel.strategies.strategy_partition` adds the resource DP there).

Everything is one `jax.jit` per static spec shape (model and privacy floor): links are padded
to a fixed chunk so that changing devices, clouds or sweep sizes never recompiles.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from costmodel import partition as P
from costmodel.costs import RequestCosts, request_costs
from costmodel.dp import Weights, solve_memory
from costmodel.link import LinkState, Workload
from costmodel.spec import CostSpec, make_spec
from costmodel.strategies import STRATEGIES, layer_cut_candidates

MODELS = ("gpt2-xl", "llama-7b", "llama-13b")
DEVICES = ("rpi5", "orin-nx", "galaxy-s23")
DEVICE_LABEL = {"rpi5": "Raspberry Pi 5", "orin-nx": "Jetson Orin NX",
                "galaxy-s23": "Galaxy S23"}
MODEL_LABEL = {"gpt2-xl": "GPT-2 XL", "llama-7b": "LLaMA-7B", "llama-13b": "LLaMA-13B"}
STRATEGY_LABEL = {"edge-only": "edge-only", "cloud-only": "cloud-only",
                  "best-layer-cut": "best layer cut", "best-headwise": "best head/FFN split"}
STRATEGY_COLOR = {"edge-only": "#1b9e77", "cloud-only": "#7570b3",
                  "best-layer-cut": "#d95f02", "best-headwise": "#e7298a"}
CHUNK = 128  # links per evaluator call (fixed: one compilation per spec shape)
# The joint objective ("ours" in the claims): latency + energy and accuracy priced in seconds,
# 0.05 s per J of edge energy and 0.2 s per % of perplexity increase.
JOINT_ENERGY_S_PER_J = 0.05
JOINT_ACCURACY_S_PER_PCT = 0.2

# Fields of RequestCosts written to the tables.
COST_FIELDS = ("latency_s", "energy_j", "cloud_cost", "accuracy_drop", "edge_memory_gb",
               "feasible", "edge_compute_s", "bytes_up", "bytes_down", "cloud_gpu_s",
               "n_crossings")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A cloud and its static link conditions (bandwidth is swept separately).

    name: short key used in file names and tables.
    cloud: cloud profile ("datacenter" or "mec").
    rtt_ms: round-trip time, ms.
    cloud_share: fraction of the cloud GPU this client gets (1 = idle cloud).
    privacy_layers: embedding + this many first layers pinned to the edge (0 = no floor).
    label: legend text.
    """

    name: str
    cloud: str
    rtt_ms: float
    cloud_share: float
    privacy_layers: int = 0
    label: str = ""


# The three static scenarios of the request-level figures (system-model section 2): an idle
# datacenter (where cloud-only should win), a contended datacenter and a contended MEC server
# on a LAN-class link (where splitting can pay).
SCENARIOS = (
    Scenario("dc-idle", "datacenter", 40.0, 1.0, 0,
             "datacenter, idle GPU (RTT 40 ms, share 1)"),
    Scenario("dc-contended", "datacenter", 40.0, 0.02, 0,
             "datacenter, contended (RTT 40 ms, share 0.02)"),
    Scenario("mec-contended", "mec", 2.0, 0.1, 0,
             "MEC server, contended (RTT 2 ms, share 0.1)"),
)


def scenario(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise ValueError(f"unknown scenario {name!r}; valid: {[s.name for s in SCENARIOS]}")


@functools.lru_cache(maxsize=64)
def get_spec(model: str, device: str, cloud: str, privacy_layers: int = 0,
             prompt_tokens: int = 128, new_tokens: int = 32) -> CostSpec:
    return make_spec(model, device, cloud, Workload(prompt_tokens, new_tokens), privacy_layers)


def links(bw_mbps, rtt_ms, cloud_share) -> LinkState:
    """LinkState of broadcast arrays (float32 [N]); uplink = downlink bandwidth."""
    bw, rtt, share = np.broadcast_arrays(*(np.asarray(x, np.float32)
                                           for x in (bw_mbps, rtt_ms, cloud_share)))
    bw, rtt, share = (np.ravel(x) for x in (bw, rtt, share))
    return LinkState(jnp.asarray(bw), jnp.asarray(bw), jnp.asarray(rtt), jnp.asarray(share))


def _score(c: RequestCosts, w: Weights):
    val = (w.latency * c.latency_s + w.energy * c.energy_j + w.cloud_cost * c.cloud_cost
           + w.accuracy * c.accuracy_drop + w.memory * c.edge_memory_gb)
    return jnp.where(c.feasible & jnp.isfinite(val), val, jnp.inf)


def _pick(mask, a, b):
    return jax.tree.map(lambda x, y: jnp.where(mask, x, y), a, b)


def _evaluate_one(spec: CostSpec, link: LinkState, w: Weights):
    """Per-strategy costs for one (spec, link) sample."""
    n_l, n_h = spec.n_layers, spec.n_heads
    edge = request_costs(P.edge_only(n_l, n_h), link, spec)
    cloud = request_costs(P.cloud_only(n_l), link, spec)
    cc = jax.vmap(request_costs, in_axes=(0, None, None))(layer_cut_candidates(spec), link, spec)
    score = _score(cc, w)
    i_cut = score.argmin()
    cut = jax.tree.map(lambda x: x[i_cut], cc)
    res = solve_memory(link, spec, w)
    dp_costs = request_costs(res.partition, link, spec)
    use_dp = _score(dp_costs, w) <= score[i_cut]
    head = _pick(use_dp, dp_costs, cut)
    heads = res.partition.edge_heads
    split = jnp.any((heads > 0) & (heads < n_h)) | jnp.any(res.partition.ffn == P.SPLIT)
    cut_layer, cut_prec = i_cut % (n_l + 1), i_cut // (n_l + 1)
    # The best proper cut (c < L: something runs on the cloud), for margins between classes.
    proper = (jnp.arange(score.shape[0]) % (n_l + 1)) < n_l
    i_proper = jnp.where(proper, score, jnp.inf).argmin()
    proper_ok = jnp.isfinite(score[i_proper])
    extra = {
        "proper_cut_latency": jnp.where(proper_ok, cc.latency_s[i_proper], jnp.inf),
        "cut_layer": cut_layer, "cut_prec": cut_prec,
        "headwise_is_split": use_dp & split,
        "headwise_edge_frac": jnp.where(use_dp, heads.sum() / (n_l * n_h), cut_layer / n_l),
        "headwise_prec": jnp.where(use_dp, res.partition.act_prec, cut_prec),
        "headwise_gap": jnp.where(use_dp, res.gap, 0.0),
    }
    return {"edge-only": edge, "cloud-only": cloud, "best-layer-cut": cut,
            "best-headwise": head}, extra


_evaluate_chunk = jax.jit(jax.vmap(_evaluate_one, in_axes=(0, 0, None)))


def stack(trees: Sequence):
    """Stack a list of pytrees of one structure along a new leading axis."""
    return jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *trees)


def evaluate_links(spec: CostSpec, link: LinkState, w: Weights | None = None):
    """({strategy: RequestCosts of float [N]}, extras {name: [N]}) as NumPy, for N links.

    `spec` is one CostSpec (broadcast to every link) or a stacked batch of N specs of one
    static shape (one model and privacy floor; devices and clouds differ in the leaves)."""
    w = w or Weights()
    n = int(np.shape(link.bw_up_mbps)[0])
    if np.ndim(spec.prompt_tokens) == 0:
        spec = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), spec)
    outs, extras = [], []
    for start in range(0, n, CHUNK):
        idx = jnp.asarray(np.minimum(np.arange(start, start + CHUNK), n - 1))
        chunk_link = jax.tree.map(lambda x, idx=idx: jnp.asarray(x)[idx], link)
        chunk_spec = jax.tree.map(lambda x, idx=idx: x[idx], spec)
        o, e = _evaluate_chunk(chunk_spec, chunk_link, w)
        keep = min(CHUNK, n - start)
        outs.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[:keep], o))
        extras.append({k: np.asarray(v)[:keep] for k, v in e.items()})
    costs = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
    extra = {k: np.concatenate([e[k] for e in extras]) for k in extras[0]}
    return costs, extra


def strategy_rows(costs: dict, extra: dict, base: dict) -> list[dict]:
    """Long-format rows: one per (link index, strategy), `base` columns broadcast."""
    n = len(next(iter(costs.values())).latency_s)
    rows = []
    for i in range(n):
        for s in STRATEGIES:
            row = {k: (v[i] if np.ndim(v) else v) for k, v in base.items()}
            row["strategy"] = s
            for f in COST_FIELDS:
                row[f] = np.asarray(getattr(costs[s], f))[i]
            if s == "best-headwise":
                row["is_split"] = bool(extra["headwise_is_split"][i])
                row["dp_gap"] = float(extra["headwise_gap"][i])
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# Tables: CSV with a header; config JSON beside the arrays.


def _fmt(v):
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def write_rows(path: Path, rows: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(cols)
        for r in rows:
            wr.writerow([_fmt(r.get(k, "")) for k in cols])
    return path


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV written by `write_rows`, numbers parsed back (empty -> None)."""

    def parse(v: str):
        if v == "":
            return None
        try:
            return int(v)
        except ValueError:
            pass
        try:
            return float(v)
        except ValueError:
            return v

    with Path(path).open(newline="") as fh:
        return [{k: parse(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def column(rows: Iterable[dict], key: str, **where) -> np.ndarray:
    """The `key` column of the rows matching all `where` equalities, as a float array."""
    out = [r[key] for r in rows if all(r.get(k) == v for k, v in where.items())]
    return np.asarray([np.nan if x is None else x for x in out], dtype=float)


def write_config(out_dir: Path, cfg, **extra) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"config": _jsonable(dataclasses.asdict(cfg)), **_jsonable(extra)}
    path = out_dir / "config.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


# ------------------------------------------------------------------------------------------
# Plot style


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


def identity_progress(iterable, desc: str = "", total: int | None = None):
    return iterable


STRATEGY_STYLE = {"edge-only": dict(ls="-", lw=3.2, alpha=0.45),
                  "cloud-only": dict(ls="-", lw=1.6),
                  "best-layer-cut": dict(ls="-.", lw=1.6),
                  "best-headwise": dict(ls="--", lw=1.6)}


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
                 hatches=None, log: bool = False, width: float = 0.8):
    """Bars of `values` float [G, S] in G groups of S series; NaN draws an x at the base
    (not available / infeasible)."""
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
        ax.bar(bx, bv, w, color=colors[j], label=name,
               hatch=None if hatches is None else hatches[j], edgecolor="white", lw=0.3)
        if (~ok).any():
            ax.plot(xs[~ok], np.full((~ok).sum(), base if log else 0.0), "x", color=colors[j],
                    ms=5, mew=1.5, clip_on=False)
    ax.set_xticks(x, groups)
    if log:
        log_axis(ax, "y")
    ax.grid(axis="x", visible=False)


def panel_bars(rows, value: str, ylabel: str, title: str, path: Path, series: Sequence[tuple],
               log: bool = False, transform=None, hline=None, note: str | None = None):
    """Rows = scenarios, columns = models, groups = devices, bars = `series`.

    series: (label, color, hatch, selector dict) per bar; the value of a bar is the `value`
    column of the row matching the panel, the device and the selector (NaN if infeasible).
    transform: f(value, row) -> value to plot; hline: f(ax, model, scenario) draws references.
    """
    plt = pyplot()
    scen = list(dict.fromkeys(r["scenario"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, axes = plt.subplots(len(scen), len(models), squeeze=False,
                             figsize=(3.6 * len(models), 2.7 * len(scen)))
    for i, sname in enumerate(scen):
        for j, model in enumerate(models):
            ax = axes[i, j]
            vals = np.full((len(devices), len(series)), np.nan)
            for g, device in enumerate(devices):
                for k, (_, _, _, sel) in enumerate(series):
                    match = [r for r in rows if r["scenario"] == sname and r["model"] == model
                             and r["device"] == device
                             and all(r.get(a) == b for a, b in sel.items())]
                    if match and match[0]["feasible"]:
                        v = match[0][value]
                        vals[g, k] = transform(v, match[0]) if transform else v
            grouped_bars(ax, [DEVICE_LABEL.get(d, d).replace(" ", "\n", 1) for d in devices],
                         [s[0] for s in series], vals, [s[1] for s in series],
                         [s[2] for s in series], log=log)
            if hline is not None:
                hline(ax, model, sname, devices)
            ax.set_title(f"{MODEL_LABEL.get(model, model)}; {sname}")
            if j == 0:
                ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig_legend(fig, axes, ncol=min(len(series) + 1, 6), y=0.99)
    if note:
        fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=7, wrap=True)
    return save(fig, path)
