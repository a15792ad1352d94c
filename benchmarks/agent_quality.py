"""How close the trained agents get to the clairvoyant oracle and to dp-bayes, measured.

Per case (model x edge device x cloud x share process x arrival rate x V): trains the
hierarchical and the layer-wise PPO agents on some Norway traces (``splitwise train``), then
evaluates them with the yardsticks on the other traces (``splitwise evaluate``: the same
arrival, bandwidth and share paths for every policy, seeds 0..K-1), and the cvxpy relaxation
on a few slots for its decision time. Prints one table per case and writes, under --out:

    <case>/{hier,layerwise}/        the training runs (metrics.csv, summary.json, checkpoints)
    <case>/eval.csv, cvx.csv        one row per (policy, trace, seed)
    summary.json, summary.md        per case and policy: mean DPP, its gaps to the oracle (the
                                    bound) and to dp-bayes (the best causal planner) and
                                    dp-estimate (paired over trace x seed, 95% t interval),
                                    latency, p95, backlog, stable runs, decision time; training
                                    wall time, steps/s

The test traces are Norway traces not used in training and the shipped 5G drive trace with
outages (``lyapunov.traces.OUTAGE_TRACES[0]``, fivegophers_verizon_drive_2).

Usage (about 10 minutes on 2 cores with the defaults):

    python benchmarks/agent_quality.py [--cases NAME ...] [--steps 300000] [--slots 1000]
        [--seeds 5] [--out results/agent_quality] [--retrain] [--no-eval]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import evaluate as ev  # noqa: E402
from agents import train as tr  # noqa: E402

TRAIN_TRACES = ("norway_bus_1", "norway_car_1")
TEST_TRACES = ("norway_ferry_1", "norway_metro_1", "fivegophers_verizon_drive_2")

# Regimes where the partition must change with the cloud's share (docs/design.md §2):
# the Pi 5 runs LLaMA-7B in 27.5 s, a datacenter GPU share of ~1% takes as long, and the share
# varies over decades (AR(1) logit, sd 1.5); the Orin NX runs GPT-2 XL in 1.55 s, and a MEC
# server's share crosses ~0.15 around a median of 0.2.
CASES = {
    "llama7b-rpi5-dc": dict(model="llama-7b", device="rpi5", cloud="datacenter", share=0.01,
                            rate=0.03, V=10.0),
    "gpt2xl-orinnx-mec": dict(model="gpt2-xl", device="orin-nx", cloud="mec", share=0.2,
                              rate=0.3, V=10.0),
}
BASELINES = ("oracle", "dp-bayes", "dp-estimate", "best-cut", "cloud-only", "edge-only")
REFERENCES = ("oracle", "dp-bayes", "dp-estimate")
COLUMNS = ("dpp_mean", "latency_mean_s", "latency_p95_s", "backlog_mean", "decision_time_s")


def scenario_argv(c: dict) -> list[str]:
    return ["--model", c["model"], "--device", c["device"], "--cloud", c["cloud"],
            "--share", str(c["share"]), "--share-logit-std", "1.5",
            "--arrival-rate", str(c["rate"]), "--V", str(c["V"])]


def train_case(case_dir: Path, c: dict, steps: int, retrain: bool) -> dict:
    """{kind: training summary (wall_s, steps_per_s, ...)}; trains what is missing."""
    out = {}
    for kind in ("hier", "layerwise"):
        run = case_dir / kind
        if retrain or not (run / "seed0" / "params.npz").exists():
            argv = scenario_argv(c) + ["--trace", *TRAIN_TRACES, "--steps", str(steps),
                                       "--num-envs", "16", "--num-steps", "32",
                                       "--log-every", "20", "--out", str(run)]
            if kind == "layerwise":
                argv.append("--layerwise")
            print(f"[{case_dir.name}] training {kind}: splitwise train {' '.join(argv)}",
                  flush=True)
            tr.main(argv)
        out[kind] = json.loads((run / "summary.json").read_text())
    return out


def evaluate_case(case_dir: Path, c: dict, slots: int, seeds: int, cvx_slots: int) -> list:
    pols = [*BASELINES, f"checkpoint:{case_dir / 'hier' / 'seed0'}",
            f"checkpoint:{case_dir / 'layerwise' / 'seed0'}"]
    base = scenario_argv(c) + ["--trace", *TEST_TRACES, "--seeds", str(seeds)]
    print(f"[{case_dir.name}] evaluating {len(pols)} policies on {', '.join(TEST_TRACES)}, "
          f"{seeds} seeds x {slots} slots", flush=True)
    ev.main(base + ["--policy", *pols, "--slots", str(slots), "--out",
                    str(case_dir / "eval.csv")])
    rows = list(csv.DictReader(open(case_dir / "eval.csv")))
    if cvx_slots > 0:
        ev.main(scenario_argv(c) + ["--trace", TEST_TRACES[0], "--seeds", "1", "--policy",
                                    "cvx", "--slots", str(cvx_slots), "--out",
                                    str(case_dir / "cvx.csv")])
        rows += list(csv.DictReader(open(case_dir / "cvx.csv")))
    return rows


def paired_gap(runs: dict, ref: dict) -> tuple[float, float] | None:
    """Mean relative DPP difference to `ref` over the (trace, seed) paths both ran, in %, and
    the half-width of its 95% t interval; None with fewer than 2 common paths."""
    common = [k for k in runs if k in ref]
    if len(common) < 2:
        return None
    gap = np.array([float(runs[k]["dpp_mean"]) / float(ref[k]["dpp_mean"]) - 1
                    for k in common])
    half = stats.t.ppf(0.975, gap.size - 1) * gap.std(ddof=1) / np.sqrt(gap.size)
    return 100 * float(gap.mean()), 100 * float(half)


def summarize(rows: list[dict]) -> dict:
    """Per policy: means of COLUMNS, stable runs, and the paired DPP gaps to the oracle,
    dp-bayes and dp-estimate (only over the paths the policy shares with them)."""
    by = defaultdict(dict)
    for r in rows:
        by[r["policy"]][(r["bandwidth"], int(r["seed"]))] = r
    out = {}
    for pol, runs in by.items():
        s = {k: float(np.mean([float(r[k]) for r in runs.values()])) for k in COLUMNS}
        s["runs"] = len(runs)
        s["slots"] = int(next(iter(runs.values()))["n_slots"])
        s["stable_runs"] = sum(r["stable"] == "True" for r in runs.values())
        for ref in REFERENCES:
            g = paired_gap(runs, by.get(ref, {})) if pol != ref else None
            if g is not None:
                s[f"gap_to_{ref}_pct"], s[f"ci95_to_{ref}_pct"] = g
        out[pol] = s
    return out


def table(name: str, c: dict, summ: dict, train: dict) -> str:
    lines = [f"### {name}: {c['model']} on {c['device']}, {c['cloud']} cloud, share median "
             f"{c['share']} (logit sd 1.5), {c['rate']} requests/slot, V {c['V']}",
             "",
             "| policy | DPP | vs oracle % (95% CI) | vs dp-bayes % | vs dp-estimate % "
             "| latency s | p95 s | backlog | stable | decision ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    full = max(s["slots"] for s in summ.values())

    def gap(s, ref):
        k = f"gap_to_{ref}_pct"
        return f"{s[k]:+.2f} ± {s[f'ci95_to_{ref}_pct']:.2f}" if k in s else ""

    for pol, s in summ.items():
        if s["slots"] < full:  # the cvx relaxation: a few slots, for its decision time only
            lines.append(f"| {pol} ({s['slots']} slots) | | | | | | | | | "
                         f"{1e3 * s['decision_time_s']:.4g} |")
            continue
        lines.append(f"| {pol} | {s['dpp_mean']:.4g} | {gap(s, 'oracle')} | "
                     f"{gap(s, 'dp-bayes')} | {gap(s, 'dp-estimate')} | "
                     f"{s['latency_mean_s']:.4g} | "
                     f"{s['latency_p95_s']:.4g} | {s['backlog_mean']:.3g} | "
                     f"{s['stable_runs']}/{s['runs']} | {1e3 * s['decision_time_s']:.3g} |")
    lines.append("")
    for kind, t in train.items():
        lines.append(f"training {kind}: {t['env_steps_per_seed']} environment steps in "
                     f"{t['wall_s']:.0f} s wall ({t['steps_per_s']:.0f} steps/s after the "
                     f"first segment's compile of {t['first_segment_s']:.0f} s)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES),
                    help="model/device cases trained and evaluated")
    ap.add_argument("--steps", type=int, default=300_000, help="training steps per agent")
    ap.add_argument("--slots", type=int, default=1000, help="evaluation slots per seed")
    ap.add_argument("--seeds", type=int, default=5, help="evaluation seeds (count)")
    ap.add_argument("--cvx-slots", type=int, default=10, help="0: skip the cvxpy policy")
    ap.add_argument("--out", default="results/agent_quality", help="output folder")
    ap.add_argument("--retrain", action="store_true", help="train even if a run exists")
    ap.add_argument("--no-eval", action="store_true",
                    help="summarize the stored eval.csv / cvx.csv of each case")
    a = ap.parse_args(argv)
    out = Path(a.out)
    report, md = {}, ["# Trained agents against the oracle (benchmarks/agent_quality.py)", "",
                      f"train traces {', '.join(TRAIN_TRACES)}; test traces "
                      f"{', '.join(TEST_TRACES)}; {a.seeds} seeds x {a.slots} slots; cvx on "
                      f"{a.cvx_slots} slots of one trace (decision time)", ""]
    for name in a.cases:
        c = CASES[name]
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        train = train_case(d, c, a.steps, a.retrain)
        if a.no_eval:  # re-summarize the stored rows
            rows = [r for f in ("eval.csv", "cvx.csv") if (d / f).exists()
                    for r in csv.DictReader(open(d / f))]
        else:
            rows = evaluate_case(d, c, a.slots, a.seeds, a.cvx_slots)
        summ = summarize(rows)
        report[name] = {"case": c, "train": train, "policies": summ}
        md.append(table(name, c, summ, train))
        print(md[-1], flush=True)
        (out / "summary.json").write_text(json.dumps(report, indent=1))
        (out / "summary.md").write_text("\n".join(md))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
