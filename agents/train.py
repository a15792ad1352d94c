"""Train a partitioning policy with PPO: progress lines, metrics CSV, checkpoints, resume.

A `TrainConfig` is one run (scenario, training traces, PPO, action space, networks, seeds);
`make_train` / `make_segments` bind it to `agents.ppo` on the slot environment
(`agents.slot_env`, with `build_env_params`) unless another `agents.ppo.EnvAdapter` is given.
The reward is minus the slot's drift-plus-penalty (docs/design.md §3, §4.5), or with
`--reward-mode longrun` the long-run objective (penalty plus `--backlog-weight` times backlog,
discounted by `--gamma`; docs/design.md §4.6).

`run(cfg, out)` trains `cfg.num_seeds` seeds at once (vmapped) in jitted segments of
`cfg.log_every` updates; between segments it prints one line (mean reward, DPP, backlog,
latency, entropy, KL, environment steps per second) and at the end writes

    out/metrics.csv           one row per (seed, update): every logged metric
    out/seed<k>/config.json   the checkpoint of seed k (agents.checkpoint), params.npz,
    out/seed<k>/params.npz    train_state.npz (model and optimizer, to resume)
    out/train_config.json     the TrainConfig
    out/summary.json          wall time, compile time, steps per second

`run(cfg, out, resume=out)` continues an interrupted run from its checkpoints (the update
counter and the optimizer state with its schedule position are restored; environments restart
from fresh resets).

The command line (`main`, wired to `splitwise train`) builds a `lyapunov.env.Scenario` from
flags; `--layerwise` trains the layer-wise baseline, `--flat-head` the flat per-head ablation,
`--no-memory` the memoryless ablation (`agents.networks.NetConfig.memory`), and `--mismatch
NAME` trains on an environment whose true costs depart from the nominal model
(`lyapunov.env.Mismatch`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agents import checkpoint, ppo
from agents.actions import ActionConfig
from agents.networks import NetConfig
from agents.ppo import EnvAdapter, PPOConfig, model_from_runner
from agents.slot_env import lyapunov_adapter
from lyapunov.scenario_args import add_scenario_args, scenario_from_args

PROGRESS_KEYS = ("reward", "dpp", "backlog", "latency_s", "entropy", "loss_approx_kl")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run.

    scenario: the slot environment (`lyapunov.env.Scenario`; None: its defaults).
    train_traces: bandwidth traces to train on (paths or shipped names); their per-slot
      values are concatenated and replayed from a random offset, so each environment sees a
      stretch of one of them. Empty: the scenario's own bandwidth process.
    ppo, action, net: PPO hyper-parameters, action space, network sizes.
    num_seeds: independent seeds trained at once (vmapped).
    seed: base seed; seed k of the run uses jax.random.key(seed + k).
    log_every: updates per jitted segment (one progress line and one CSV row per segment).
    """

    scenario: Any = None
    train_traces: tuple[str, ...] = ()
    ppo: PPOConfig = PPOConfig()
    action: ActionConfig = ActionConfig()
    net: NetConfig = NetConfig()
    num_seeds: int = 1
    seed: int = 0
    log_every: int = 10


def build_env_params(cfg: TrainConfig):
    """EnvParams of the config's scenario (with the training traces concatenated)."""
    from lyapunov import env as E
    from lyapunov import processes as pr
    from lyapunov.traces import SHIPPED_TRACES, load_shipped, load_trace, resample

    sc = cfg.scenario if cfg.scenario is not None else E.Scenario()
    params = sc.build()
    if not cfg.train_traces:
        return params
    values = []
    for t in cfg.train_traces:
        trace = load_shipped(t) if t in SHIPPED_TRACES else load_trace(t)
        values.append(resample(trace, sc.tau_s))
    v = np.concatenate(values)
    bw = pr.make_replay_bandwidth(v, offset=None)
    return params.replace(link=params.link.replace(bandwidth=bw),
                          bw_mean_mbps=jnp.float32(v.mean()))


def _env(cfg: TrainConfig, env: EnvAdapter | None, env_params):
    env = env if env is not None else lyapunov_adapter()
    env_params = env_params if env_params is not None else build_env_params(cfg)
    return env, env_params


def make_train(cfg: TrainConfig, env: EnvAdapter | None = None, env_params=None):
    """`agents.ppo.make_train` of the config: train(key) -> (Runner, metrics [num_updates]),
    with `train.setup` and `train.init`. `env`/`env_params` default to the slot environment
    (`agents.slot_env.lyapunov_adapter`) and the config's scenario (`build_env_params`)."""
    env, env_params = _env(cfg, env, env_params)
    return ppo.make_train(cfg.ppo, env, env_params, cfg.action, cfg.net)


def make_segments(cfg: TrainConfig, env: EnvAdapter | None = None, env_params=None):
    """`agents.ppo.make_segments` of the config (segments of `cfg.log_every` updates, vmapped
    over seeds); defaults as in `make_train`."""
    env, env_params = _env(cfg, env, env_params)
    return ppo.make_segments(cfg.ppo, env, env_params, cfg.action, cfg.net, cfg.log_every)


def _take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _fmt(d: dict) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in d.items())


def run(cfg: TrainConfig, out: str | Path | None = None, resume: str | Path | None = None,
        env=None, env_params=None, log=print) -> dict:
    """Train; returns {"runner", "setup", "metrics" (dict of float [S, U]), "summary"}."""
    if cfg.ppo.num_updates % cfg.log_every:
        raise ValueError(f"num_updates ({cfg.ppo.num_updates}) must be a multiple of "
                         f"log_every ({cfg.log_every})")
    t0 = time.perf_counter()
    init, segment, ts = make_segments(cfg, env, env_params)
    keys = jnp.stack([jax.random.key(cfg.seed + k) for k in range(cfg.num_seeds)])
    runner = init(keys)
    start = 0
    if resume is not None:
        runner, start = _resume(runner, resume, cfg.num_seeds)
    jax.block_until_ready(runner)
    n_seg = (cfg.ppo.num_updates - start) // cfg.log_every
    steps_seg = cfg.log_every * cfg.ppo.steps_per_update * cfg.num_seeds
    history: list[dict] = []
    compile_s, run_s = 0.0, 0.0
    for s in range(n_seg):
        t = time.perf_counter()
        runner, m = segment(runner)
        m = jax.tree.map(np.asarray, jax.block_until_ready(m))
        dt = time.perf_counter() - t
        if s == 0:
            compile_s = dt  # includes the first segment's run; see summary
        else:
            run_s += dt
        history.append(m)
        u = start + (s + 1) * cfg.log_every
        last = {k: float(m[k][:, -1].mean()) for k in PROGRESS_KEYS if k in m}
        log(f"update {u}/{cfg.ppo.num_updates} {_fmt(last)} steps/s {steps_seg / dt:.0f}")
    metrics = {k: np.concatenate([h[k] for h in history], axis=1) for k in history[0]} \
        if history else {}
    steady = run_s / max(n_seg - 1, 1)
    summary = {
        "wall_s": time.perf_counter() - t0,
        "first_segment_s": compile_s,
        "steps_per_s": steps_seg / steady if n_seg > 1 and steady > 0 else float("nan"),
        "env_steps_per_seed": cfg.ppo.num_updates * cfg.ppo.steps_per_update,
        "num_seeds": cfg.num_seeds,
    }
    if out is not None:
        _write(Path(out), cfg, ts, runner, metrics, start, summary)
    return {"runner": runner, "setup": ts, "metrics": metrics, "summary": summary}


def _write(out: Path, cfg, ts, runner, metrics, start, summary):
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(config_to_json(cfg), indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if metrics:
        keys = sorted(metrics)
        mode = "a" if start and (out / "metrics.csv").exists() else "w"
        with open(out / "metrics.csv", mode, newline="") as f:
            w = csv.writer(f)
            if mode == "w":
                w.writerow(["seed", "update", *keys])
            n_s, n_u = metrics[keys[0]].shape
            for s in range(n_s):
                for u in range(n_u):
                    w.writerow([cfg.seed + s, start + u + 1,
                                *(f"{metrics[k][s, u]:.6g}" for k in keys)])
    for s in range(cfg.num_seeds):
        nets = _take(runner.nets, s)
        checkpoint.save(out / f"seed{s}", model_from_runner(ts, nets), cfg.net, ts.shapes,
                        config_to_json(cfg), meta={"seed": cfg.seed + s,
                                                   "update": int(runner.update[s])},
                        train_state=nets)


def _resume(runner, path, num_seeds):
    path = Path(path)
    nets, updates = [], []
    for s in range(num_seeds):
        d = path / f"seed{s}"
        nets.append(checkpoint.load_train_state(d, _take(runner.nets, s)))
        updates.append(int(checkpoint.read_config(d)["meta"]["update"]))
    if len(set(updates)) != 1:
        raise checkpoint.CheckpointError(f"{path}: seeds stopped at different updates {updates}")
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *nets)
    return runner.replace(nets=stacked, update=jnp.full((num_seeds,), updates[0], jnp.int32)), \
        updates[0]


def _registered(x) -> bool:
    from costmodel.cards import CARDS
    from costmodel.profiles import PROFILES

    reg = CARDS if type(x).__name__ == "ModelCard" else PROFILES
    return reg.get(x.name) == x


def config_to_json(cfg: TrainConfig) -> dict:
    """A JSON-able dict of a TrainConfig (the scenario by its fields; a model card or device
    profile by name when it is the registered one, else by its fields)."""
    def conv(x):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            if type(x).__name__ in ("ModelCard", "DeviceProfile"):
                if _registered(x):
                    return x.name
                return {"__type__": type(x).__name__,
                        **{f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}}
            if type(x).__name__ == "AccuracyProfile":
                return "custom"
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, tuple | list):
            return [conv(v) for v in x]
        if isinstance(x, float) and math.isinf(x):
            return "inf"
        return x

    return conv(cfg)


def config_from_json(d: dict) -> TrainConfig:
    """Inverse of config_to_json (for configs whose scenario uses registered names)."""
    from costmodel.cards import ModelCard
    from costmodel.outage import RetryConfig
    from costmodel.profiles import DeviceProfile
    from lyapunov import processes as pr
    from lyapunov.env import Mismatch, Scenario

    def fl(v):
        if isinstance(v, dict) and "__type__" in v:
            kind = {"ModelCard": ModelCard, "DeviceProfile": DeviceProfile}[v["__type__"]]
            return kind(**{k: fl(x) for k, x in v.items() if k != "__type__"})
        return math.inf if v == "inf" else v

    def tup(v):
        return tuple(tuple(r) if isinstance(r, list) else r for r in v)

    sc = d.get("scenario")
    scenario = None
    if sc is not None:
        sc = {k: fl(v) for k, v in sc.items()}
        link = dict(sc["link"])
        bw = {k: (tup(v) if isinstance(v, list) else v) for k, v in link["bandwidth"].items()}
        share = {k: (tup(v) if isinstance(v, list) else v) for k, v in link["share"].items()}
        link.update(bandwidth=pr.BandwidthConfig(**bw), share=pr.ShareConfig(**share))
        sc.update(arrival=pr.ArrivalConfig(**sc["arrival"]), link=pr.LinkConfig(**link),
                  precisions=tuple(sc["precisions"]))
        if "retry" in sc:
            sc["retry"] = RetryConfig(**sc["retry"])
        if "mismatch" in sc:
            mm = dict(sc["mismatch"])
            sc["mismatch"] = Mismatch(**{**mm, "kinds": tuple(mm.get("kinds", ()))})
        if sc.get("accuracy") == "custom":
            raise ValueError("a scenario with a custom accuracy profile cannot be rebuilt "
                             "from JSON")
        scenario = Scenario(**sc)
    return TrainConfig(
        scenario=scenario, train_traces=tuple(d.get("train_traces", ())),
        ppo=PPOConfig(**d["ppo"]), action=ActionConfig(**d["action"]),
        net=NetConfig(**d["net"]), num_seeds=d["num_seeds"], seed=d["seed"],
        log_every=d["log_every"])


# --------------------------------------------------------------------------------------------
# Command line


def add_args(ap: argparse.ArgumentParser) -> None:
    add_scenario_args(ap)
    ap.add_argument("--steps", type=int, default=200_000,
                    help="environment steps per seed (rounded to whole segments)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds trained at once (vmapped)")
    ap.add_argument("--seed", type=int, default=0, help="first random seed")
    ap.add_argument("--out", required=True,
                    help="run directory to write (seed<k>/ checkpoints, metrics.csv)")
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--layerwise", action="store_true", help="layer-wise DRL baseline")
    kind.add_argument("--flat-head", action="store_true", help="flat per-head ablation")
    ap.add_argument("--no-memory", action="store_true",
                    help="memoryless ablation: the networks see the current scalars only, not "
                         "the window of past slots (NetConfig.memory)")
    ap.add_argument("--groups", type=int, default=4,
                    help="layer groups the high level decides (count)")
    ap.add_argument("--head-bins", type=int, default=9,
                    help="head-count choices per group of the low level (count)")
    ap.add_argument("--num-envs", type=int, default=16,
                    help="parallel environments per PPO update (count)")
    ap.add_argument("--num-steps", type=int, default=32,
                    help="slots per environment per PPO update (count)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--gamma", type=float, default=0.0,
                    help="discount per slot, in [0, 1] (0: the per-slot DPP reward)")
    ap.add_argument("--reward-mode", default=None, choices=("relative", "dpp", "longrun"),
                    help="relative, dpp: the per-slot drift-plus-penalty; longrun: the "
                         "long-run objective, penalty + backlog weight x backlog, discounted "
                         "by --gamma (< 1; use e.g. 0.99). Default: relative for gamma = 0, "
                         "dpp otherwise")
    ap.add_argument("--backlog-weight", type=float, default=None,
                    help="longrun reward's cost of backlog, penalty units per request waiting "
                         "per slot (> 0; default 1 / V)")
    ap.add_argument("--episode-slots", type=int, default=256,
                    help="slots before an environment resets (training only)")
    ap.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus coefficient")
    ap.add_argument("--log-every", type=int, default=10,
                    help="PPO updates per logged segment (count)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")


def config_from_args(args) -> TrainConfig:
    kind = "layerwise" if args.layerwise else "flat_head" if args.flat_head else "hier"
    per_update = args.num_envs * args.num_steps
    n = max(1, round(args.steps / per_update / args.log_every)) * args.log_every
    scenario = dataclasses.replace(scenario_from_args(args, args.trace[0] if args.trace else None),
                                   episode_slots=args.episode_slots)
    mode = args.reward_mode or ("relative" if args.gamma == 0 else "dpp")
    return TrainConfig(
        scenario=scenario, train_traces=tuple(args.trace),
        ppo=PPOConfig(num_envs=args.num_envs, num_steps=args.num_steps, num_updates=n,
                      lr=args.lr, gamma=args.gamma, ent_coef=args.ent_coef, reward_mode=mode,
                      backlog_weight=args.backlog_weight),
        action=ActionConfig(kind=kind, n_groups=args.groups, head_bins=args.head_bins),
        net=NetConfig(memory=not getattr(args, "no_memory", False)),
        num_seeds=args.seeds, seed=args.seed, log_every=args.log_every)


def cli(args) -> int:
    cfg = config_from_args(args)
    out = Path(args.out)
    res = run(cfg, out, resume=out if args.resume else None,
              log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(res["summary"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitwise train", description=__doc__.split("\n")[0],
                                 allow_abbrev=False)
    add_args(ap)
    return cli(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
