"""Evaluation harness: any policy on the same scenarios with common random numbers.

Policies are `lyapunov.policies.Policy` objects or policy strings resolved by the one registry
(`lyapunov.registry`, docs/design.md §4.5): a registered name, or ``checkpoint:DIR[:sample]``
(`agents.policy_loader`: a seed directory, or every seed of a training run directory).
A scenario grid is model x device x (trace or bandwidth process) x arrival rate x V, each a
`lyapunov.env.Scenario`; seeds give the sample paths. For a seed k every policy runs on the
paths of `jax.random.PRNGKey(k)` exactly as `lyapunov.simulate.simulate(..., seed=k)` does
(the environment's draws do not depend on the action), so the comparison is paired.

`evaluate` writes one CSV row per (policy, scenario, seed) with the scenario's labels and the
keys of `simulate --json` (latency_mean_s, latency_p95_s, energy_mean_j, accuracy_drop_mean,
backlog_mean, dpp_mean, decision_time_s, stable, ...). decision_time_s is the wall time of one
jitted decision at batch 1 after warm-up (mean of `repeats` calls; the cvx policy: its mean
solve time). A jittable policy runs all seeds of a scenario in one compiled `lax.map` of
rollouts (`run_policy` says why not vmapped); the checkpoints of a `CheckpointGroup` are
vmapped instead (one network, stacked parameters).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agents import checkpoint
from agents.policy_loader import learned_policy
from lyapunov import registry
from lyapunov.scenario_args import add_scenario_args, scenario_from_args
from lyapunov.simulate import decision_time

METRIC_KEYS = ("latency_mean_s", "latency_p95_s", "energy_mean_j", "accuracy_drop_mean",
               "cloud_cost_mean", "backlog_mean", "dpp_mean", "penalty_mean", "service_mean",
               "arrivals_mean", "unrunnable_frac", "caught_frac", "failure_frac",
               "decision_time_s", "backlog_growth", "stable")


def resolve_policy(text: str) -> list:
    """The policies a policy string names, through the one registry (`lyapunov.registry`):
    a registered name, or ``checkpoint:DIR[:sample]`` (every seed of a run directory)."""
    return registry.resolve(text)


@dataclasses.dataclass(frozen=True)
class ScenarioCase:
    """A scenario and the labels its CSV rows carry."""

    labels: tuple[tuple[str, str], ...]
    scenario: object

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def scenario_grid(base, models: Sequence[str] = (), devices: Sequence[str] = (),
                  clouds: Sequence[str] = (), traces: Sequence[str] = (),
                  rates: Sequence[float] = (), Vs: Sequence[float] = ()) -> list[ScenarioCase]:
    """The product grid around `base` (a Scenario); an empty axis keeps the base's value.

    traces: paths or shipped names; each replaces the base's bandwidth process by that trace.
    """
    from lyapunov import processes as pr
    from lyapunov.traces import SHIPPED_TRACES, shipped_trace_path

    def name_of(x):
        return x if isinstance(x, str) else getattr(x, "name", str(x))

    bw0 = base.link.bandwidth
    bw_label = Path(bw0.trace_path).name if bw0.kind == "trace" else bw0.kind
    axes = [models or [base.model], devices or [base.device], clouds or [base.cloud],
            traces or [None], rates or [base.arrival.rate], Vs or [base.V]]
    cases = []
    for model, device, cloud, trace, rate, v in itertools.product(*axes):
        link = base.link
        label = bw_label
        if trace is not None:
            path = str(shipped_trace_path(trace)) if trace in SHIPPED_TRACES else trace
            link = dataclasses.replace(link, bandwidth=pr.BandwidthConfig(kind="trace",
                                                                         trace_path=path))
            label = Path(path).name
        sc = dataclasses.replace(base, model=model, device=device, cloud=cloud, link=link,
                                 arrival=dataclasses.replace(base.arrival, rate=float(rate)),
                                 V=float(v))
        labels = (("model", name_of(model)), ("device", name_of(device)),
                  ("cloud", name_of(cloud)), ("bandwidth", label),
                  ("arrival_rate", f"{float(rate):g}"), ("V", f"{float(v):g}"))
        cases.append(ScenarioCase(labels, sc))
    return cases




def run_policy(policy, params, n_slots: int, seeds: Sequence[int]) -> list[dict]:
    """Metrics of `policy` on `params` for each seed (one dict per seed, simulate's keys)."""
    from lyapunov import env as E
    from lyapunov.simulate import batched_rollout, simulate, summarize

    if not policy.jittable:
        return [simulate(policy, params, n_slots, seed=int(s)) for s in seeds]
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
    # One seed after another: the solvers keep their memory sweep here (batched_rollout's
    # docstring says why a batch would be slower).
    info, _, state = jax.block_until_ready(
        batched_rollout(policy, params, n_slots, keys, vectorize=False, shared_params=True))
    last = jax.tree.map(lambda v: v[0], state)
    dt = decision_time(policy, params, last if policy.clairvoyant else E.observe(last), 20)
    rows = []
    for i, s in enumerate(seeds):
        out = summarize(jax.tree.map(lambda v, i=i: v[i], info), float(params.lam_mean), dt)
        out.update(policy=policy.name, n_slots=int(n_slots), seed=int(s))
        rows.append(out)
    return rows


@dataclasses.dataclass(frozen=True)
class CheckpointGroup:
    """Checkpoints of one architecture (e.g. the seeds of a run), evaluated together: their
    parameters are stacked and vmapped, so the rollout compiles once for all of them.

    names: policy name of each checkpoint in the CSV; paths: their directories.
    """

    names: tuple[str, ...]
    paths: tuple[str, ...]
    sample: bool = False


def run_checkpoints(group: CheckpointGroup, params, n_slots: int,
                    seeds: Sequence[int]) -> list[list[dict]]:
    """Per checkpoint, per seed, the metrics of `run_policy` (one compiled rollout)."""
    from flax import nnx

    from lyapunov import env as E
    from lyapunov.simulate import rollout, summarize

    loaded = [checkpoint.load_model(p) for p in group.paths]
    models = [m for m, _ in loaded]
    shapes = tuple(loaded[0][1]["shapes"])
    graphdef, _ = nnx.split(models[0])
    for p, m in zip(group.paths, models, strict=True):
        if m.space != models[0].space or nnx.graphdef(m) != graphdef:
            raise checkpoint.CheckpointError(f"{p}: not the architecture of {group.paths[0]}")
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[nnx.state(m) for m in models])
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])

    def one(state, key, params):
        pol = learned_policy(nnx.merge(graphdef, state), group.paths[0], group.sample, shapes)
        info, _, last = rollout(pol, params, n_slots, key)
        return info, last

    # params is an argument, not a constant of the program: the cases of a grid (V, share,
    # trace of one length) reuse one compile
    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, None)), in_axes=(0, None, None)))
    info, last = jax.block_until_ready(run(stacked, keys, params))
    pol0 = learned_policy(models[0], group.paths[0], group.sample, shapes)
    dt = decision_time(pol0, params, E.observe(jax.tree.map(lambda v: v[0, 0], last)), 20)
    out = []
    for i, name in enumerate(group.names):
        rows = []
        for j, s in enumerate(seeds):
            r = summarize(jax.tree.map(lambda v, i=i, j=j: v[i, j], info),
                          float(params.lam_mean), dt)
            r.update(policy=name, n_slots=int(n_slots), seed=int(s))
            rows.append(r)
        out.append(rows)
    return out


def evaluate(policies: Sequence, cases: Sequence[ScenarioCase], seeds: Sequence[int],
             n_slots: int, out_csv: str | Path | None = None, log=None) -> list[dict]:
    """Run every policy on every scenario and seed; rows (and the CSV when `out_csv`).

    policies: Policy objects, policy strings (`resolve_policy`; a run directory gives one
    policy per seed) or CheckpointGroups.
    """
    pols = [q for p in policies for q in (resolve_policy(p) if isinstance(p, str) else [p])]
    rows = []
    for case in cases:
        params = case.scenario.build()
        for pol in pols:
            t0 = time.perf_counter()
            if isinstance(pol, CheckpointGroup):
                per = run_checkpoints(pol, params, n_slots, seeds)
            else:
                per = [run_policy(pol, params, n_slots, seeds)]
            for res in per:
                for r in res:
                    rows.append({"policy": r["policy"], **case.label_dict, "seed": r["seed"],
                                 "n_slots": n_slots, **{k: r[k] for k in METRIC_KEYS}})
                if log is not None:
                    mean = np.mean([r["dpp_mean"] for r in res])
                    log(f"{res[0]['policy']} {case.label_dict}: dpp_mean {mean:.4g} "
                        f"({time.perf_counter() - t0:.1f} s)")
    if out_csv is not None:
        write_csv(rows, out_csv)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def aggregate(rows: list[dict], key: str = "dpp_mean") -> dict[tuple, float]:
    """Mean of `key` over seeds per (policy, scenario labels)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        k = tuple((n, v) for n, v in r.items() if n not in METRIC_KEYS and n not in
                  ("seed", "n_slots"))
        groups.setdefault(k, []).append(float(r[key]))
    return {k: float(np.mean(v)) for k, v in groups.items()}


# --------------------------------------------------------------------------------------------
# Command line


def add_args(ap: argparse.ArgumentParser) -> None:
    add_scenario_args(ap)
    ap.add_argument("--policy", nargs="+", required=True, help=registry.help_text())
    ap.add_argument("--slots", type=int, default=1000, help="slots per run (count)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per policy and case (count)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--rates", type=float, nargs="*", default=[], help="arrival-rate grid")
    ap.add_argument("--Vs", type=float, nargs="*", default=[], help="V grid")
    ap.add_argument("--models", nargs="*", default=[],
                    help="model cards of the scenario grid (default: the scenario's)")
    ap.add_argument("--devices", nargs="*", default=[],
                    help="edge devices of the scenario grid (default: the scenario's)")
    ap.add_argument("--out", default=None, help="CSV path")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON lines")


def cli(args) -> int:
    base = scenario_from_args(args, None)
    traces = list(args.trace)
    cases = scenario_grid(base, models=args.models, devices=args.devices, traces=traces,
                          rates=args.rates, Vs=args.Vs)
    seeds = list(range(args.seed, args.seed + args.seeds))
    rows = evaluate(args.policy, cases, seeds, args.slots, args.out,
                    log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        for r in rows:
            print(json.dumps(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitwise evaluate", description=__doc__.split("\n")[0],
                                 allow_abbrev=False)
    add_args(ap)
    return cli(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
