"""Command-line flags of a slot scenario (``lyapunov.env.Scenario``), shared by ``splitwise
simulate``, ``certify``, ``train`` and ``evaluate``: one definition of the flags and of the
Scenario they build. Imports nothing heavy at module level, so a command's parser is cheap to
build.
"""

from __future__ import annotations

import argparse


def add_scenario_args(ap: argparse.ArgumentParser) -> None:
    """Flags of a `lyapunov.env.Scenario` (shared by train and evaluate)."""
    ap.add_argument("--model", default="llama-7b",
                    help="model card name (costmodel.cards or --card-file)")
    ap.add_argument("--device", default="rpi5", help="edge device profile name")
    ap.add_argument("--cloud", default="datacenter",
                    help="cloud profile name (datacenter, mec, a peer, or --profile-file)")
    ap.add_argument("--trace", nargs="+", default=[],
                    help="bandwidth trace file(s) or shipped names (norway_bus_1, ...)")
    ap.add_argument("--bandwidth-process", default="ar1",
                    choices=("ar1", "markov", "constant"),
                    help="bandwidth process without a trace: ar1 (correlated around "
                         "--bandwidth-mbps), markov (levels in Mbit/s), constant (default ar1)")
    ap.add_argument("--bandwidth-mbps", type=float, default=10.0,
                    help="mean downlink bandwidth without a trace, Mbit/s")
    ap.add_argument("--arrival-rate", type=float, default=1.0,
                    help="Poisson arrivals, requests per slot")
    ap.add_argument("--V", type=float, default=10.0,
                    help="drift-plus-penalty weight V (>= 0; penalty units per backlog unit)")
    ap.add_argument("--tau", type=float, default=2.0, help="slot length, s")
    ap.add_argument("--rtt-ms", type=float, default=None, help="default: the cloud's RTT")
    ap.add_argument("--share", type=float, default=None,
                    help="median cloud share of an AR(1)-logit share process (default: 1)")
    ap.add_argument("--share-logit-std", type=float, default=1.5,
                    help="sd of the cloud share's AR(1) logit (dimensionless)")
    ap.add_argument("--min-share", type=float, default=None,
                    help="floor of the share process (default: min(0.05, share / 10))")
    ap.add_argument("--outage-prob", type=float, default=0.0,
                    help="stationary fraction of slots with a link outage, in [0, 1)")
    ap.add_argument("--privacy-layers", type=int, default=0,
                    help="embedding and the first N layers stay on the edge (0: no floor)")
    from lyapunov.env import MISMATCHES

    ap.add_argument("--mismatch", action="append", default=[], metavar="NAME",
                    choices=("none", *MISMATCHES),
                    help="where the true costs depart from the planners' nominal model "
                         "(repeatable, they combine): " + ", ".join(MISMATCHES)
                         + " (lyapunov.env.Mismatch)")
    ap.add_argument("--mismatch-seed", type=int, default=0,
                    help="seed of the profile-error draw (fixed per scenario)")
    ap.add_argument("--tp", action="store_true",
                    help="tensor-parallel option space: the FFN's columns split between the "
                         "sides with the residual on both (the planners solve in it, a trained "
                         "agent acts in it; lyapunov.env.Scenario.tp)")


def scenario_from_args(args, trace: str | None = None):
    """A Scenario from the flags (`trace`: the one trace the scenario replays)."""
    from costmodel.profiles import get_profile
    from lyapunov import processes as pr
    from lyapunov.env import Scenario, mismatch_of
    from lyapunov.traces import SHIPPED_TRACES, shipped_trace_path

    if trace is not None:
        path = str(shipped_trace_path(trace)) if trace in SHIPPED_TRACES else trace
        bw = pr.BandwidthConfig(kind="trace", trace_path=path)
    else:
        bw = pr.BandwidthConfig(kind=args.bandwidth_process, mean_mbps=args.bandwidth_mbps)
    share = (pr.ShareConfig() if args.share is None else
             pr.ShareConfig(kind="ar1", median_share=args.share,
                            logit_std=args.share_logit_std,
                            min_share=(args.min_share if args.min_share is not None
                                       else min(0.05, args.share / 10))))
    rtt = args.rtt_ms if args.rtt_ms is not None else get_profile(args.cloud).rtt_ms
    link = pr.LinkConfig(bandwidth=bw, rtt_ms=rtt, share=share, outage_prob=args.outage_prob)
    mismatch = mismatch_of(getattr(args, "mismatch", ()) or (),
                           seed=getattr(args, "mismatch_seed", 0))
    return Scenario(model=args.model, device=args.device, cloud=args.cloud, tau_s=args.tau,
                    V=args.V, arrival=pr.ArrivalConfig(rate=args.arrival_rate), link=link,
                    privacy_layers=args.privacy_layers, mismatch=mismatch,
                    tp=bool(getattr(args, "tp", False)))
