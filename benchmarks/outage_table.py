"""Policies on a shipped trace with outages: time-average DPP, latency and failures (5 seeds,
95% CIs), under the outage semantics of docs/design.md §2.7.

GPT-2 XL on a Galaxy S23 with the MEC server, cloud share AR(1)-logit median 0.2, 0.3
requests per slot, V 10, the 5Gophers Verizon drive trace (9% zero-throughput seconds),
500 slots per seed; every policy on the same paths (common random numbers). Optionally a
trained agent (`--checkpoint DIR`, e.g. one trained on the Norway traces).

    python benchmarks/outage_table.py [--trace fivegophers_verizon_drive_2] [--seeds 5]
        [--slots 500] [--checkpoint runs/hier] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLICIES = ("oracle", "dp-estimate", "dp-outage", "best-cut", "cloud-only", "edge-only")
KEYS = ("dpp_mean", "latency_mean_s", "latency_p95_s", "failure_frac", "caught_frac")


def scenario(trace: str):
    from lyapunov import processes as proc
    from lyapunov.env import Scenario
    from lyapunov.traces import shipped_trace_path

    bw = proc.BandwidthConfig(kind="trace", trace_path=str(shipped_trace_path(trace)),
                              trace_offset=None)
    share = proc.ShareConfig(kind="ar1", median_share=0.2, logit_std=1.5, rho=0.95,
                             min_share=1e-3)
    link = proc.LinkConfig(bandwidth=bw, rtt_ms=5.0, rtt_jitter_ms=1.0, share=share)
    return Scenario(model="gpt2-xl", device="galaxy-s23", cloud="mec", V=10.0,
                    arrival=proc.ArrivalConfig(rate=0.3), link=link)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="fivegophers_verizon_drive_2", help="shipped trace name")
    ap.add_argument("--seeds", type=int, default=5, help="seeds (trace offset, arrivals, share)")
    ap.add_argument("--slots", type=int, default=500, help="slots per seed")
    ap.add_argument("--checkpoint", default=None, help="a trained agent's run or seed dir")
    ap.add_argument("--policies", nargs="*", default=list(POLICIES),
                    help="registered policies to run (default: the table's six; none: only "
                         "--checkpoint; rows of one seed set are comparable across runs, "
                         "common random numbers)")
    ap.add_argument("--json", default=None, help="write the rows here too")
    args = ap.parse_args(argv)

    import agents.policy_loader  # noqa: F401  (registers checkpoint:)
    from agents.evaluate import run_policy
    from experiments.stats import mean_ci
    from lyapunov import registry

    params = scenario(args.trace).build()
    specs = list(args.policies) + ([f"checkpoint:{args.checkpoint}"] if args.checkpoint else [])
    table = []
    for spec in specs:
        for pol in registry.resolve(spec):
            t0 = time.perf_counter()
            rows = run_policy(pol, params, args.slots, list(range(args.seeds)))
            entry = {"policy": pol.name, "seconds": round(time.perf_counter() - t0, 1)}
            for k in KEYS:
                m, h = mean_ci(np.asarray([r[k] for r in rows], float))
                entry[k] = (float(m), float(h))
            table.append(entry)
            print(f"{pol.name:16s} " + "  ".join(
                f"{k} {m:.4g} ± {h:.2g}" for k, (m, h) in
                ((k, entry[k]) for k in KEYS)), flush=True)
    print(f"\n{args.trace}: GPT-2 XL, Galaxy S23, MEC share 0.2, 0.3 req/slot, V 10, "
          f"{args.seeds} seeds x {args.slots} slots (mean ± 95% CI half-width)")
    print("| policy | time-average DPP | mean latency (s) | p95 latency (s) | failure fraction "
          "| slots caught by an outage |")
    print("|---|---|---|---|---|---|")
    for e in table:
        cells = [f"{e[k][0]:.4g} ± {e[k][1]:.2g}" for k in KEYS]
        print(f"| {e['policy']} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
