"""`splitwise <command>`: a thin mapping from the command line onto the packages' functions.

Every command registers the model cards and device profiles named by ``--card-file`` /
``--profile-file`` before it runs, and keeps compiled XLA programs in a persistent cache
(``$SPLITWISE_JAX_CACHE``, default ``$XDG_CACHE_HOME/splitwise/jax`` or
``~/.cache/splitwise/jax``; ``off`` disables it), so a repeated command skips compilation;
``simulate`` also keeps its traced programs there (``lyapunov.stored_programs``), so a repeated
run skips tracing too.
A bad input ends the command with one line naming the argument, file and field and exit
status 2 (``SPLITWISE_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

VERSION = "0.2.0"
COMMANDS = ("costs", "simulate", "oracle-gaps", "certify", "train", "evaluate", "figures",
            "calibrate", "export", "serve-cloud", "run-edge")
# Commands whose flags are parsed in bridge/, by the module main() imports lazily (cmd_bridge).
BRIDGE_COMMANDS = ("calibrate", "export", "run-edge")


def _add_scenario_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="llama-7b", help="model card name (see --card-file)")
    ap.add_argument("--device", default="rpi5", help="edge device profile name")
    ap.add_argument("--cloud", default="datacenter",
                    help="cloud profile name: datacenter, mec, or one from --profile-file")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length S, tokens")
    ap.add_argument("--new-tokens", type=int, default=32, help="decode steps T, tokens")
    ap.add_argument("--privacy-layers", type=int, default=0,
                    help="embedding and the first N layers stay on the edge (0: no floor)")


def _add_file_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--card-file", action="append", default=[], metavar="PATH",
                    help="register a model card from a JSON/TOML file (repeatable)")
    ap.add_argument("--profile-file", action="append", default=[], metavar="PATH",
                    help="register device profiles from a JSON/TOML file (repeatable)")


def load_user_files(args) -> None:
    """Register the cards and profiles named by --card-file / --profile-file."""
    from costmodel.cards import load_card
    from costmodel.profiles import load_profile

    for path in getattr(args, "card_file", []):
        load_card(path)
    for path in getattr(args, "profile_file", []):
        load_profile(path)


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at the per-user directory (see the module
    docstring); returns the directory, or None when disabled."""
    where = os.environ.get("SPLITWISE_JAX_CACHE")
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        where = str(Path(base) / "splitwise" / "jax")
    if where.lower() in ("off", "0", "none", ""):
        return None
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where


def _spec(args):
    from costmodel.link import Workload
    from costmodel.spec import make_spec

    return make_spec(args.model, args.device, args.cloud,
                     Workload(args.prompt_tokens, args.new_tokens), args.privacy_layers)


def cmd_costs(args) -> int:
    from costmodel.link import make_link
    from costmodel.strategies import compare

    spec = _spec(args)
    link = make_link(args.bandwidth_mbps, args.rtt_ms, cloud_share=args.cloud_share)
    rows = [_finite(r) for r in compare(link, spec)]
    if args.json:
        print(json.dumps(rows, indent=2, allow_nan=False))
        return 0
    print(f"{args.model} on {args.device}, {args.cloud} cloud, {args.bandwidth_mbps} Mbit/s, "
          f"RTT {args.rtt_ms} ms, cloud share {args.cloud_share}, "
          f"S={args.prompt_tokens} T={args.new_tokens}")
    print(f"{'strategy':20s} {'latency_s':>10s} {'energy_j':>9s} {'cloud_usd':>10s} "
          f"{'acc_drop%':>9s} {'mem_GB':>7s} feasible  partition")
    for r in rows:
        if r["latency_s"] is None or not r["feasible"]:
            print(f"{r['strategy']:20s} {'-':>10s} {'-':>9s} {'-':>10s} {'-':>9s} {'-':>7s} no")
            continue
        print(f"{r['strategy']:20s} {r['latency_s']:10.3f} {r['energy_j']:9.2f} "
              f"{r['cloud_cost']:10.2e} {r['accuracy_drop']:9.3f} {r['edge_memory_gb']:7.2f} "
              f"{'yes' if r['feasible'] else 'no':8s}  {r['partition']}")
    return 0


def _finite(row: dict) -> dict:
    """A costs row with its non-finite numbers (a partition the link or memory cannot carry)
    as null, so JSON stays valid and no inf or nan is printed."""
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()}


def cmd_serve_cloud(args) -> int:
    from pathlib import Path

    from bridge.blocks import make_executor
    from bridge.cloud_server import ServerConfig, ServerLimits, serve_cloud, setup_logging
    from bridge.wire import read_key_file

    key = read_key_file(args.key_file) if args.key_file else None
    if args.model not in ("toy", "smollm2"):
        m = Path(args.model)
        if not m.is_file():
            raise ValueError(f"--model {args.model}: no such model file (expected toy, "
                             "smollm2, or a .gguf / .safetensors file)")
    setup_logging()
    limits = ServerLimits(max_prompt_tokens=args.max_prompt_tokens,
                          max_new_tokens=args.max_new_tokens,
                          max_connections=args.max_connections, max_requests=args.max_requests,
                          idle_timeout_s=args.idle_timeout, read_timeout_s=args.read_timeout)
    executor = make_executor(args.model)
    try:
        serve_cloud(args.host, args.port, key, executor, ServerConfig(limits=limits))
    except OSError as err:
        raise ValueError(f"--host {args.host} --port {args.port}: {err.strerror or err}") \
            from None
    return 0


SIMULATE_KEYS = ("latency_mean_s", "latency_p95_s", "energy_mean_j", "accuracy_drop_mean",
                 "backlog_mean", "dpp_mean", "failure_frac", "caught_frac", "unrunnable_frac",
                 "decision_time_s", "stable")


def cmd_simulate(args) -> int:
    from lyapunov.scenario_args import scenario_from_args
    from lyapunov.simulate import simulate

    if ":" in args.policy:
        import agents.policy_loader  # noqa: F401 - registers checkpoint:DIR

    scenario = scenario_from_args(args, args.trace[0] if args.trace else None)
    res = simulate(args.policy, scenario, args.slots, args.seed)
    if args.json:
        print(json.dumps({k: res[k] for k in (*SIMULATE_KEYS, "cloud_cost_mean", "policy")
                          if k in res}))
        return 0
    for k in SIMULATE_KEYS:
        print(f"{k:20s} {res[k]}")
    return 0


def cmd_oracle_gaps(args) -> int:
    import csv

    from lyapunov.oracle_gaps import FIELDS, oracle_gaps, summary
    from lyapunov.scenario_args import scenario_from_args

    scenario = scenario_from_args(args, args.trace[0] if args.trace else None)

    def progress(done, total):
        if done == 1 or done == total or done % 10 == 0:
            print(f"checked {done}/{total} decisions", file=sys.stderr, flush=True)

    rows = oracle_gaps(scenario.build(), args.slots, args.seed, args.target,
                       check=not args.no_check, progress=progress)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
    s = summary(rows, args.target)
    if args.json:
        print(json.dumps(s))
        return 0
    for k, v in s.items():
        print(f"{k:16s} {v}")
    return 0


def cmd_certify(args) -> int:
    import agents.policy_loader  # noqa: F401 - registers checkpoint:DIR
    from lyapunov.certify import certify, report
    from lyapunov.scenario_args import scenario_from_args

    scenario = scenario_from_args(args, args.trace[0] if args.trace else None)
    cert = certify(args.policy, scenario, n_slots=args.slots, seed=args.seed,
                   examples=args.examples, n_states=args.states,
                   bayes_draws=None if args.no_bayes else tuple(args.bayes_draws))
    print(json.dumps(cert.as_dict()) if args.json else report(cert))
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
    """calibrate / export / run-edge live in bridge/: parse their flags there, lazily (so that
    run-edge with an exported policy imports no JAX)."""
    import importlib

    module = importlib.import_module({"calibrate": "bridge.calibrate", "export": "bridge.export",
                                      "run-edge": "bridge.edge_run"}[args.command])
    return module.main(args.rest) or 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``only``, the flags of that command alone (the others
    are listed, without flags), so that one command's parser imports only what it needs."""
    from lyapunov import registry

    def want(name: str) -> bool:
        return only is None or only == name

    ap = argparse.ArgumentParser(prog="splitwise", description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", action="version", version=f"splitwise {VERSION}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True)
    files = argparse.ArgumentParser(add_help=False)
    _add_file_args(files)

    c = sub.add_parser("costs", parents=[files],
                       help="compare partitioning strategies for one request")
    _add_scenario_args(c)
    c.add_argument("--bandwidth-mbps", type=float, default=20.0,
                   help="uplink and downlink bandwidth, Mbit/s (0: an outage)")
    c.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time, ms")
    c.add_argument("--cloud-share", type=float, default=1.0,
                   help="fraction of the cloud GPU this client gets, in (0, 1]")
    c.add_argument("--json", action="store_true", help="print the rows as JSON")
    c.set_defaults(func=cmd_costs)

    from lyapunov.scenario_args import add_scenario_args

    c = sub.add_parser("simulate", parents=[files],
                       help="run one policy on one scenario of the slot model")
    add_scenario_args(c)
    c.add_argument("--policy", default="oracle", help=registry.help_text())
    c.add_argument("--slots", type=_positive_int, default=1000, help="slots to simulate (> 0)")
    c.add_argument("--seed", type=int, default=0, help="random seed (arrivals, link paths)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=cmd_simulate)

    c = sub.add_parser("oracle-gaps", parents=[files],
                       help="run the slot oracle and certify each decision's optimality gap "
                            "(its own bound, then an exact-memory check where that exceeds "
                            "the target; docs/design.md 4.3)")
    add_scenario_args(c)
    c.add_argument("--slots", type=_positive_int, default=200, help="slots to run (> 0)")
    c.add_argument("--seed", type=int, default=0, help="random seed (arrivals, link paths)")
    c.add_argument("--target", type=_fraction, default=1e-3,
                   help="certified relative gap, a fraction in (0, 1) (default 0.001: 0.1 %%)")
    c.add_argument("--no-check", action="store_true",
                   help="report the decisions' own gaps only (no exact-memory check)")
    c.add_argument("--out", default=None, metavar="PATH",
                   help="CSV of one row per decision (slot, backlog, objective, bounds, gaps)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=cmd_oracle_gaps)

    c = sub.add_parser("certify", parents=[files],
                       help="estimate a policy's additive DPP gap C and the stability bounds "
                            "it implies (proofs/performance.md)")
    add_scenario_args(c)
    c.add_argument("--policy", default="dp-estimate", help=registry.help_text())
    c.add_argument("--slots", type=_positive_int, default=500,
                   help="slots of the policy's own rollout (> 0)")
    c.add_argument("--seed", type=int, default=0, help="random seed (arrivals, link paths)")
    c.add_argument("--examples", type=int, default=100,
                   help="hypothesis-drawn states searched for the worst gap (0: skip)")
    c.add_argument("--states", type=_positive_int, default=64,
                   help="link states of the reduced linear program for p* and eps")
    c.add_argument("--bayes-draws", type=_positive_int, nargs=2, default=(8, 4),
                   metavar=("N_BW", "N_SHARE"),
                   help="predictive-law nodes (bandwidth, cloud share; counts) of the "
                        "observation-conditional comparator C_bayes: one exact slot solve "
                        "per node pair and slot")
    c.add_argument("--no-bayes", action="store_true",
                   help="skip C_bayes (the clairvoyant certificate only)")
    c.add_argument("--json", action="store_true", help="print the certificate as JSON")
    c.set_defaults(func=cmd_certify)

    c = sub.add_parser("train", parents=[files],
                       help="train the hierarchical (or layer-wise) PPO policy")
    if want("train"):  # imports flax and optax
        from agents import train as agents_train

        agents_train.add_args(c)
    c.set_defaults(func=cmd_train)

    c = sub.add_parser("evaluate", parents=[files],
                       help="run policies on a scenario grid (one CSV row each)")
    if want("evaluate"):
        from agents import evaluate as agents_evaluate

        agents_evaluate.add_args(c)
    c.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("figures", parents=[files],
                       help="regenerate the figures and the claims table")
    if want("figures"):
        from experiments.figures import add_arguments as figures_args

        figures_args(c)
    c.set_defaults(func=cmd_figures)

    c = sub.add_parser("calibrate", add_help=False,
                       help="time SmolLM2 blocks here and fit a device profile (torch)")
    c.add_argument("rest", nargs=argparse.REMAINDER,
                   help="the command's own flags (see its --help)")
    c.set_defaults(func=cmd_bridge)
    c = sub.add_parser("export", add_help=False,
                       help="export a trained policy to torch or ONNX (torch)")
    c.add_argument("rest", nargs=argparse.REMAINDER,
                   help="the command's own flags (see its --help)")
    c.set_defaults(func=cmd_bridge)

    def _bounded(kind, lowest: float, strict: bool):
        """argparse type: a finite number of ``kind`` above ``lowest``."""
        import math

        what = f"{'an integer' if kind is int else 'a number'} {'>' if strict else '>='} {lowest:g}"

        def parse(text: str):
            try:
                v = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
            if not math.isfinite(v) or (v <= lowest if strict else v < lowest):
                raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
            return v

        return parse

    _positive_float, _nonneg_int = _bounded(float, 0, True), _bounded(int, 0, False)

    c = sub.add_parser("serve-cloud", help="serve the cloud blocks of split requests (threads)")
    c.add_argument("--host", default="127.0.0.1", help="address to bind")
    c.add_argument("--port", type=_port, default=7070, help="TCP port to bind (1-65535)")
    c.add_argument("--key-file", help="shared key file (32+ random bytes, mode 0600)")
    c.add_argument("--model", default="toy", help="toy, smollm2, or a GGUF path")
    c.add_argument("--max-prompt-tokens", type=_positive_int, default=None,
                   help="longest prompt a request may have, tokens (default: the model's "
                        "context)")
    c.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="most tokens a request may generate (default: the model's context)")
    c.add_argument("--max-connections", type=_positive_int, default=64,
                   help="open connections at once (more are refused as busy)")
    c.add_argument("--max-requests", type=_positive_int, default=256,
                   help="requests in progress at once (more are told to back off)")
    c.add_argument("--idle-timeout", type=_positive_float, default=120.0,
                   help="close a connection silent this long, s")
    c.add_argument("--read-timeout", type=_positive_float, default=30.0,
                   help="a frame must arrive within this of its first byte, s")
    c.set_defaults(func=cmd_serve_cloud)

    c = sub.add_parser("run-edge", add_help=False,
                       help="run requests split between this edge and a cloud (an exported "
                            "policy needs no JAX)")
    c.add_argument("rest", nargs=argparse.REMAINDER,
                   help="the command's own flags (see its --help)")
    c.set_defaults(func=cmd_bridge)
    # No abbreviated flags: `simulate --out x` must not be read as `--outage-prob x`.
    for parser in (ap, *sub.choices.values()):
        parser.allow_abbrev = False
    return ap


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}") \
            from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}")
    return v


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.strerror or text}: {err.filename}"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    try:
        if command in BRIDGE_COMMANDS:
            # These live in bridge/; their flags are parsed there, imported lazily.
            return cmd_bridge(argparse.Namespace(command=command, rest=argv[1:]))
        args = build_parser(command if command in COMMANDS else None).parse_args(argv)
        if command not in ("serve-cloud",):
            where = enable_compilation_cache()
            if where is not None and command == "simulate":
                from lyapunov import stored_programs

                stored_programs.enable(where)  # for this command only (finally below)
        load_user_files(args)
        return args.func(args)
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except (ValueError, OSError, KeyError) as err:
        if os.environ.get("SPLITWISE_DEBUG"):
            raise
        print(f"splitwise {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"splitwise {command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "lyapunov.stored_programs" in sys.modules:
            sys.modules["lyapunov.stored_programs"].enable(None)


if __name__ == "__main__":
    sys.exit(main())
