"""`splitwise figures [--quick | --full] [--only NAME ...] [--out DIR]`: run the experiments,
plot them and write the claims table (also `python -m experiments.figures`).

Quick mode runs every experiment at reduced size (measured wall time in README); full mode at
the sizes of the figures in the README (see `experiments.catalog` and each module's FULL
config).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(ap: argparse.ArgumentParser) -> None:
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="reduced sizes (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="full sizes")
    ap.set_defaults(mode="quick")
    ap.add_argument("--only", nargs="+", metavar="NAME", default=None,
                    help="run only these experiments (see --list)")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    ap.add_argument("--list", action="store_true", help="list the experiments and exit")
    ap.add_argument("--jobs", type=int, default=None, metavar="N",
                    help="worker processes that run experiments side by side (count; default: "
                         "the CPU cores, at most 4; 1: one after another in this process)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--no-claims", action="store_true", help="skip the claims table")
    ap.add_argument("--config", default=None, metavar="FILE",
                    help='JSON file of config fields per experiment, e.g. {"memory": {"model": '
                         '"my-card"}} (a card registered with --card-file; units as in each '
                         "experiment's Config docstring)")
    ap.add_argument("--set", action="append", default=[], metavar="EXP.FIELD=VALUE",
                    help="one config field of one experiment, e.g. memory.model=my-card "
                         "(repeatable; after --config; lists comma-separated; units as in the "
                         "experiment's Config docstring)")


def main_figures(args: argparse.Namespace) -> int:
    """Entry point for the CLI: run, print one line per experiment, return an exit code."""
    from experiments.catalog import catalog, parse_overrides, run_figures

    if args.list:
        for name, exp in catalog().items():
            print(f"{exp.number:2d}  {name:22s} {exp.title}")
        return 0
    jobs = args.jobs if args.jobs is not None else min(4, os.cpu_count() or 1)
    if jobs < 1:
        print(f"splitwise figures: --jobs must be >= 1, got {jobs}", file=sys.stderr)
        return 2
    registrations = ([("card", p) for p in getattr(args, "card_file", [])]
                     + [("profile", p) for p in getattr(args, "profile_file", [])])
    try:
        overrides = parse_overrides(getattr(args, "set", []), getattr(args, "config", None))
        summary = run_figures(args.mode, args.only, args.out,
                              show_progress=not args.no_progress, claims=not args.no_claims,
                              overrides=overrides, jobs=jobs, registrations=registrations)
    except ValueError as err:
        print(f"splitwise figures: {err}", file=sys.stderr)
        return 2
    names = set(args.only or [e["name"] for e in summary["experiments"]])
    for e in summary["experiments"]:
        if e["name"] not in names:
            continue
        if e["status"] == "done":
            print(f"{e['number']:2d} {e['name']:22s} done     {e['seconds']:7.1f} s  "
                  + ", ".join(e["figures"]))
        else:
            print(f"{e['number']:2d} {e['name']:22s} skipped  {e['reason']}")
    print(f"wall time {summary['wall_seconds_last_call']:.0f} s; results in {args.out}/"
          + ("; claims in " + ", ".join(summary["claims"]) if summary.get("claims") else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitwise figures", description=__doc__.split("\n")[0],
                                 allow_abbrev=False)
    add_arguments(ap)
    return main_figures(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
