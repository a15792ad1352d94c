"""`splitwise <command>`: a thin mapping from the command line onto the packages' functions."""

from __future__ import annotations

import argparse
import json
import sys


def _add_scenario_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="llama-7b")
    ap.add_argument("--device", default="rpi5")
    ap.add_argument("--cloud", default="datacenter", help="datacenter or mec (or a loaded one)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--privacy-layers", type=int, default=0)
    ap.add_argument("--card-file", action="append", default=[], help="extra model card JSON/TOML")
    ap.add_argument("--profile-file", action="append", default=[], help="extra profile JSON/TOML")


def _spec(args):
    from costmodel.cards import load_card
    from costmodel.link import Workload
    from costmodel.profiles import load_profile
    from costmodel.spec import make_spec

    for path in args.card_file:
        load_card(path)
    for path in args.profile_file:
        load_profile(path)
    return make_spec(args.model, args.device, args.cloud,
                     Workload(args.prompt_tokens, args.new_tokens), args.privacy_layers)


def cmd_costs(args) -> int:
    from costmodel.link import make_link
    from costmodel.strategies import compare

    spec = _spec(args)
    link = make_link(args.bandwidth_mbps, args.rtt_ms, cloud_share=args.cloud_share)
    rows = compare(link, spec)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.model} on {args.device}, {args.cloud} cloud, {args.bandwidth_mbps} Mbit/s, "
          f"RTT {args.rtt_ms} ms, cloud share {args.cloud_share}, "
          f"S={args.prompt_tokens} T={args.new_tokens}")
    print(f"{'strategy':16s} {'latency_s':>10s} {'energy_j':>9s} {'cloud_usd':>10s} "
          f"{'acc_drop%':>9s} {'mem_GB':>7s} feasible  partition")
    for r in rows:
        if r["latency_s"] is None:
            print(f"{r['strategy']:16s} {'-':>10s} {'-':>9s} {'-':>10s} {'-':>9s} {'-':>7s} no")
            continue
        print(f"{r['strategy']:16s} {r['latency_s']:10.3f} {r['energy_j']:9.2f} "
              f"{r['cloud_cost']:10.2e} {r['accuracy_drop']:9.3f} {r['edge_memory_gb']:7.2f} "
              f"{'yes' if r['feasible'] else 'no':8s}  {r['partition']}")
    return 0


def cmd_serve_cloud(args) -> int:
    from bridge.blocks import make_executor
    from bridge.cloud_server import serve_cloud
    from bridge.wire import read_key_file

    key = read_key_file(args.key_file) if args.key_file else None
    serve_cloud(args.host, args.port, key, make_executor(args.model))
    return 0


def cmd_run_edge(args) -> int:
    import dataclasses

    from bridge.blocks import make_executor
    from bridge.edge_client import ClientConfig, EdgeConfig, run_edge
    from bridge.transport import LinkConfig
    from bridge.wire import read_key_file
    from lyapunov.processes import ArrivalConfig

    key = read_key_file(args.key_file) if args.key_file else None
    cfg = EdgeConfig(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                     arrival=ArrivalConfig(kind="poisson", rate=args.arrival_rate),
                     slot_s=args.slot_s, link=LinkConfig(rtt_ms=args.rtt_ms),
                     client=dataclasses.replace(ClientConfig(), key=key), seed=args.seed,
                     precision=args.precision)
    result = run_edge(args.cloud, args.requests, args.trace, args.policy, cfg,
                      executor=make_executor(args.model))
    summary = {k: v for k, v in result.items() if k != "requests"}
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        for k, v in summary.items():
            print(f"{k:18s} {v}")
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


SIMULATE_KEYS = ("latency_mean_s", "latency_p95_s", "energy_mean_j", "accuracy_drop_mean",
                 "backlog_mean", "dpp_mean", "decision_time_s", "stable")


def cmd_simulate(args) -> int:
    from agents.train import scenario_from_args
    from lyapunov.simulate import simulate

    scenario = scenario_from_args(args, args.trace[0] if args.trace else None)
    res = simulate(args.policy, scenario, args.slots, args.seed)
    if args.json:
        print(json.dumps({k: res[k] for k in (*SIMULATE_KEYS, "cloud_cost_mean", "policy")
                          if k in res}))
        return 0
    for k in SIMULATE_KEYS:
        print(f"{k:20s} {res[k]}")
    return 0


def cmd_train(args) -> int:
    from agents.train import cli

    return cli(args)


def cmd_evaluate(args) -> int:
    from agents.evaluate import cli

    return cli(args)


def cmd_figures(args) -> int:
    from experiments.figures import main_figures

    return main_figures(args)


def cmd_bridge(args) -> int:
    """calibrate / export live in bridge/ (torch): parse their flags there, lazily."""
    import importlib

    module = importlib.import_module({"calibrate": "bridge.calibrate",
                                      "export": "bridge.export"}[args.command])
    return module.main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="splitwise", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("costs", help="compare partitioning strategies for one request")
    _add_scenario_args(c)
    c.add_argument("--bandwidth-mbps", type=float, default=20.0)
    c.add_argument("--rtt-ms", type=float, default=40.0)
    c.add_argument("--cloud-share", type=float, default=1.0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_costs)

    from agents import evaluate as agents_evaluate
    from agents import train as agents_train

    c = sub.add_parser("simulate", help="run one policy on one scenario of the slot model")
    agents_train.add_scenario_args(c)
    c.add_argument("--policy", default="oracle",
                   help="oracle, dp-estimate, cvx, cloud-only, edge-only, best-cut, static-cut, "
                        "greedy")
    c.add_argument("--slots", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_simulate)

    c = sub.add_parser("train", help="train the hierarchical (or layer-wise) PPO policy")
    agents_train.add_args(c)
    c.set_defaults(func=cmd_train)

    c = sub.add_parser("evaluate", help="run policies on a scenario grid (one CSV row each)")
    agents_evaluate.add_args(c)
    c.set_defaults(func=cmd_evaluate)

    from experiments.figures import add_arguments as figures_args

    c = sub.add_parser("figures", help="regenerate the figures and the claims table")
    figures_args(c)
    c.set_defaults(func=cmd_figures)

    c = sub.add_parser("calibrate", add_help=False,
                       help="time SmolLM2 blocks here and fit a device profile (torch)")
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_bridge)
    c = sub.add_parser("export", add_help=False,
                       help="export a trained policy to torch or ONNX (torch)")
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_bridge)

    c = sub.add_parser("serve-cloud", help="serve the cloud blocks of split requests (threads)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=7070)
    c.add_argument("--key-file", help="shared HMAC key file")
    c.add_argument("--model", default="toy", help="toy, smollm2, or a GGUF path")
    c.set_defaults(func=cmd_serve_cloud)

    c = sub.add_parser("run-edge", help="run requests split between this edge and a cloud")
    c.add_argument("--cloud", required=True, help="host:port of serve-cloud")
    c.add_argument("--requests", type=int, default=20)
    c.add_argument("--trace", help="bandwidth trace file (none: unlimited bandwidth)")
    c.add_argument("--policy", default="best-cut",
                   help="checkpoint:DIR, oracle, best-cut, cloud-only or edge-only")
    c.add_argument("--model", default="toy", help="toy, smollm2, or a GGUF path (as the cloud)")
    c.add_argument("--key-file", help="shared HMAC key file")
    c.add_argument("--rtt-ms", type=float, default=20.0)
    c.add_argument("--prompt-tokens", type=int, default=16)
    c.add_argument("--new-tokens", type=int, default=8)
    c.add_argument("--arrival-rate", type=float, default=1.0, help="requests per slot")
    c.add_argument("--slot-s", type=float, default=1.0)
    c.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4"], default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_run_edge)
    return ap


def main(argv: list[str] | None = None) -> int:
    from costmodel.cards import CardError
    from costmodel.link import InputError
    from costmodel.profiles import ProfileError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("calibrate", "export"):
        # These live in bridge/ (torch); their flags are parsed there, imported lazily.
        return cmd_bridge(argparse.Namespace(command=argv[0], rest=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CardError, ProfileError, InputError) as err:
        print(f"splitwise {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
