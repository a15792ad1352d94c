"""Figure 3: request latency distribution (CDF) and p95 on the Norway HSDPA traces and on a 5G
drive trace with outages, for our controller against cloud-only, edge-only, the adaptive best
layer cut, the Neurosurgeon-style cut, the static best cut, and (when trained checkpoints
exist) the layer-wise DRL baseline.

The slot environment (lyapunov.env) replays the four shipped Norway traces concatenated (no
outages), from a random offset per seed, in every condition; and, in the `outage_conditions`,
the shipped 5Gophers Verizon drive trace (9% zero-throughput seconds, one 10 s outage), shown
as the condition "<condition>/5g-drive". A request caught by an outage pays the retry waits
and the fallback (docs/design.md §2.7): its latency is in the CDF and the p95, and failures
are counted (`failure_frac`). Arrivals are Poisson; the cloud share follows an AR(1) on its
logit per condition (`experiments.conditions`). Every policy sees the same arrival, bandwidth
and share paths for a given seed (common random numbers). Per slot, the latency is that of
one request under the slot's partition in the slot's link (the cost model); the queueing delay
is reported separately by Little's law (time-average backlog / arrival rate).

The policies are every jittable one of the policy registry (`lyapunov.registry`) and the
trained checkpoints. "Ours" is the hierarchical PPO policy where a trained checkpoint exists,
else the model-based DPP controller with the paper's joint objective (`dp-joint`: the per-slot
objective solved exactly on the last slot's measurements), labelled as such; the clairvoyant
oracle is the bound no causal controller can beat.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from costmodel.costs import request_costs
from costmodel.link import LinkState
from experiments.catalog import Experiment
from experiments.claims import ours_of
from experiments.common import stack
from experiments.conditions import CONDITIONS, NAMES
from experiments.plotting import (
    DEVICE_LABEL,
    MODEL_LABEL,
    finish,
    grouped_bars,
    log_axis,
    policy_line,
    pyplot,
)
from experiments.sim import (
    norway_trace,
    policy,
    rollouts,
    seed_keys,
    slot_policies,
    slot_scenario,
)
from experiments.stats import finite_mean_ci
from experiments.tables import read_rows, write_config, write_rows
from experiments.training import FULL_TRAIN, QUICK_TRAIN, TrainSpec, ensure_runs

NAME = "trace_latency"


@dataclasses.dataclass(frozen=True)
class Config:
    """models, devices: cards and edge profiles; conditions: names of
    experiments.conditions.CONDITIONS; policies: registered policy names (default: every
    jittable one); checkpoints: (label, directory) of trained agents (relative to the results
    folder, then the working directory) evaluated beside them on their training model and
    device (all conditions of that training), skipped when absent; rate: Poisson arrivals per
    slot; V: DPP weight; tau_s: slot length (s); n_slots: slots per run; seeds: runs (trace
    offset, arrival and share paths); train: the agents trained into <out>/train when no run
    is there (None: do not train)."""

    models: tuple[str, ...] = ("llama-7b",)
    devices: tuple[str, ...] = ("orin-nx", "galaxy-s23", "rpi5")
    conditions: tuple[str, ...] = NAMES
    outage_conditions: tuple[str, ...] = ("mec-contended",)
    outage_trace: str = "fivegophers_verizon_drive_2"
    policies: tuple[str, ...] = dataclasses.field(default_factory=slot_policies)
    checkpoints: tuple[tuple[str, str], ...] = (("hier", "train/hier/seed0"),
                                                 ("layerwise", "train/layerwise/seed0"))
    rate: float = 0.3
    V: float = 10.0
    tau_s: float = 2.0
    n_slots: int = 2000
    seeds: int = 10
    train: TrainSpec | None = FULL_TRAIN


# Batch = devices x conditions x seeds: 30 (quick) and 90 (full), as in figure 4. Quick mode
# runs the policies the claims compare (ours, cloud-only, edge-only, the best cut) and the
# model-based controller; the clairvoyant bound is in full mode (and in figures 4 and 13).
QUICK = Config(devices=("orin-nx",), n_slots=300, seeds=3, train=QUICK_TRAIN,
               policies=("dp-estimate", "cloud-only", "edge-only", "best-cut"))
FULL = Config(models=("gpt2-xl", "llama-7b", "llama-13b"))


@jax.jit
def _edge_memory(actions, spec):
    """float [B, T] edge memory (GB) of the chosen partitions (link-independent)."""
    one = LinkState(*(np.float32(1.0),) * 4)

    def per_elem(acts, sp):
        return jax.vmap(lambda a: request_costs(a, one, sp).edge_memory_gb)(acts)

    return jax.vmap(per_elem)(actions, spec)


def run(cfg: Config, out_dir: Path, progress) -> None:
    from lyapunov import registry, simulate
    from lyapunov.traces import shipped_trace_path

    trace = norway_trace(out_dir)
    outage = shipped_trace_path(cfg.outage_trace)
    rows, lat_arrays = [], {}
    # (trace file, device, condition, the condition's name in the tables)
    combos = [(trace, d, c, c) for d in cfg.devices for c in cfg.conditions]
    combos += [(outage, d, c, f"{c}/5g-drive") for d in cfg.devices
               for c in cfg.outage_conditions]
    keys = seed_keys(cfg.seeds)
    ensure_runs(Path(out_dir).parent, cfg.train, progress)
    ckpts = find_checkpoints(cfg, Path(out_dir).parent)
    jobs = [(m, p) for m in cfg.models for p in cfg.policies]
    jobs += [(c[0], label) for label, c in ckpts.items() if c[0] in cfg.models]
    batches = {}
    for model, pname in progress(jobs, desc="policies", total=len(jobs)):
        if pname in ckpts:
            import agents.policy_loader  # noqa: F401  (registers the checkpoint: loader)

            (pol,) = registry.resolve(f"checkpoint:{ckpts[pname][2]}")
        else:
            pol = policy(pname)
        if model not in batches:
            batches[model] = _batches(model, combos, cfg)
        for group, built, batch in batches[model]:
            if pname in ckpts and not any(d == ckpts[pname][1] and ckpts[pname][3] in (None, c)
                                          for _, d, c, _ in group):
                continue  # a trained policy is evaluated where it was trained
            info, actions = rollouts(pol, batch, cfg.n_slots,
                                     jax.numpy.tile(keys, (len(group), 1)))
            mem = np.asarray(_edge_memory(actions, batch.spec))
            for i, (_, device, base_cond, cond) in enumerate(group):
                if pname in ckpts and (device != ckpts[pname][1]
                                       or ckpts[pname][3] not in (None, base_cond)):
                    continue
                lat = np.full((cfg.seeds, cfg.n_slots), np.nan, np.float32)
                for s in range(cfg.seeds):
                    j = i * cfg.seeds + s
                    one = jax.tree.map(lambda x, j=j: x[j], info)
                    summ = simulate.summarize(one, float(built[i].lam_mean), 0.0)
                    ok = one.feasible.astype(bool)
                    lat[s, ok] = one.latency_s[ok]
                    rows.append({"model": model, "device": device, "condition": cond,
                                 "policy": pname, "seed": s,
                                 **{k: v for k, v in summ.items() if k != "decision_time_s"},
                                 "delay_little_s": summ["backlog_mean"]
                                 / max(summ["arrivals_mean"], 1e-9) * cfg.tau_s,
                                 "edge_memory_mean_gb": float(np.mean(mem[j])),
                                 "edge_memory_max_gb": float(np.max(mem[j])),
                                 "mem_budget_gb": float(built[i].spec.edge.mem_budget) / 1e9})
                lat_arrays[f"{model}|{device}|{cond}|{pname}"] = lat
    write_rows(out_dir / "summary.csv", rows)
    np.savez_compressed(out_dir / "latencies.npz", **lat_arrays)
    write_config(out_dir, cfg, experiment=NAME, trace=str(trace.name),
                 outage_trace=cfg.outage_trace,
                 conditions={c: dataclasses.asdict(CONDITIONS[c]) for c in cfg.conditions},
                 checkpoints={k: {"model": v[0], "device": v[1], "path": str(v[2]),
                                  "condition": v[3]} for k, v in ckpts.items()},
                 ours=ours_of([*cfg.policies, *ckpts]))


def _batches(model: str, combos, cfg: Config):
    """[(combos, built params, batch)]: the combos' scenarios in as few batches as stack (one
    per tree structure and leaf shapes: the shipped traces pad to one length, so the Norway
    and the 5G rows are one batch, one compiled rollout per policy), each combo x seed."""
    groups: dict = {}
    for combo in combos:
        tr, d, c, _ = combo
        b = slot_scenario(model, d, CONDITIONS[c], tr, rate=cfg.rate, V=cfg.V,
                          tau_s=cfg.tau_s).build()
        sig = (jax.tree.structure(b), tuple(np.shape(x) for x in jax.tree.leaves(b)))
        groups.setdefault(sig, []).append((combo, b))
    return [([c for c, _ in g], [b for _, b in g], stack([b for _, b in g
                                                         for _ in range(cfg.seeds)]))
            for g in groups.values()]


def find_checkpoints(cfg: Config, out: Path) -> dict[str, tuple]:
    """{label: (training model, training device, directory, training condition or None)} of
    the configured checkpoints that exist (the condition is the name in
    experiments.conditions whose cloud, RTT and share process match the training scenario)."""
    found = {}
    for label, d in cfg.checkpoints:
        for base in (Path(out), Path.cwd()):
            p = Path(d) if Path(d).is_absolute() else base / d
            if (p / "config.json").exists() and (p / "params.npz").exists():
                train = json.loads((p / "config.json").read_text()).get("train") or {}
                sc = train.get("scenario") or {}
                found[label] = (sc.get("model", "llama-7b"), sc.get("device", "rpi5"), p,
                                _condition_of(sc))
                break
    return found


def _condition_of(sc: dict) -> str | None:
    link = sc.get("link") or {}
    share = link.get("share") or {}
    for name, c in CONDITIONS.items():
        if (sc.get("cloud") == c.cloud and link.get("rtt_ms") == c.rtt_ms
                and share.get("kind") == "ar1" and share.get("median_share") == c.share_median
                and share.get("logit_std") == c.share_logit_std):
            return name
    return None


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    run_dir = Path(run_dir)
    rows = read_rows(run_dir / "summary.csv")
    lats = np.load(run_dir / "latencies.npz")
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        devices = list(dict.fromkeys(r["device"] for r in rows if r["model"] == model))
        conds = list(dict.fromkeys(r["condition"] for r in rows if r["model"] == model))
        pols = list(dict.fromkeys(r["policy"] for r in rows if r["model"] == model))
        # CDFs: rows devices, columns conditions.
        fig, axes = plt.subplots(len(devices), len(conds), squeeze=False,
                                 figsize=(3.6 * len(conds), 2.6 * len(devices)))
        for i, d in enumerate(devices):
            for j, c in enumerate(conds):
                ax = axes[i, j]
                for p in pols:
                    if f"{model}|{d}|{c}|{p}" not in lats.files:
                        continue  # a trained policy runs only on its training device
                    x = lats[f"{model}|{d}|{c}|{p}"].ravel()
                    x = np.sort(x[np.isfinite(x)])
                    if x.size:
                        ax.plot(x, np.arange(1, x.size + 1) / x.size, **policy_line(p))
                ax.axhline(0.95, color="grey", lw=0.6, ls=":")
                log_axis(ax, "x")
                ax.set_title(f"{DEVICE_LABEL.get(d, d)}; {c}")
                if i == len(devices) - 1:
                    ax.set_xlabel("request latency (s)")
                if j == 0:
                    ax.set_ylabel("CDF over slots")
        out.append(finish(fig, axes, run_dir / f"latency_cdf_{model}.png",
                          f"{MODEL_LABEL.get(model, model)} on the Norway traces and a 5G drive "
                          "with outages (/5g-drive): latency CDF (dotted line: p95)", ncol=3))
        # p95 with 95% CI over seeds: groups conditions, bars policies.
        fig, axes = plt.subplots(1, len(devices), squeeze=False, figsize=(5.6 * len(devices), 3.4))
        for j, d in enumerate(devices):
            ci = np.array([[finite_mean_ci([r["latency_p95_s"] for r in rows
                                            if (r["model"], r["device"], r["condition"],
                                                r["policy"]) == (model, d, c, p)])[:2]
                            for p in pols] for c in conds])  # [condition, policy, (m, h)]
            grouped_bars(axes[0, j], conds, [policy_line(p)["label"] for p in pols], ci[..., 0],
                         [policy_line(p)["color"] for p in pols], log=True,
                         errors=np.nan_to_num(ci[..., 1]))
            axes[0, j].set_title(DEVICE_LABEL.get(d, d))
            if j == 0:
                axes[0, j].set_ylabel("p95 request latency (s)")
        out.append(finish(fig, axes, run_dir / f"latency_p95_{model}.png",
                          f"{MODEL_LABEL.get(model, model)}: p95 latency on the Norway traces "
                          "and a 5G drive with outages (mean and 95% CI over seeds)", ncol=3))
    return out


EXPERIMENT = Experiment(NAME, 3, "Latency CDF and p95 on the Norway traces and a 5G drive with "
                        "outages", QUICK, FULL, run, plot)
