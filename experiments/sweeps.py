"""Request-level sweeps shared by figures 1, 2, 6, 7, 8 and 11: every strategy's costs for
models x devices x conditions x bandwidths, from the cost model only (no queues), at each
condition's median cloud share (`experiments.conditions`).

Results are memoized in-process, so running several of these figures in one `run_figures` call
evaluates each (model, device, condition, bandwidth) once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from costmodel.dp import Weights
from experiments.catalog import identity_progress
from experiments.common import (
    DEVICES,
    MODELS,
    evaluate_links,
    get_spec,
    links,
    stack,
    strategy_rows,
)
from experiments.conditions import NAMES, condition
from experiments.tables import read_rows, write_config, write_rows
from lyapunov.policies import JOINT_ACCURACY_S_PER_PCT, JOINT_ENERGY_S_PER_J

_CACHE: dict = {}
TUNED = ("best-layer-cut", "best-headwise")  # the strategies an objective changes
OBJECTIVES = {"latency": Weights(), "energy": Weights(latency=0.0, energy=1.0),
              "joint": Weights(latency=1.0, energy=JOINT_ENERGY_S_PER_J,
                               accuracy=JOINT_ACCURACY_S_PER_PCT)}


@dataclasses.dataclass(frozen=True)
class PointConfig:
    """Strategies compared at fixed link conditions.

    models, devices: model cards and edge profiles.
    conditions: names of experiments.conditions.CONDITIONS (cloud, RTT, median cloud share).
    bw_mbps: bandwidths (Mbit/s) at which the strategies are compared (the plots show the
      lowest).
    """

    models: tuple[str, ...] = MODELS
    devices: tuple[str, ...] = DEVICES
    conditions: tuple[str, ...] = NAMES
    bw_mbps: tuple[float, ...] = (20.0,)


QUICK_POINT = PointConfig()
FULL_POINT = PointConfig(bw_mbps=(5.0, 20.0, 100.0))


def request_sweep(models, devices, conditions, bw_mbps, objective: str = "latency",
                  progress=identity_progress) -> list[dict]:
    """Long-format rows (one per model, device, condition, bandwidth, strategy).

    objective: "latency" (the default weights), "energy" (the best layer cut and the DP
    minimize edge energy instead) or "joint" (latency + JOINT_ENERGY_S_PER_J x energy +
    JOINT_ACCURACY_S_PER_PCT x accuracy drop: the penalty of the dp-joint policy); edge-only
    and cloud-only are unchanged."""
    key = (tuple(models), tuple(devices), tuple(conditions), tuple(float(b) for b in bw_mbps),
           objective)
    if key in _CACHE:
        return _CACHE[key]
    rows = []
    bw = np.asarray(bw_mbps, np.float32)
    combos = [(d, condition(c)) for d in devices for c in conditions]
    for model in progress(models, desc=f"{objective} sweep", total=len(models)):
        # One batch per model: every (device, condition, bandwidth) as data.
        specs = [get_spec(model, d, c.cloud) for d, c in combos for _ in bw]
        rtt = np.repeat([c.rtt_ms for _, c in combos], len(bw))
        share = np.repeat([c.share_median for _, c in combos], len(bw))
        costs, extra = evaluate_links(stack(specs), links(np.tile(bw, len(combos)), rtt, share),
                                      OBJECTIVES[objective])
        base = {"model": model,
                "device": np.repeat([d for d, _ in combos], len(bw)),
                "condition": np.repeat([c.name for _, c in combos], len(bw)),
                "cloud": np.repeat([c.cloud for _, c in combos], len(bw)),
                "rtt_ms": rtt, "cloud_share": share, "bw_mbps": np.tile(bw, len(combos)),
                "objective": objective}
        rows += strategy_rows(costs, extra, base)
    _CACHE[key] = rows
    return rows


def point_rows(cfg: PointConfig, progress=identity_progress, objective: str = "latency"):
    return request_sweep(cfg.models, cfg.devices, cfg.conditions, cfg.bw_mbps, objective,
                         progress)


def conditions_json(names) -> dict:
    """{name: the condition as a dict}, for config.json."""
    return {c: dataclasses.asdict(condition(c)) for c in names}


def write_table(out_dir: Path, file: str, rows, cfg, experiment: str, **extra) -> None:
    """The figure's rows and its config.json (with the conditions' numbers)."""
    write_rows(Path(out_dir) / file, rows)
    write_config(out_dir, cfg, experiment=experiment,
                 conditions=conditions_json(cfg.conditions), **extra)


def read_lowest_bandwidth(run_dir: Path, file: str) -> tuple[list[dict], float]:
    """(rows at the lowest bandwidth of the table, that bandwidth)."""
    rows = read_rows(Path(run_dir) / file)
    bw = min(r["bw_mbps"] for r in rows)
    return [r for r in rows if r["bw_mbps"] == bw], bw
