"""Training runs the figures read (figures 3 and 10): the hierarchical and the layer-wise PPO
agents on one queue-level condition, trained with `agents.train.run` when no run exists in
`<out>/train/<kind>/` (a run put there by hand, e.g. a longer one, is used as it is).

A run of the same kind from the command line (its share floor and RTT jitter are the CLI's):

    splitwise train --model llama-7b --device orin-nx --trace norway_bus_1 norway_car_1 \
        norway_ferry_1 norway_metro_1 --share 0.02 --share-logit-std 1.5 --arrival-rate 0.3 \
        --steps 8192 --num-envs 8 --num-steps 32 --log-every 4 --out results/train/hier
        # (and --layerwise --out results/train/layerwise)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments.conditions import condition
from experiments.sim import slot_scenario

KINDS = ("hier", "layerwise")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """model, device, condition: the training scenario (a name of experiments.conditions; the
    four Norway traces); rate, V, tau_s: arrivals per slot, DPP weight, slot length (s);
    steps: environment steps per seed; num_envs, num_steps: PPO rollout shape; log_every:
    updates per logged segment; seeds: seeds trained at once."""

    model: str = "llama-7b"
    device: str = "orin-nx"
    condition: str = "dc-contended"
    rate: float = 0.3
    V: float = 10.0
    tau_s: float = 2.0
    steps: int = 200_000
    num_envs: int = 16
    num_steps: int = 32
    log_every: int = 10
    seeds: int = 1


QUICK_TRAIN = TrainSpec(steps=8192, num_envs=8, num_steps=32, log_every=4)
FULL_TRAIN = TrainSpec()


def has_run(d: Path) -> bool:
    return ((d / "metrics.csv").exists() and (d / "train_config.json").exists()
            and (d / "seed0" / "params.npz").exists())


def ensure_runs(out: Path, spec: TrainSpec | None, progress,
                kinds: tuple[str, ...] = KINDS) -> dict[str, Path]:
    """{kind: run directory} under <out>/train, training the missing ones of ``kinds`` when
    `spec` is given; only the runs that exist afterwards."""
    out = Path(out)
    runs = {k: out / "train" / k for k in KINDS}
    missing = [k for k, d in runs.items() if not has_run(d) and k in kinds]
    if missing and spec is not None:
        from lyapunov.traces import NORWAY_TRACES

        sc = slot_scenario(spec.model, spec.device, condition(spec.condition), None,
                           rate=spec.rate, V=spec.V, tau_s=spec.tau_s,
                           bw=trace_bandwidth(NORWAY_TRACES[0]))
        for kind in progress(missing, desc="training agents", total=len(missing)):
            train_agent(runs[kind], sc, kind, spec, tuple(NORWAY_TRACES))
    return {k: d for k, d in runs.items() if has_run(d)}


def train_agent(run_dir: Path, scenario, kind: str, spec: TrainSpec,
                traces: tuple[str, ...]) -> None:
    """Train one agent of ``kind`` ("hier", "layerwise") on ``scenario`` (the traces'
    bandwidth) with ``spec``'s sizes into ``run_dir`` (its log in ``train.log``)."""
    from agents.actions import ActionConfig
    from agents.ppo import PPOConfig
    from agents.train import TrainConfig
    from agents.train import run as train_run

    per_update = spec.num_envs * spec.num_steps
    n = max(1, round(spec.steps / per_update / spec.log_every)) * spec.log_every
    cfg = TrainConfig(scenario=scenario, train_traces=traces,
                      ppo=PPOConfig(num_envs=spec.num_envs, num_steps=spec.num_steps,
                                    num_updates=n),
                      action=ActionConfig(kind=kind), num_seeds=spec.seeds,
                      log_every=spec.log_every)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "train.log").open("w") as fh:
        train_run(cfg, run_dir, log=lambda s: print(s, file=fh, flush=True))


def trace_bandwidth(name: str):
    from lyapunov import processes as proc
    from lyapunov.traces import shipped_trace_path

    return proc.BandwidthConfig(kind="trace", trace_path=str(shipped_trace_path(name)))
