"""Request-level sweeps shared by figures 1, 2, 6, 7, 8 and 11: every strategy's costs for
models x devices x scenarios x bandwidths, from the cost model only (no queues).

Results are memoized in-process, so running several of these figures in one `run_figures` call
evaluates each (model, device, scenario, bandwidth) once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from costmodel.dp import Weights
from costmodel.strategies import STRATEGIES
from experiments.common import (
    DEVICES,
    JOINT_ACCURACY_S_PER_PCT,
    JOINT_ENERGY_S_PER_J,
    MODELS,
    evaluate_links,
    get_spec,
    identity_progress,
    links,
    scenario,
    stack,
    strategy_rows,
)

_CACHE: dict = {}


@dataclasses.dataclass(frozen=True)
class PointConfig:
    """Strategies compared at fixed link conditions.

    models, devices: model cards and edge profiles.
    scenarios: names of experiments.common.SCENARIOS (cloud, RTT, cloud share).
    bw_mbps: bandwidths (Mbit/s) at which the strategies are compared.
    """

    models: tuple[str, ...] = MODELS
    devices: tuple[str, ...] = DEVICES
    scenarios: tuple[str, ...] = ("dc-idle", "dc-contended", "mec-contended")
    bw_mbps: tuple[float, ...] = (20.0,)


def request_sweep(models, devices, scenarios, bw_mbps, objective: str = "latency",
                  progress=identity_progress) -> list[dict]:
    """Long-format rows (one per model, device, scenario, bandwidth, strategy).

    objective: "latency" (the default weights), "energy" (the best layer cut and the DP
    minimize edge energy instead) or "joint" (latency + JOINT_ENERGY_S_PER_J x energy +
    JOINT_ACCURACY_S_PER_PCT x accuracy drop); edge-only and cloud-only are unchanged."""
    w = {"latency": Weights(), "energy": Weights(latency=0.0, energy=1.0),
         "joint": Weights(latency=1.0, energy=JOINT_ENERGY_S_PER_J,
                          accuracy=JOINT_ACCURACY_S_PER_PCT)}[objective]
    key = (tuple(models), tuple(devices), tuple(scenarios), tuple(float(b) for b in bw_mbps),
           objective)
    if key in _CACHE:
        return _CACHE[key]
    rows = []
    bw = np.asarray(bw_mbps, np.float32)
    for model in progress(models, desc=f"{objective} sweep", total=len(models)):
        # One batch per model: every (device, scenario, bandwidth) as data (privacy floors,
        # which change the static shape, get their own batch).
        groups: dict[int, list] = {}
        for device in devices:
            for sname in scenarios:
                sc = scenario(sname)
                groups.setdefault(sc.privacy_layers, []).append((device, sc))
        for priv, combos in groups.items():
            specs = [get_spec(model, d, sc.cloud, priv) for d, sc in combos for _ in bw]
            rtt = np.repeat([sc.rtt_ms for _, sc in combos], len(bw))
            share = np.repeat([sc.cloud_share for _, sc in combos], len(bw))
            costs, extra = evaluate_links(stack(specs), links(np.tile(bw, len(combos)), rtt,
                                                               share), w)
            base = {"model": model,
                    "device": np.repeat([d for d, _ in combos], len(bw)),
                    "scenario": np.repeat([sc.name for _, sc in combos], len(bw)),
                    "cloud": np.repeat([sc.cloud for _, sc in combos], len(bw)),
                    "rtt_ms": rtt, "cloud_share": share, "bw_mbps": np.tile(bw, len(combos)),
                    "objective": objective}
            rows += strategy_rows(costs, extra, base)
    _CACHE[key] = rows
    return rows


def point_rows(cfg: PointConfig, progress=identity_progress, objective: str = "latency"):
    return request_sweep(cfg.models, cfg.devices, cfg.scenarios, cfg.bw_mbps, objective,
                         progress)


def by_key(rows, *keys):
    """{(row[k] for k in keys): row}."""
    return {tuple(r[k] for k in keys): r for r in rows}


__all__ = ["STRATEGIES", "PointConfig", "by_key", "point_rows", "request_sweep"]
