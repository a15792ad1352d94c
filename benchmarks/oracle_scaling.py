"""How the exact slot oracle scales with the card (docs/design.md §4.3), measured.

For each case (card x edge x cloud x memory regime) and option space (the paper's, and tp),
on a fixed set of link/queue states drawn once (seeded):

- compile: seconds of the first call of ``lyapunov.oracle.solve_slot`` after
  ``jax.clear_caches()`` (trace + compile + one decision: what a cold ``simulate`` pays);
- decision: median and max wall ms of one decision over the states, after one warm-up call;
- n_solves (mean), exact (how many), gap (largest reported relative gap
  ``(objective - lower_bound) / |objective|``), how many feasible states certify a gap of at
  most ``GAP_TARGET`` (0.1 %, the target of docs/oracle-scaling.md), and each state's
  objective and lower bound (in the JSON), so that a later run can be checked against this
  one (``--reference``): the new objective must be at most the reference objective plus the
  new reported gap.

With ``--check``, every feasible state whose certified gap exceeds ``GAP_TARGET`` is checked
offline with the edge memory exact (``lyapunov.oracle_check.check_slot``: exact lines by bounded
enumeration, each line's target ``--check-slack`` of ``GAP_TARGET`` below the checked point;
seconds a state, not part of the decision time): its tightened gap, the lines it took, whether
it found partitions below the checked one's level, and its seconds.

The oracle runs as the planners run it: without its memory machinery where no partition can
exceed a budget (``costmodel.dp.memory_can_bind``, recorded per case).

Memory regimes: ``free`` (the edge's budget raised to 10 TB: memory never binds) and
``binds`` (the profile's budget where the card does not fit the edge, else half of the
card's edge-only memory). The states price the cloud heavily (a cloud-cost budget with a
large virtual queue in some states, slow links in others), so that the edge is worth filling
and memory binds. ``70b/orin-nx/mec`` is the issue's 80 x 64 card on an Orin NX and the MEC
(24 GB at 8 bits): the two budgets together cannot hold it, every decision is infeasible.
``70b/orin-nx/mec160`` gives the MEC 160 GB, so only the edge's budget binds.

The hierarchical policy (``agents``, docs/design.md §4.5) on the same cards, slot and
states (``--no-hier`` skips it): a freshly initialized ``ActorCritic`` of the hierarchical
action space (default networks) run as ``agents.policy_loader.learned_policy`` (features,
masks, both levels, greedy), jitted; its first call's seconds and the median / max ms of one
decision after a warm-up; and PPO environment steps per second of ``agents.train.run`` on
the case's scenario (one seed; 3 updates of one segment each, the first compiles; with
``--quick`` 4 envs x 8 steps, 1 epoch, 1 minibatch, else 16 x 32, 4 epochs, 4 minibatches).
The learner's compile takes about a minute on 2 cores whatever the card, so ``--train``
chooses where it is measured (``--quick``: only the largest case, in the first space).

Timings on a shared machine are upper bounds. Usage:

    python benchmarks/oracle_scaling.py [--quick] [--states 6] [--spaces paper tp]
        [--cases NAME ...] [--out results/oracle_scaling.json] [--reference OLD.json]
        [--no-hier] [--train {all,largest,none}]
        [--check [--check-frontier N] [--check-slack F]]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from costmodel.cards import ModelCard, get_card  # noqa: E402
from costmodel.costs import request_costs  # noqa: E402
from costmodel.dp import memory_can_bind  # noqa: E402
from costmodel.link import LinkState, Workload  # noqa: E402
from costmodel.partition import make_partition  # noqa: E402
from costmodel.profiles import get_profile  # noqa: E402
from costmodel.spec import make_spec  # noqa: E402
from lyapunov.env import Scenario  # noqa: E402
from lyapunov.oracle import PenaltyWeights, SlotParams, solve_slot  # noqa: E402
from lyapunov.queues import Budgets, Queues  # noqa: E402

F32 = jnp.float32
SYNTH = ModelCard("synthetic-8x8", 8, 8, 8, 1024, 2816, 32000, "swiglu", False)
BIG70 = ModelCard("llama-70b-shaped", 80, 64, 8, 8192, 28672, 128256, "swiglu", False)
MEC160 = dataclasses.replace(get_profile("mec"), name="mec160", mem_budget_gb=160.0)

# name: (card, edge, cloud, regime)
CASES = {
    "8x8/free": (SYNTH, "orin-nx", "mec", "free"),
    "8x8/binds": (SYNTH, "orin-nx", "mec", "binds"),
    "gpt2-xl/free": ("gpt2-xl", "orin-nx", "mec", "free"),
    "gpt2-xl/binds": ("gpt2-xl", "orin-nx", "mec", "binds"),
    "llama-7b/free": ("llama-7b", "orin-nx", "mec", "free"),
    "llama-7b/binds": ("llama-7b", "orin-nx", "mec", "binds"),
    "llama-13b/free": ("llama-13b", "orin-nx", "mec", "free"),
    "llama-13b/orin-nx": ("llama-13b", "orin-nx", "mec", "binds"),
    "llama-13b/rpi5": ("llama-13b", "rpi5", "mec", "binds"),
    "70b/free": (BIG70, "orin-nx", MEC160, "free"),
    "70b/orin-nx/mec160": (BIG70, "orin-nx", MEC160, "binds"),
    "70b/orin-nx/mec": (BIG70, "orin-nx", "mec", "binds"),
}
# The certified relative gap a decision should reach (docs/oracle-scaling.md): counted per case.
GAP_TARGET = 1e-3
QUICK = ["8x8/free", "8x8/binds", "llama-7b/free", "llama-13b/rpi5", "70b/free",
         "70b/orin-nx/mec160"]
WORKLOAD = Workload(128, 32)


def build_spec(card, edge, cloud, regime):
    card = get_card(card) if isinstance(card, str) else card
    edge = get_profile(edge) if isinstance(edge, str) else edge
    full = make_spec(card, edge, cloud, WORKLOAD)
    n_l, n_h = card.n_layers, card.n_heads
    all_edge = make_partition([n_h] * n_l, [0] * n_l)
    link = LinkState(F32(10.0), F32(10.0), F32(20.0), F32(0.2))
    need_gb = float(request_costs(all_edge, link, full).edge_memory_gb)
    if regime == "free":
        budget = 1e4
    else:
        budget = edge.mem_budget_gb if need_gb > edge.mem_budget_gb else 0.5 * need_gb
    edge = dataclasses.replace(edge, name=f"{edge.name}-{budget:.3g}GB", mem_budget_gb=budget)
    return card, make_spec(card, edge, cloud, WORKLOAD), budget, need_gb


def states(n, seed=0):
    """(queues, link) pairs: links from fast to nearly out, cloud shares 0.05-0.5, backlogs,
    and a cloud-cost virtual queue that is empty or large (the cloud priced heavily)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bw = 10 ** rng.uniform(-0.5, 1.9)
        link = LinkState(F32(bw), F32(bw), F32(rng.uniform(10, 200)), F32(rng.uniform(0.05, 0.5)))
        zc = [1e6, 1e7, 0.0, 1e5][i % 4]
        out.append((Queues(F32(rng.uniform(0, 20)), F32(0), F32(0), F32(zc)), link))
    return out


SLOT = SlotParams(F32(10.0), F32(2.0), Budgets(F32(math.inf), F32(math.inf), F32(1e-4)),
                  PenaltyWeights(F32(1), F32(0), F32(0), F32(0)))


def _lh(card):
    card = get_card(card) if isinstance(card, str) else card
    return card.n_layers * card.n_heads


def run_case(name, tp, n_states, extra_kw, check=0, slack=0.5):
    card, edge, cloud, regime = CASES[name]
    card, spec, budget, need = build_spec(card, edge, cloud, regime)
    sts = states(n_states)
    # The program the planners run (lyapunov.policies.slot_solution): without the memory
    # machinery where no partition can exceed a budget.
    kw = {"memory_can_bind": memory_can_bind(spec), **extra_kw}

    def decide(q, link):
        sol = solve_slot(q, link, spec, SLOT, tp=tp, **kw)
        jax.block_until_ready(sol.objective)
        return sol

    jax.clear_caches()
    t0 = time.perf_counter()
    decide(*sts[0])
    compile_s = time.perf_counter() - t0
    decide(*sts[1 % n_states])  # warm-up
    # The decisions back to back, as a run of slots makes them; the checks after. (Pricing each
    # partition eagerly between two decisions, op by op, made the next decision up to twice as
    # slow on the 70B-shaped card: measured 2026-12-05, 20 against 40 ms.)
    times, sols = [], []
    for q, link in sts:
        t0 = time.perf_counter()
        sols.append(decide(q, link))
        times.append(time.perf_counter() - t0)
    recs = []
    for (_, link), sol in zip(sts, sols, strict=True):
        obj, lb = float(sol.objective), float(sol.lower_bound)
        gap = getattr(sol, "gap", None)
        gap = float(gap) if gap is not None else (
            (obj - lb) / max(abs(obj), 1e-30) if obj < 1e29 else math.inf)
        recs.append(dict(objective=obj, lower_bound=lb, exact=bool(sol.exact),
                         feasible=bool(sol.feasible), n_solves=int(sol.n_solves), gap=gap,
                         edge_gb=float(request_costs(sol.partition, link, spec).edge_memory_gb)
                         if bool(sol.feasible) else None))
    if check:
        check_states(recs, sts, sols, spec, tp, check, slack)
    feas = [r for r in recs if r["feasible"]]
    checked = [r for r in feas if "check_gap" in r]
    return dict(case=name, card=card.name, layers=card.n_layers, heads=card.n_heads,
                lh=card.n_layers * card.n_heads, space="tp" if tp else "paper", regime=regime,
                memory_can_bind=kw["memory_can_bind"],
                budget_gb=budget, edge_only_gb=need, compile_s=compile_s,
                decision_ms_median=1e3 * float(np.median(times)),
                decision_ms_max=1e3 * float(np.max(times)),
                n_solves_mean=float(np.mean([r["n_solves"] for r in recs])),
                n_exact=sum(r["exact"] for r in recs), n_feasible=len(feas), n=len(recs),
                n_within_target=sum(r["gap"] <= GAP_TARGET for r in feas),
                **(dict(n_checked=len(checked), check_slack=slack,
                        n_within_after_check=sum(r.get("check_gap", r["gap"]) <= GAP_TARGET
                                                 for r in feas),
                        # the first check pays the check's compiles (about 15 s)
                        check_first_s=checked[0]["check_s"] if checked else 0.0,
                        check_s_max=max((r["check_s"] for r in checked[1:]), default=0.0))
                   if check else {}),
                gap_max=max((r["gap"] for r in feas), default=None), states=recs)


def check_states(recs, sts, sols, spec, tp, max_frontier, slack):
    """The offline check (``lyapunov.oracle_check.check_slot``, at most ``max_frontier``
    suffixes a layer, each line's target ``slack * GAP_TARGET`` below the checked point) of
    every feasible state whose certified gap exceeds ``GAP_TARGET``: its tightened gap and
    what it took, into ``recs``."""
    from lyapunov.oracle_check import check_slot

    for i, (rec, (q, link), sol) in enumerate(zip(recs, sts, sols, strict=True)):
        if not rec["feasible"] or rec["gap"] <= GAP_TARGET:
            continue
        chk = check_slot(q, link, spec, SLOT, sol, tp=tp, target=GAP_TARGET,
                         max_frontier=max_frontier, slack=slack)
        rec.update(check_gap=chk.gap, check_certified=bool(chk.certified), check_lines=chk.lines,
                   check_found_below=chk.found_below, check_best_found=chk.best_found,
                   check_peak=chk.peak, check_complete=bool(chk.complete), check_s=chk.seconds)
        print(f"  check state {i}: gap {rec['gap']:.3%} -> {chk.gap:.3%}, {chk.lines} exact "
              f"lines, {chk.seconds:.1f} s", flush=True)


def hier_scenario(name, tp, episode_slots=64):
    """The slot environment (`lyapunov.env.Scenario`) of a case: its card, its edge with the
    case's memory budget, its cloud, the slot of ``SLOT`` (tau 2 s, V 10), option space `tp`."""
    card, edge, cloud, regime = CASES[name]
    card, _, budget, _ = build_spec(card, edge, cloud, regime)
    return Scenario(model=card, device=edge, cloud=cloud, tau_s=2.0, V=10.0,
                    prompt_tokens=WORKLOAD.prompt_tokens, new_tokens=WORKLOAD.new_tokens,
                    mem_budget_gb=budget, episode_slots=episode_slots, tp=tp)


def hier_decision(name, tp, n_states):
    """Median and max ms of one jitted greedy decision of a freshly initialized hierarchical
    policy (`agents.policy_loader.learned_policy`: features, action masks, both levels) on
    the case's states (their queues and link put into an observation of the environment),
    after one warm-up call; and the first call's seconds (trace + compile + one decision)."""
    from flax import nnx

    from agents.actions import ActionConfig, make_space
    from agents.networks import ActorCritic, NetConfig
    from agents.policy_loader import learned_policy
    from agents.slot_env import observe_features
    from lyapunov import env as E
    from lyapunov.processes import LinkSample

    params = hier_scenario(name, tp).build()
    space = make_space(params.spec, ActionConfig(kind="hier"), params.precisions, tp=tp)
    obs0, _ = E.reset(jax.random.key(0), params)
    f = observe_features(obs0, params)
    shapes = (f.scalars.shape[-1], f.history.shape[-2], f.history.shape[-1])
    model = ActorCritic(space, *shapes, NetConfig(), nnx.Rngs(0))
    policy = learned_policy(model, "hier", shapes=shapes)
    act = jax.jit(policy.act)
    obs = []
    for q, link in states(n_states):
        last = LinkSample(link.bw_up_mbps, link.bw_down_mbps, link.rtt_ms, link.cloud_share,
                          jnp.bool_(True))
        obs.append(obs0.replace(queues=q, link_last=last, link_ewma=link))
    key = jax.random.key(1)
    t0 = time.perf_counter()
    jax.block_until_ready(act(key, obs[0], params))
    first_s = time.perf_counter() - t0
    jax.block_until_ready(act(key, obs[1 % n_states], params))  # warm-up
    times = []
    for o in obs:
        t0 = time.perf_counter()
        jax.block_until_ready(act(key, o, params))
        times.append(time.perf_counter() - t0)
    return dict(hier_compile_s=first_s, hier_ms_median=1e3 * float(np.median(times)),
                hier_ms_max=1e3 * float(np.max(times)))


def hier_training(name, tp, quick):
    """PPO environment steps per second of the hierarchical policy on the case's scenario
    (`agents.train.run`, one seed, default networks; 3 segments of one update each, the first
    one compiles, the rate is that of the other two), and the first segment's seconds."""
    from agents.actions import ActionConfig
    from agents.networks import NetConfig
    from agents.ppo import PPOConfig
    from agents.train import TrainConfig, run

    n_envs, n_steps = (4, 8) if quick else (16, 32)
    cfg = TrainConfig(scenario=hier_scenario(name, tp),
                      ppo=PPOConfig(num_envs=n_envs, num_steps=n_steps, num_updates=3,
                                    update_epochs=1 if quick else 4,
                                    num_minibatches=1 if quick else 4),
                      action=ActionConfig(kind="hier"), net=NetConfig(), num_seeds=1,
                      log_every=1)
    out = run(cfg, log=lambda *a: None)["summary"]
    return dict(train_steps_per_s=out["steps_per_s"], train_first_s=out["first_segment_s"],
                train_batch=n_envs * n_steps)


def hier_columns(name, tp, n_states, quick, train=True, train_limit_s=60.0):
    """The hierarchical policy's decision ms and PPO training steps/s on the case's card.
    Training is skipped (with the reason in ``train_note``) where `train` is False or where
    the decision's first call alone took more than `train_limit_s` / 4 (training traces the
    same policy inside the rollout and its gradient: several times that to compile)."""
    row = hier_decision(name, tp, n_states)
    if not train:
        row["train_note"] = "training not requested (--no-train)"
    elif row["hier_compile_s"] > train_limit_s / 4:
        row["train_note"] = (f"skipped: the decision alone compiles in "
                             f"{row['hier_compile_s']:.0f} s, training would take over "
                             f"{train_limit_s:.0f} s")
    else:
        t0 = time.perf_counter()
        row.update(hier_training(name, tp, quick))
        row["train_wall_s"] = time.perf_counter() - t0
    return row


def compare(rows, reference):
    """Per state: new objective <= reference objective + new reported gap (relative)."""
    ref = {(r["case"], r["space"]): r for r in reference}
    bad = []
    for r in rows:
        old = ref.get((r["case"], r["space"]))
        if old is None:
            continue
        for i, (a, b) in enumerate(zip(r["states"], old["states"], strict=False)):
            if not b["feasible"]:
                continue
            if not a["feasible"]:
                bad.append((r["case"], r["space"], i, "infeasible now", b["objective"]))
                continue
            slack = a["gap"] * abs(a["objective"]) + 1e-5 * (abs(a["objective"]) + 1.0)
            if a["objective"] > b["objective"] + slack:
                bad.append((r["case"], r["space"], i, a["objective"], b["objective"]))
            a["ref_objective"] = b["objective"]
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases and 4 states")
    ap.add_argument("--states", type=int, default=6, help="link/queue states per case")
    ap.add_argument("--spaces", nargs="+", default=["paper", "tp"], choices=["paper", "tp"],
                    help="option spaces timed (paper: no tensor-parallel FFN)")
    ap.add_argument("--cases", nargs="+", default=None, choices=sorted(CASES),
                    help="model/device cases timed (default: all)")
    ap.add_argument("--out", default="results/oracle_scaling.json", help="JSON output")
    ap.add_argument("--reference", default=None,
                    help="an earlier JSON: check objective <= reference + reported gap")
    ap.add_argument("--no-hier", action="store_true",
                    help="skip the hierarchical policy's columns (decision ms, training steps/s)")
    ap.add_argument("--train", choices=["all", "largest", "none"], default=None,
                    help="cases whose PPO training steps/s are measured (each compiles the "
                         "learner, about a minute on 2 cores): all, the largest L*H case of "
                         "the first space, or none; default all, largest with --quick")
    ap.add_argument("--kw", default="{}", help="extra solve_slot keywords, JSON")
    ap.add_argument("--check", action="store_true",
                    help="check offline, with exact memory, every state whose certified gap "
                         "exceeds GAP_TARGET (lyapunov.oracle_check: seconds a state)")
    ap.add_argument("--check-frontier", type=int, default=60_000,
                    help="with --check: suffixes a layer an exact line may hold (count); the "
                         "70B card's worst state needs 2,721 in the paper space and 6,041 with "
                         "tp at the default slack, 12,315 and 31,950 at slack 0")
    ap.add_argument("--check-slack", type=float, default=0.5,
                    help="with --check: how far below the checked point an exact line's "
                         "target lies, as a fraction of GAP_TARGET (0 <= F < 1; 0: every line "
                         "exact, the tightest gaps, more suffixes)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.check_slack < 1.0:
        ap.error(f"--check-slack must be in [0, 1), got {args.check_slack}")
    names = args.cases or (QUICK if args.quick else list(CASES))
    n_states = 4 if args.quick and args.states == 6 else args.states
    train = args.train or ("largest" if args.quick else "all")
    largest = max(names, key=lambda n: _lh(CASES[n][0]))
    rows = []
    for tp in [s == "tp" for s in args.spaces]:
        for name in names:
            row = run_case(name, tp, n_states, json.loads(args.kw),
                           args.check_frontier if args.check else 0, args.check_slack)
            if not args.no_hier:
                do_train = train == "all" or (train == "largest" and name == largest
                                              and tp == (args.spaces[0] == "tp"))
                row.update(hier_columns(name, tp, n_states, args.quick, train=do_train))
                if not do_train:
                    row["train_note"] = (f"--train {train}: measured on {largest} "
                                         f"({args.spaces[0]}) only" if train == "largest"
                                         else "--train none")
            rows.append(row)
            print(f"{name:22s} {row['space']:5s} compile {row['compile_s']:6.2f} s  decision "
                  f"{row['decision_ms_median']:8.1f} ms (max {row['decision_ms_max']:8.1f})  "
                  f"solves {row['n_solves_mean']:5.1f}  exact {row['n_exact']}/{row['n']}  "
                  f"gap {row['gap_max'] if row['gap_max'] is not None else float('nan'):.2e}  "
                  f"gap <= {GAP_TARGET:.1%} {row['n_within_target']}/{row['n_feasible']}",
                  flush=True)
            if args.check:
                print(f"{'':22s} {'check':5s} {row['n_checked']} states checked offline: gap <= "
                      f"{GAP_TARGET:.1%} in {row['n_within_after_check']}/{row['n_feasible']} "
                      f"(slowest {row['check_s_max']:.1f} s; the first, with the compiles, "
                      f"{row['check_first_s']:.1f} s)", flush=True)
            if "hier_ms_median" in row:
                tr = (f"train {row['train_steps_per_s']:7.0f} steps/s (first segment "
                      f"{row['train_first_s']:.0f} s)" if "train_steps_per_s" in row
                      else f"train: {row['train_note']}")
                print(f"{'':22s} {'hier':5s} compile {row['hier_compile_s']:6.2f} s  decision "
                      f"{row['hier_ms_median']:8.2f} ms (max {row['hier_ms_max']:8.2f})  {tr}",
                      flush=True)
    base = min(rows, key=lambda r: (r["lh"], r["decision_ms_median"]))
    print(f"\n{'case':22s} {'L*H':>6s} {'space':5s} {'compile s':>9s} {'x':>5s} "
          f"{'decision ms':>11s} {'x':>6s} {'exact':>6s} {'max gap':>9s} "
          f"{f'<={GAP_TARGET:.1%}':>7s} {'hier ms':>8s} {'train steps/s':>13s}")
    for r in rows:
        print(f"{r['case']:22s} {r['lh']:6d} {r['space']:5s} {r['compile_s']:9.2f} "
              f"{r['compile_s'] / base['compile_s']:5.1f} {r['decision_ms_median']:11.1f} "
              f"{r['decision_ms_median'] / base['decision_ms_median']:6.1f} "
              f"{r['n_exact']:>2d}/{r['n']:<3d} "
              f"{r['gap_max'] if r['gap_max'] is not None else float('nan'):9.1e} "
              f"{r['n_within_target']:>3d}/{r['n_feasible']:<3d} "
              f"{r.get('hier_ms_median', float('nan')):8.2f} "
              f"{r.get('train_steps_per_s', float('nan')):13.0f}")
    notes = sorted({r["train_note"] for r in rows if "train_note" in r})
    for n in notes:
        print(f"train steps/s not measured: {n}")
    bad = []
    if args.reference:
        bad = compare(rows, json.loads(pathlib.Path(args.reference).read_text())["rows"])
        print(f"\nreference check ({args.reference}): {len(bad)} violations")
        for b in bad:
            print("  ", b)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(rows=rows, violations=bad, jax=jax.__version__), indent=1))
    print(f"wrote {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
