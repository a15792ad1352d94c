"""Measured versus predicted latency of the split runtime on a replayed bandwidth trace.

Starts a cloud server process on 127.0.0.1 and runs ``bridge.edge_run.run_edge`` with the
link shaped to a shipped trace (real time), once per policy, then prints the measured and
the cost model's predicted p50 / p95 service latency. Usage:

    python benchmarks/runtime_trace.py --executor toy --trace norway_bus_1 --requests 20 \
        --policy cloud-only --policy cut:2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.blocks import make_executor  # noqa: E402
from bridge.edge_run import EdgeConfig, run_edge  # noqa: E402
from bridge.server_process import ServerProcess  # noqa: E402
from bridge.transport import LinkConfig  # noqa: E402
from lyapunov.processes import ArrivalConfig  # noqa: E402
from lyapunov.traces import load_shipped  # noqa: E402


def _policy(name: str, n_layers: int):
    """A policy string of ``lyapunov.registry`` (or ``checkpoint:DIR``), or "cut:C" (a fixed
    layer cut at C, embedding on the edge)."""
    if not name.startswith("cut:"):
        return name
    from costmodel.partition import layer_cut

    cut = int(name.split(":")[1])

    def fixed_cut(obs):
        return layer_cut(n_layers, ex_heads, cut)

    fixed_cut.__name__ = name
    return fixed_cut


def main() -> None:
    global ex_heads
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executor", default="toy", help="block executor: toy or smollm2")
    ap.add_argument("--trace", default="norway_bus_1", help="shipped bandwidth trace name")
    ap.add_argument("--requests", type=int, default=20, help="requests per policy (count)")
    ap.add_argument("--rate", type=float, default=0.5, help="arrivals per 1 s slot")
    ap.add_argument("--rtt-ms", type=float, default=20.0, help="emulated round-trip time (ms)")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (tokens)")
    ap.add_argument("--new-tokens", type=int, default=8, help="generated tokens per request")
    ap.add_argument("--policy", action="append", default=[],
                    help="policy to run (registered name or checkpoint:DIR; repeatable)")
    args = ap.parse_args()
    ex = make_executor(args.executor)
    ex_heads = ex.cfg.n_heads
    with ServerProcess(args.executor) as srv:
        cfg = EdgeConfig(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                         arrival=ArrivalConfig(rate=args.rate),
                         link=LinkConfig(rtt_ms=args.rtt_ms))
        for name in args.policy or ["cloud-only"]:
            out = run_edge(srv.address, args.requests, load_shipped(args.trace),
                           _policy(name, ex.cfg.n_layers), cfg, executor=ex)
            out.pop("requests")
            keys = ("answered", "failed", "lost", "duplicated", "latency_p50_s",
                    "latency_p95_s", "predicted_p50_s", "predicted_p95_s", "bytes_sent",
                    "retries", "fallbacks", "partitions", "profile")
            print(json.dumps({"policy": name, **{k: out[k] for k in keys}}))


if __name__ == "__main__":
    main()
