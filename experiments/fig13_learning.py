"""Figure 13: where does learning pay? The learners against the best causal planner (dp-bayes)
under the exact model and under each model mismatch (docs/design.md §4.1, §4.5;
`lyapunov.env.Mismatch`).

Policies: the clairvoyant oracle (bound), dp-bayes (expected DPP under the predictive link
law: the yardstick), dp-estimate, best-cut, and the trained learners: hierarchical PPO with
memory (the window of past slots), without it (`NetConfig.memory=False`), and layer-wise PPO.
Conditions: "exact" (the planners' model is the environment's) and each mismatch alone; the
planners always plan with the nominal model, the learners train on the environment's rewards
in the condition they are evaluated in. Beside them "exact-tp-lan" (issue (b)): the exact
model in the tensor-parallel option space (docs/design.md §2.8) on a LAN condition
(`experiments.conditions.LAN_CONDITIONS`, default "lan-peer-gbe": an Orin NX peer on wired
Gigabit Ethernet, bandwidth a log AR(1) process, fp16/int8 exchanges only) where the oracle's
partition is interior (tensor parallel) on every slot; on Wi-Fi 6 ("lan-peer") it is so on few.

Evaluation: LLaMA-7B on the Orin NX against a contended datacenter GPU, on bandwidth traces
not used in training (a Norway trace and the 5G drive trace with outages), `seeds` seeds each,
common random numbers; the unit of the 95% t-intervals is one (trace, seed) rollout, and the
gaps are paired over them. Learners are trained on the other three Norway traces (one training
seed); a run already in `<out>/learning_train/<condition>/<learner>/` is used as it is. In the
LAN condition the bandwidth is the condition's process: the units are `seeds` rollouts of it
(trace column: the condition's name), on seeds other than the learners' training seeds.

The quick mode trains the hierarchical learner only, briefly (4096 environment steps), in the
exact and the profile-error rows (so that it stays cheap and the demo's table has learner
rows; the LAN row has the oracle alone); a longer run put in `learning_train/` is used as it
is. Writes `learning.csv` (one row per policy, condition, trace,
seed, with the share of its slots whose partition is interior, all-edge, all-cloud, or uses a
tp layer: `experiments.sim.partition_kinds`), `learning_summary.csv` (per policy and
condition: mean DPP with its CI, the paired gap to dp-bayes and to the oracle in % with CIs,
whether the policy beats every planner, and its mean interior and tp shares) and
`learning.png`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from experiments.catalog import Experiment
from experiments.common import stack
from experiments.conditions import condition
from experiments.plotting import finish, policy_line, pyplot
from experiments.sim import partition_kinds, seed_keys, slot_scenario
from experiments.stats import mean_ci
from experiments.tables import read_rows, write_config, write_rows

NAME = "learning"
PLANNERS = ("oracle", "dp-bayes", "dp-estimate", "best-cut")
CAUSAL_PLANNERS = ("dp-bayes", "dp-estimate", "best-cut")
# label -> (action kind, memory)
LEARNERS = {"hier": ("hier", True), "hier-nomem": ("hier", False),
            "layerwise": ("layerwise", True)}
LAN = "exact-tp-lan"  # the condition row of the LAN condition in the tp space


@dataclasses.dataclass(frozen=True)
class Config:
    """model, device, cloud_condition, rate, V: the scenario (experiments.conditions);
    conditions: "exact" and mismatch names (lyapunov.env.MISMATCHES);
    train_traces, eval_traces: disjoint shipped traces; n_slots, seeds: evaluation rollouts per
    trace; learners: labels of LEARNERS; train_steps: PPO environment steps per learner (0:
    train nothing, use existing runs only); num_envs, num_steps, log_every: PPO rollout shape;
    solver_units: the solvers' memory sweep (0: off, as in the other slot figures);
    bayes_draws: dp-bayes's (bandwidth, share) nodes of the predictive law;
    lan: the LAN condition (`experiments.conditions.LAN_CONDITIONS`) of the "exact-tp-lan" row,
    with cfg.model and cfg.device at the edge ("": no such row); planners: the PLANNERS
    evaluated (each is one compilation per trace; dp-bayes is the yardstick of the gaps, the
    oracle the bound); lan_planners: those of them evaluated there too (each is one more
    compilation in the tp space, 72-74 s each on the 2 shared cores under load: the quick
    mode keeps the oracle, for its interior share); learner_conditions: the condition rows
    the learners are trained and evaluated in (None: every row, the LAN row included)."""

    model: str = "llama-7b"
    device: str = "orin-nx"
    cloud_condition: str = "dc-contended"
    rate: float = 0.3
    V: float = 10.0
    conditions: tuple[str, ...] = ("exact", "profile-error", "throttling", "diurnal",
                                   "msg-overhead")
    train_traces: tuple[str, ...] = ("norway_bus_1", "norway_car_1", "norway_metro_1")
    eval_traces: tuple[str, ...] = ("norway_ferry_1", "fivegophers_verizon_drive_2")
    n_slots: int = 500
    seeds: int = 5
    learners: tuple[str, ...] = tuple(LEARNERS)
    train_steps: int = 65536
    num_envs: int = 16
    num_steps: int = 32
    log_every: int = 8
    solver_units: int = 0
    bayes_draws: tuple[int, int] = (4, 3)
    lan: str = "lan-peer-gbe"
    planners: tuple[str, ...] = PLANNERS
    lan_planners: tuple[str, ...] = PLANNERS
    learner_conditions: tuple[str, ...] | None = None


QUICK = Config(conditions=("exact", "profile-error"), n_slots=60, seeds=2, train_steps=4096,
               num_envs=8, num_steps=32, log_every=8, learners=("hier",),
               learner_conditions=("exact", "profile-error"),
               eval_traces=("fivegophers_verizon_drive_2",),
               lan_planners=("oracle",))
FULL = Config()


def scenario(cfg: Config, cond: str, bw):
    """The Scenario of condition row `cond` (bandwidth `bw`; the LAN row: its own process)."""
    from lyapunov.env import mismatch_of

    if cond == LAN:
        lan = condition(cfg.lan)
        return slot_scenario(cfg.model, cfg.device, lan, None, rate=cfg.rate, V=cfg.V,
                             bw=lan.bandwidth(), tp=lan.tp, precisions=lan.precisions)
    kinds = () if cond == "exact" else (cond,)
    return slot_scenario(cfg.model, cfg.device, condition(cfg.cloud_condition), None,
                         rate=cfg.rate, V=cfg.V, bw=bw, mismatch=mismatch_of(kinds))


def _trace_bw(name: str):
    from lyapunov import processes as proc
    from lyapunov.traces import shipped_trace_path

    return proc.BandwidthConfig(kind="trace", trace_path=str(shipped_trace_path(name)))


def train_dir(out: Path, cond: str, label: str) -> Path:
    return Path(out) / "learning_train" / cond / label


def ensure_learner(cfg: Config, out: Path, cond: str, label: str, log=None) -> Path | None:
    """The run directory of `label` trained in `cond` (trained when missing and
    cfg.train_steps > 0); None when there is none."""
    from experiments.training import has_run

    d = train_dir(out, cond, label)
    if has_run(d):
        return d
    if cfg.train_steps <= 0:
        return None
    from agents.actions import ActionConfig
    from agents.networks import NetConfig
    from agents.ppo import PPOConfig
    from agents.train import TrainConfig
    from agents.train import run as train_run

    kind, memory = LEARNERS[label]
    # the LAN row trains on its own bandwidth process, the others on the training traces
    traces = () if cond == LAN else tuple(cfg.train_traces)
    sc = dataclasses.replace(scenario(cfg, cond, _trace_bw(cfg.train_traces[0])),
                             episode_slots=256)
    per_update = cfg.num_envs * cfg.num_steps
    n = max(1, round(cfg.train_steps / per_update / cfg.log_every)) * cfg.log_every
    tcfg = TrainConfig(scenario=sc, train_traces=traces,
                       ppo=PPOConfig(num_envs=cfg.num_envs, num_steps=cfg.num_steps,
                                     num_updates=n),
                       action=ActionConfig(kind=kind), net=NetConfig(memory=memory),
                       num_seeds=1, log_every=cfg.log_every)
    d.mkdir(parents=True, exist_ok=True)
    with (d / "train.log").open("w") as fh:
        train_run(tcfg, d, log=lambda s: print(s, file=fh, flush=True))
    return d


def _rows(info, actions, n_heads, policy, units, cond):
    out = []
    kinds = partition_kinds(actions, n_heads)
    for i, (trace, seed) in enumerate(units):
        ok = info.feasible[i].astype(bool)
        out.append({"policy": policy, "condition": cond, "trace": trace, "seed": seed,
                    "dpp": float(np.mean(info.dpp[i])),
                    "penalty": float(np.mean(info.penalty[i])),
                    "latency_s": float(np.mean(info.latency_s[i][ok])) if ok.any() else np.nan,
                    "backlog": float(np.mean(info.backlog[i])),
                    "failure_frac": float(np.sum(info.failed[i])
                                          / max(np.sum(info.failed[i] + info.service[i]),
                                                1e-9)),
                    **{f"{k}_share": float(np.mean(v[i])) for k, v in kinds.items()}})
    return out


def run(cfg: Config, out_dir: Path, progress) -> None:
    import time

    from agents import checkpoint
    from agents.policy_loader import learned_policy
    from lyapunov import registry
    from lyapunov.simulate import batched_rollout

    for field in ("planners", "lan_planners"):
        bad = [p for p in getattr(cfg, field) if p not in PLANNERS]
        if bad:
            raise ValueError(f"learning: {field} {bad} not in {PLANNERS}")
    out_dir = Path(out_dir)
    results = out_dir.parent
    keys = np.asarray(seed_keys(cfg.seeds))
    # Replayed traces differ in length (one pytree shape per trace): one batch per trace, of
    # every condition x seed (one compilation per policy and trace).
    params = {(c, t): scenario(cfg, c, _trace_bw(t)).build()
              for c in cfg.conditions for t in cfg.eval_traces}
    if cfg.lan:
        # the LAN row: one params (its own bandwidth process) shared by its seeds
        params[(LAN, cfg.lan)] = scenario(cfg, LAN, None).build()
    n_heads = next(iter(params.values())).spec.n_heads
    n_c, n_s = len(cfg.conditions), cfg.seeds
    rows, timing = [], {}
    for name in progress(cfg.planners, desc="planners", total=len(cfg.planners)):
        kw = {"units": cfg.solver_units} if name in ("oracle", "dp-estimate", "dp-bayes") else {}
        if name == "dp-bayes":
            kw.update(n_bw=cfg.bayes_draws[0], n_share=cfg.bayes_draws[1])
        (pol,) = registry.resolve(name, **kw)
        t0 = time.perf_counter()
        for t in cfg.eval_traces if cfg.conditions else ():  # (conditions=(): the LAN row only)
            batch = stack([params[(c, t)] for c in cfg.conditions for _ in range(n_s)])
            # dp-bayes solves K slot problems per slot: its rollouts run one after another
            # (a vmapped batch waits for its slowest member at every solver iteration)
            info, actions = batched_rollout(pol, batch, cfg.n_slots,
                                            np.concatenate([keys] * n_c),
                                            vectorize=name != "dp-bayes")[:2]
            for ci, c in enumerate(cfg.conditions):
                part = jax.tree.map(lambda x, ci=ci: x[ci * n_s:(ci + 1) * n_s],
                                    (info, actions))
                rows += _rows(*part, n_heads, name, [(t, s) for s in range(n_s)], c)
        timing[name] = time.perf_counter() - t0
        if cfg.lan and name in cfg.lan_planners:  # (a LAN planner not in planners: not run)
            t0 = time.perf_counter()
            info, actions = batched_rollout(pol, params[(LAN, cfg.lan)], cfg.n_slots, keys,
                                            vectorize=name != "dp-bayes",
                                            shared_params=True)[:2]
            rows += _rows(info, actions, n_heads, name, [(cfg.lan, s) for s in range(n_s)],
                          LAN)
            timing[f"{name}/{LAN}"] = time.perf_counter() - t0
    trained = {}
    conds = tuple(cfg.conditions) + ((LAN,) if cfg.lan else ())
    if cfg.learner_conditions is not None:
        conds = tuple(c for c in conds if c in cfg.learner_conditions)
    for label in progress(cfg.learners, desc="learners", total=len(cfg.learners)):
        for c in conds:
            t0 = time.perf_counter()
            d = ensure_learner(cfg, results, c, label)
            if d is None:
                continue
            trained[(label, c)] = str(d)
            model, conf = checkpoint.load_model(d / "seed0")
            pol = learned_policy(model, f"{label}", shapes=tuple(conf["shapes"]))
            for t in ((cfg.lan,) if c == LAN else cfg.eval_traces):
                info, actions, _ = batched_rollout(pol, params[(c, t)], cfg.n_slots, keys,
                                                   shared_params=True)
                rows += _rows(info, actions, n_heads, label, [(t, s) for s in range(n_s)], c)
            timing[f"{label}/{c}"] = time.perf_counter() - t0
    write_rows(out_dir / "learning.csv", rows)
    write_rows(out_dir / "learning_summary.csv", summarize(rows))
    write_config(out_dir, cfg, experiment=NAME, runs={f"{k[0]}/{k[1]}": v
                                                      for k, v in trained.items()},
                 seconds={k: round(v, 1) for k, v in timing.items()})


def summarize(rows: list[dict]) -> list[dict]:
    """Per (condition, policy): mean DPP and its 95% CI over the (trace, seed) units, the
    paired gaps to the oracle, dp-bayes and dp-estimate (%, with CIs: (x - ref) / |ref| per
    unit; where the reference ran), and
    for a learner whether its upper CI bound of the gap to every causal planner is below 0; the
    mean shares of slots with an interior partition and with a tp layer."""
    out = []
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    for c in conds:
        sel = [r for r in rows if r["condition"] == c]
        by = {}
        for r in sel:
            by.setdefault(r["policy"], {})[(r["trace"], r["seed"])] = r["dpp"]
        units = sorted(by.get("oracle", next(iter(by.values()))))

        def vec(p, units=units, by=by):
            return np.array([by[p][u] for u in units], float)

        for p in by:
            x = vec(p)
            m, h = mean_ci(x)
            row = {"condition": c, "policy": p, "n": len(x), "dpp_mean": float(m),
                   "dpp_ci": float(h)}
            for ref in ("oracle", "dp-bayes", "dp-estimate"):
                if ref in by:
                    g, gh = mean_ci(100.0 * (x - vec(ref)) / np.abs(vec(ref)))
                    row[f"gap_{ref}_pct"] = float(g)
                    row[f"gap_{ref}_ci"] = float(gh)
            beats = []
            for ref in CAUSAL_PLANNERS:
                if ref in by and ref != p:
                    g, gh = mean_ci(100.0 * (x - vec(ref)) / np.abs(vec(ref)))
                    beats.append(g + gh < 0)
            row["beats_every_planner"] = bool(beats) and all(beats)
            for k in ("interior", "tp"):
                if f"{k}_share" in sel[0]:
                    row[f"{k}_share"] = float(np.mean([r[f"{k}_share"] for r in sel
                                                       if r["policy"] == p]))
            out.append(row)
    return out


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    run_dir = Path(run_dir)
    summ = read_rows(run_dir / "learning_summary.csv")
    conds = list(dict.fromkeys(r["condition"] for r in summ))
    pols = list(dict.fromkeys(r["policy"] for r in summ))
    fig, axes = plt.subplots(1, 1, figsize=(max(6.0, 1.6 * len(conds) + 2), 3.6),
                             squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / max(len(pols), 1)
    for j, p in enumerate(pols):
        xs, ys, es = [], [], []
        for i, c in enumerate(conds):
            r = [x for x in summ if x["condition"] == c and x["policy"] == p]
            gap = r[0].get("gap_dp-bayes_pct") if r else None
            if gap is None or not np.isfinite(float(gap)):
                continue  # no dp-bayes in that row (the quick LAN row runs the oracle only)
            ci = r[0].get("gap_dp-bayes_ci")
            xs.append(i + (j - (len(pols) - 1) / 2) * width)
            ys.append(float(gap))
            es.append(float(ci) if ci is not None and np.isfinite(float(ci)) else 0.0)
        line = policy_line(p)
        ax.bar(xs, ys, width, yerr=es, capsize=2, color=line.get("color") or f"C{j}",
               label=p)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(conds)), conds)
    ax.set_ylabel("time-average DPP vs dp-bayes (%)")
    ax.set_title("Held-out traces, 95% CIs (paired over trace x seed)")
    return [finish(fig, axes, run_dir / "learning.png",
                   "Where learning pays: learners vs the planners, exact model, mismatch, tp LAN",
                   ncol=4)]


EXPERIMENT = Experiment(NAME, 13, "Learners vs dp-bayes under the exact model and mismatch",
                        QUICK, FULL, run, plot)
