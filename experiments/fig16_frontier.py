"""Figure 16: far-sighted learning against the drift-plus-penalty frontier (issue 14, item 4;
docs/design.md §3, §4.6).

Drift-plus-penalty is myopic by design: each slot it minimizes V p + Q (A - mu), and it is
optimal only as V grows (penalty within O(1/V) of p*, backlog O(V)). Sweeping V traces a
frontier of time-average penalty against time-average backlog. Does a learner that optimizes
the long-run objective itself reach a point no DPP controller reaches?

Setting: figure 5's (`experiments.fig05_v_tradeoff`: LLaMA-7B on the Orin NX against the
datacenter, the penalty is the cloud cost per request in units of 1e-4 USD, Poisson arrivals,
bandwidth and cloud share on three levels each), but the two Markov chains persist: with
persistence rho their transition matrix is rho I + (1 - rho) 1 pi^T (the same stationary law
pi, a state lasts 1 / ((1 - rho)(1 - pi_i)) slots on average). With i.i.d. states (rho = 0,
figure 5) drift-plus-penalty is asymptotically optimal and there is less for a far-sighted
policy to gain; a persistent state is what a policy that plans ahead could exploit (serve
more while the cloud is cheap, idle on the free edge while it is dear).

Policies, each at every value of its parameter:
- the DPP controllers over `Vs`: the clairvoyant oracle (sees the slot's link: a bound no
  causal controller reaches at the same V), dp-bayes (the expected slot DPP under the chains'
  predictive law, which it is told) and dp-estimate (the last measured link);
- "hier-longrun": hierarchical PPO on the long-run reward (`agents.ppo.train_reward`,
  reward_mode "longrun", gamma `gamma`, GAE) -(1 - gamma)(p_t + beta Q_{t+1}) at each backlog
  weight beta in `betas` (trained with V = 1 / beta, the exchange rate of V p + Q, which is
  also the network's V feature);
- "hier-dpp": hierarchical PPO on the per-slot DPP reward (gamma 0, reward_mode "relative",
  fig13's learners) at each V in `learner_Vs`.
Learners of one kind are trained as one vmapped batch (`agents.ppo.make_train_on`, one
compilation per kind) for `train_steps` environment steps each, and evaluated greedily in one
jitted, vmapped rollout. Every policy is evaluated from empty queues for `n_slots` slots on the
same `seeds` evaluation keys (common random numbers; key base `eval_seed`, which training
never uses: training draws its environments from `jax.random.key(train_seed)` splits).

The frontier and "beyond" (`frontier`, `classify`). Each policy and parameter gives a point
(b, p): the mean over seeds of the time-average backlog and penalty, with 95% t-half-widths
(hb, hp). The frontier of a set of points is its lower-left Pareto set (no other point has
both a backlog and a penalty at most its own), sorted by backlog, and its value F(b) at a
backlog b is the interpolation between adjacent Pareto points linear in (log b, log p) (exact
for p proportional to a power of b; the DPP curve is convex, so a chord in linear axes would
lie above it and favour the learner), and undefined outside the swept backlogs (a larger V
would reach further: the frontier is only known between the smallest and the largest
backlog of the sweep). Both axes' CIs enter, each against the learner:
- F_lo: the frontier of the DPP points' lower-left CI corners (b - hb, p - hp);
- F_hi: the frontier of their upper-right corners (b + hb, p + hp);
- a learner point is **beyond** the DPP frontier if p + hp < F_lo(b + hb): its penalty's
  upper CI bound is below the most favourable DPP frontier at the largest backlog its CI
  allows (F is non-increasing, so that is where F_lo is lowest); margin = F_lo(b + hb) -
  (p + hp) (> 0 beyond);
- **dominated** if p - hp > F_hi(b - hb) (its lower CI bound is above the least favourable
  frontier at its smallest plausible backlog);
- **outside** if the mean backlog b lies outside the means' frontier's backlogs (no swept V
  reaches it: nothing to compare with);
- **inconclusive** otherwise.
One more verdict comes first: **unstable**, when the learner's backlog grows faster than any
DPP controller's at any swept V (the lower CI bound of its growth rate, the slope over the
second half of the horizon, `lyapunov.queues.backlog_growth_rate`, above every DPP point's
upper bound). Its time averages then depend on the horizon, not a point of the long-run
trade-off (a learner that settles on the free edge, which cannot carry the load, pays no
penalty and lets the queue grow). The DPP controllers are stable at every V (Neely 2010,
ch. 4): a large V only fills their queue more slowly to a higher level.
The same test is run against the causal DPP controllers alone (dp-bayes, dp-estimate).

A sharper, paired test rides beside it (`paired_margin`): every policy runs on the same
evaluation keys (the same arrival and link paths), so the spread over seeds that all policies
share cancels. Per seed s, F_s is the frontier of the DPP points on that seed and m_s =
F_s(b_s) - p_s the learner's margin at its own backlog on that seed (seeds where b_s is outside
F_s's backlogs are left out; outside when most are); the paired verdict is beyond when the
95% t-interval of the mean margin lies above 0, dominated when below, inconclusive otherwise.
The corner test is the conservative one (no pairing, both axes' CIs against the learner): the
claim (`experiments.claims.frontier_claim`) holds when a point is beyond by it, and fails
when no point is beyond by either test and each is dominated, outside or unstable by one.

Writes `frontier.csv` (one row per policy, parameter, persistence, seed), `frontier_summary.csv`
(means with CIs per policy and parameter; for the learners the frontier values, margins and
verdicts), `config.json` (with the verdict line) and `frontier.png`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import fig05_v_tradeoff as fig05
from experiments.catalog import Experiment
from experiments.common import stack
from experiments.plotting import finish, log_axis, policy_line, pyplot
from experiments.sim import SOLVER_KW, seed_keys
from experiments.stats import finite_mean_ci, mean_ci
from experiments.tables import read_config, read_rows, write_config, write_rows

NAME = "frontier"
DPP_POLICIES = ("oracle", "dp-bayes", "dp-estimate")
CAUSAL = ("dp-bayes", "dp-estimate")
LEARNERS = ("hier-longrun", "hier-dpp")
LEARNER_PARAMS = {"hier-longrun": "long-run reward, gamma 0.99, backlog weight beta",
                  "hier-dpp": "per-slot DPP reward, gamma 0, V"}
REL_TOL = 0.01
VERDICTS = ("beyond", "inconclusive", "dominated", "outside", "unstable")


@dataclasses.dataclass(frozen=True)
class Config:
    """model, device, cloud, rtt_ms, bw_levels_mbps, share_levels, probs, rate, tau_s,
    cost_unit_usd: figure 5's setting (`experiments.fig05_v_tradeoff.Config`); persistence:
    rho of the bandwidth and cloud-share chains, one run per value (0: i.i.d., figure 5);
    Vs: the DPP controllers' V sweep; policies: the DPP controllers run; betas: backlog
    weights of the long-run learners (penalty units per request and slot); gamma: their
    discount; learner_Vs: V of the per-slot DPP learners (gamma 0); train_steps: PPO
    environment steps per learner (0: no learners); num_envs, num_steps: PPO rollout shape;
    episode_slots: training episode length (slots); hidden: the networks' width;
    n_slots: evaluation horizon (slots, from empty queues); seeds: evaluation seeds;
    eval_seed, train_seed: key bases of evaluation and training; bayes_draws: dp-bayes's
    (bandwidth, share) nodes (a Markov chain uses its exact row)."""

    model: str = "llama-7b"
    device: str = "orin-nx"
    cloud: str = "datacenter"
    rtt_ms: float = 40.0
    bw_levels_mbps: tuple[float, ...] = (2.0, 10.0, 50.0)
    share_levels: tuple[float, ...] = (1.0, 0.3, 0.1)
    probs: tuple[float, ...] = (0.3, 0.4, 0.3)
    rate: float = 0.8
    tau_s: float = 2.0
    cost_unit_usd: float = 1e-4
    persistence: tuple[float, ...] = (0.9, 0.0)
    Vs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    policies: tuple[str, ...] = DPP_POLICIES
    betas: tuple[float, ...] = (3.0, 1.0, 0.3, 0.1)
    gamma: float = 0.99
    learner_Vs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    train_steps: int = 262144
    num_envs: int = 16
    num_steps: int = 64
    episode_slots: int = 1000
    hidden: int = 64
    n_slots: int = 1000
    seeds: int = 10
    eval_seed: int = 1000
    train_seed: int = 0
    bayes_draws: tuple[int, int] = (3, 3)


QUICK = Config(persistence=(0.9,), Vs=(0.1, 1.0, 10.0, 100.0), betas=(1.0,), learner_Vs=(),
               train_steps=4096, num_envs=8, num_steps=32, episode_slots=256, hidden=32,
               n_slots=250, seeds=3)
FULL = Config()


def scenario(cfg: Config, V: float, rho: float):
    """Figure 5's scenario at V with both chains persisting with `rho` (module docstring)."""
    base = fig05.Config(model=cfg.model, device=cfg.device, cloud=cfg.cloud, rtt_ms=cfg.rtt_ms,
                        bw_levels_mbps=cfg.bw_levels_mbps, share_levels=cfg.share_levels,
                        probs=cfg.probs, rate=cfg.rate, tau_s=cfg.tau_s,
                        cost_unit_usd=cfg.cost_unit_usd)
    sc = fig05.scenario(base, V)
    pi = np.asarray(cfg.probs, float)
    trans = tuple(tuple(float(rho * (i == j) + (1.0 - rho) * pi[j]) for j in range(len(pi)))
                  for i in range(len(pi)))
    link = dataclasses.replace(
        sc.link,
        bandwidth=dataclasses.replace(sc.link.bandwidth, transition=trans),
        share=dataclasses.replace(sc.link.share, transition=trans))
    return dataclasses.replace(sc, link=link)


# --- the frontier and the dominance test --------------------------------------------------


def frontier(b, p) -> tuple[np.ndarray, np.ndarray]:
    """(backlogs, penalties) of the lower-left Pareto set of the points (b_i, p_i), sorted by
    backlog (increasing) with penalties strictly decreasing: a point is kept when no other has
    a backlog and a penalty at most its own (one of them smaller)."""
    b, p = np.asarray(b, float).ravel(), np.asarray(p, float).ravel()
    ok = np.isfinite(b) & np.isfinite(p)
    order = np.lexsort((p[ok], b[ok]))
    fb, fp = [], []
    for x, y in zip(b[ok][order], p[ok][order], strict=True):
        if not fp or y < fp[-1]:
            fb.append(x)
            fp.append(y)
    return np.asarray(fb), np.asarray(fp)


def frontier_value(fb, fp, b, floor: float = 1e-6, rel_tol: float = REL_TOL) -> float:
    """F(b) of a frontier (`frontier`): linear in (log backlog, log penalty) between adjacent
    points, NaN outside [smallest, largest backlog] widened by `rel_tol` (relative: a backlog
    within 1% of the smallest counts as at it; a policy that serves as fast as the smallest V
    has the same backlog up to rounding). Backlogs and penalties are floored at `floor` (times
    the largest) before the logarithm."""
    fb, fp = np.asarray(fb, float), np.asarray(fp, float)
    if fb.size == 0 or not np.isfinite(b):
        return float("nan")
    if b < fb[0] * (1.0 - rel_tol) or b > fb[-1] * (1.0 + rel_tol):
        return float("nan")
    if b <= fb[0]:
        return float(fp[0])
    if b >= fb[-1]:
        return float(fp[-1])
    lb = np.log(np.maximum(fb, floor * max(fb.max(), 1e-300)))
    lp = np.log(np.maximum(fp, floor * max(fp.max(), 1e-300)))
    x = np.log(max(b, floor * max(fb.max(), 1e-300)))
    return float(np.exp(np.interp(x, lb, lp)))


def classify(point, dpp_points) -> dict:
    """The verdict of a learner point against the DPP frontier (module docstring).

    point: (b, hb, p, hp), mean backlog and penalty with their 95% half-widths;
    dpp_points: a sequence of such tuples. Returns {"verdict": one of VERDICTS, "margin":
    F_lo(b + hb) - (p + hp) (> 0: beyond), "margin_mean": F(b) - p (the means' frontier at the
    mean backlog), "frontier_lo", "frontier_mean"}."""
    b, hb, p, hp = (float(x) if x is not None and np.isfinite(x) else 0.0 for x in point)
    d = np.asarray([[np.nan if x is None else x for x in q] for q in dpp_points], float)
    d = np.where(np.isnan(d) & (np.arange(4) % 2 == 1), 0.0, d)  # no CI: half-width 0
    lo = frontier(d[:, 0] - d[:, 1], d[:, 2] - d[:, 3])
    hi = frontier(d[:, 0] + d[:, 1], d[:, 2] + d[:, 3])
    mid = frontier(d[:, 0], d[:, 2])
    f_lo = frontier_value(*lo, b + hb)
    f_hi = frontier_value(*hi, b - hb)
    f_mid = frontier_value(*mid, b)
    if not np.isfinite(f_mid):
        verdict = "outside"
    elif np.isfinite(f_lo) and p + hp < f_lo:
        verdict = "beyond"
    elif np.isfinite(f_hi) and p - hp > f_hi:
        verdict = "dominated"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "margin": f_lo - (p + hp), "margin_mean": f_mid - p,
            "frontier_lo": f_lo, "frontier_mean": f_mid}


# --- runs ---------------------------------------------------------------------------------


def _row(policy, param, value, rho, seed, info_pen, info_q, info_ok):
    from lyapunov.queues import backlog_growth_rate

    return {"policy": policy, "param": param, "value": float(value), "persistence": rho,
            "seed": seed, "penalty_mean": float(np.mean(info_pen)),
            "backlog_mean": float(np.mean(info_q)),
            "growth": float(backlog_growth_rate(np.asarray(info_q, float))),
            "infeasible_frac": float(1.0 - np.mean(info_ok))}


def run_dpp(cfg: Config, rho: float, keys, progress) -> tuple[list[dict], dict]:
    """Rows of the DPP controllers over cfg.Vs at persistence rho, and their seconds."""
    from lyapunov import registry
    from lyapunov.simulate import batched_rollout

    batch = stack([scenario(cfg, V, rho).build() for V in cfg.Vs for _ in range(cfg.seeds)])
    all_keys = jnp.tile(keys, (len(cfg.Vs), 1))
    rows, seconds = [], {}
    for name in progress(cfg.policies, desc=f"DPP controllers, rho {rho:g}",
                         total=len(cfg.policies)):
        kw = dict(SOLVER_KW)
        if name == "dp-bayes":
            kw.update(n_bw=cfg.bayes_draws[0], n_share=cfg.bayes_draws[1])
        (pol,) = registry.resolve(name, **kw)
        t0 = time.perf_counter()
        info = batched_rollout(pol, batch, cfg.n_slots, all_keys)[0]
        seconds[f"{name}/rho{rho:g}"] = time.perf_counter() - t0
        for i, V in enumerate(cfg.Vs):
            for s in range(cfg.seeds):
                j = i * cfg.seeds + s
                rows.append(_row(name, "V", V, rho, s, info.penalty[j], info.backlog[j],
                                 info.feasible[j]))
    return rows, seconds


def _ppo(cfg: Config, kind: str):
    from agents.ppo import PPOConfig

    per_update = cfg.num_envs * cfg.num_steps
    n = max(1, round(cfg.train_steps / per_update))
    if kind == "hier-longrun":
        return PPOConfig(num_envs=cfg.num_envs, num_steps=cfg.num_steps, num_updates=n,
                         gamma=cfg.gamma, reward_mode="longrun")
    return PPOConfig(num_envs=cfg.num_envs, num_steps=cfg.num_steps, num_updates=n)


def learner_values(cfg: Config, kind: str) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """(parameter name, its values, the scenario V of each) of a learner kind."""
    if kind == "hier-longrun":
        return "beta", cfg.betas, tuple(1.0 / b for b in cfg.betas)
    return "V", cfg.learner_Vs, cfg.learner_Vs


def _with_v(params, V):
    return params.replace(slot=params.slot.replace(V=jnp.asarray(V, jnp.float32)))


def run_learners(cfg: Config, rho: float, keys, progress) -> tuple[list[dict], dict]:
    """Train each learner kind at each of its parameter values (one vmapped batch per kind)
    and evaluate it greedily on the evaluation keys; rows and seconds."""
    from agents.actions import ActionConfig
    from agents.networks import NetConfig
    from agents.policy_loader import learned_policy
    from agents.ppo import make_train_on, model_from_runner
    from agents.slot_env import lyapunov_adapter
    from lyapunov.simulate import rollout

    env = lyapunov_adapter()
    net = NetConfig(hidden=cfg.hidden, low_hidden=cfg.hidden)
    action = ActionConfig(kind="hier")
    rows, seconds = [], {}
    for kind in progress(LEARNERS, desc=f"learners, rho {rho:g}", total=len(LEARNERS)):
        param, values, Vs = learner_values(cfg, kind)
        if not values:
            continue
        t0 = time.perf_counter()
        sc = dataclasses.replace(scenario(cfg, 1.0, rho), episode_slots=cfg.episode_slots)
        p_train = sc.build()
        train = make_train_on(_ppo(cfg, kind), env, p_train, action, net)
        ts = train.setup

        def fit(key, V, p_train=p_train, train=train):
            runner, metrics = train(key, _with_v(p_train, V))
            return runner.nets, metrics

        tkeys = jax.random.split(jax.random.key(cfg.train_seed), len(Vs))
        nets, _ = jax.jit(jax.vmap(fit))(tkeys, jnp.asarray(Vs, jnp.float32))
        t1 = time.perf_counter()
        p_eval = scenario(cfg, 1.0, rho).build()

        def evaluate(nets, V, key, p_eval=p_eval, ts=ts, kind=kind):
            pol = learned_policy(model_from_runner(ts, nets), kind, shapes=ts.shapes)
            info = rollout(pol, _with_v(p_eval, V), cfg.n_slots, key)[0]
            return info.penalty, info.backlog, info.feasible

        per_seed = jax.vmap(evaluate, in_axes=(None, None, 0))
        pen, q, ok = jax.tree.map(np.asarray, jax.jit(jax.vmap(per_seed, in_axes=(0, 0, None)))(
            nets, jnp.asarray(Vs, jnp.float32), keys))
        seconds[f"{kind}/rho{rho:g}/train"] = t1 - t0
        seconds[f"{kind}/rho{rho:g}/evaluate"] = time.perf_counter() - t1
        for i, v in enumerate(values):
            for s in range(cfg.seeds):
                rows.append(_row(kind, param, v, rho, s, pen[i, s], q[i, s], ok[i, s]))
    return rows, seconds


def run(cfg: Config, out_dir: Path, progress) -> None:
    bad = [p for p in cfg.policies if p not in DPP_POLICIES]
    if bad:
        raise ValueError(f"frontier: policies {bad} not in {DPP_POLICIES}")
    out_dir = Path(out_dir)
    keys = seed_keys(cfg.seeds, base=cfg.eval_seed)
    rows, seconds = [], {}
    for rho in cfg.persistence:
        r, s = run_dpp(cfg, rho, keys, progress)
        rows += r
        seconds.update(s)
        if cfg.train_steps > 0:
            r, s = run_learners(cfg, rho, keys, progress)
            rows += r
            seconds.update(s)
    summary = summarize(rows)
    write_rows(out_dir / "frontier.csv", rows)
    write_rows(out_dir / "frontier_summary.csv", summary)
    write_config(out_dir, cfg, experiment=NAME, verdict=verdict_line(summary),
                 seconds={k: round(v, 1) for k, v in seconds.items()})


def summarize(rows: list[dict]) -> list[dict]:
    """Per (persistence, policy, parameter value): mean penalty and backlog with 95% CIs over
    seeds; for a learner its verdict and margins against the frontier of every DPP controller
    ("all") and of the causal ones ("causal"), `classify`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["persistence"], r["policy"], r["param"], r["value"]), []).append(r)
    out = []
    for (rho, pol, param, value), sel in groups.items():
        pm, ph = mean_ci([r["penalty_mean"] for r in sel])
        bm, bh = mean_ci([r["backlog_mean"] for r in sel])
        gm, gh = mean_ci([r["growth"] for r in sel])
        out.append({"persistence": rho, "policy": pol, "param": param, "value": value,
                    "n": len(sel), "penalty": float(pm), "penalty_ci": float(ph),
                    "backlog": float(bm), "backlog_ci": float(bh), "growth": float(gm),
                    "growth_ci": float(gh),
                    "infeasible_frac": float(np.mean([r["infeasible_frac"] for r in sel]))})
    for row in out:
        if row["policy"] not in LEARNERS:
            continue
        pt = (row["backlog"], row["backlog_ci"], row["penalty"], row["penalty_ci"])
        for tag, refs in (("all", DPP_POLICIES), ("causal", CAUSAL)):
            ref = [r for r in out if r["persistence"] == row["persistence"]
                   and r["policy"] in refs]
            if not ref:
                continue
            c = classify(pt, [(r["backlog"], r["backlog_ci"], r["penalty"], r["penalty_ci"])
                              for r in ref])
            fastest = max(r["growth"] + _finite(r["growth_ci"]) for r in ref)
            unstable = row["growth"] - _finite(row["growth_ci"]) > fastest
            row[f"verdict_{tag}"] = "unstable" if unstable else c["verdict"]
            row[f"margin_{tag}"] = c["margin"]
            row[f"margin_mean_{tag}"] = c["margin_mean"]
            row[f"frontier_{tag}"] = c["frontier_mean"]
            m, h, n = paired_margin(rows, row, refs)
            row[f"paired_margin_{tag}"], row[f"paired_margin_ci_{tag}"] = m, h
            row[f"paired_verdict_{tag}"] = (
                "unstable" if unstable else "outside" if 2 * n < row["n"] else
                "beyond" if m - _finite(h) > 0 else "dominated" if m + _finite(h) < 0
                else "inconclusive")
    return out


def paired_margin(rows: list[dict], point: dict, refs) -> tuple[float, float, int]:
    """(mean, 95% half-width, n) over the evaluation seeds of F_s(b_s) - p_s: the learner's
    penalty p_s and backlog b_s on seed s against the frontier F_s of the `refs` controllers'
    points on the same seed (common random numbers: the same arrival and link paths), seeds
    where b_s is outside F_s's backlogs left out. > 0: below the frontier."""
    per_seed = []
    for r in rows:
        if (r["persistence"], r["policy"], r["param"], r["value"]) != (
                point["persistence"], point["policy"], point["param"], point["value"]):
            continue
        d = [(x["backlog_mean"], x["penalty_mean"]) for x in rows
             if x["persistence"] == r["persistence"] and x["seed"] == r["seed"]
             and x["policy"] in refs]
        if d:
            fb, fp = frontier(*zip(*d, strict=True))
            per_seed.append(frontier_value(fb, fp, r["backlog_mean"]) - r["penalty_mean"])
    m, h, n = finite_mean_ci(per_seed)
    return m, h, n


def _finite(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else 0.0


def verdict_line(summary: list[dict]) -> str:
    """One sentence: does any learner point lie beyond the DPP frontier (with CIs)?"""
    learners = [r for r in summary if r["policy"] in LEARNERS and "verdict_all" in r]
    if not learners:
        return "no learner was evaluated"
    beyond = [r for r in learners if r["verdict_all"] == "beyond"]
    beyond_c = [r for r in learners if r.get("verdict_causal") == "beyond"]

    def name(r):
        return f"{r['policy']} {r['param']}={r['value']:g} (rho {r['persistence']:g})"

    counts = {v: sum(r["verdict_all"] == v for r in learners) for v in VERDICTS}
    scored = [r for r in learners if np.isfinite(r["margin_all"])]
    head = (f"learner points beyond the DPP frontier (oracle, dp-bayes, dp-estimate): "
            f"{', '.join(map(name, beyond)) if beyond else 'none'}"
            f" of {len(learners)} ({', '.join(f'{k} {n}' for k, n in counts.items() if n)}); "
            f"beyond the causal frontier (dp-bayes, dp-estimate): "
            f"{', '.join(map(name, beyond_c)) if beyond_c else 'none'}")
    if scored:
        best = max(scored, key=lambda r: r["margin_all"])
        head += (f"; largest margin {name(best)}: F_lo(b + hb) - (p + hp) = "
                 f"{best['margin_all']:.3g} (means: F(b) - p = {best['margin_mean_all']:.3g}; "
                 f"penalty {best['penalty']:.3g} ± {best['penalty_ci']:.2g} at backlog "
                 f"{best['backlog']:.3g} ± {best['backlog_ci']:.2g})")
    else:
        head += "; no learner point lies within the swept backlogs' CI range"
    paired = [r for r in learners if np.isfinite(r.get("paired_margin_all", np.nan))]
    pcounts = {v: sum(r.get("paired_verdict_all") == v for r in learners) for v in VERDICTS}
    if paired:
        pb = max(paired, key=lambda r: r["paired_margin_all"])
        head += (f"; paired over seeds: "
                 f"{', '.join(f'{k} {n}' for k, n in pcounts.items() if n)}, largest paired "
                 f"margin {name(pb)}: F_s(b_s) - p_s = {pb['paired_margin_all']:.3g} ± "
                 f"{_finite(pb['paired_margin_ci_all']):.2g}")
    return head


# --- plot -----------------------------------------------------------------------------------


def plot(run_dir: Path) -> list[Path]:
    plt = pyplot()
    run_dir = Path(run_dir)
    summ = read_rows(run_dir / "frontier_summary.csv")
    meta = read_config(run_dir)
    rhos = list(dict.fromkeys(r["persistence"] for r in summ))
    fig, axes = plt.subplots(1, len(rhos), figsize=(5.5 * len(rhos), 4.0), squeeze=False)
    marks = {"hier-longrun": "*", "hier-dpp": "D"}
    for ax, rho in zip(axes[0], rhos, strict=True):
        sel = [r for r in summ if r["persistence"] == rho]
        for pol in DPP_POLICIES:
            pts = sorted((r for r in sel if r["policy"] == pol), key=lambda r: r["value"])
            if not pts:
                continue
            line = policy_line(pol)
            ax.errorbar([r["backlog"] for r in pts], [r["penalty"] for r in pts],
                        xerr=[r["backlog_ci"] or 0 for r in pts],
                        yerr=[r["penalty_ci"] or 0 for r in pts], fmt="o-", ms=3,
                        color=line.get("color"), label=f"{pol} (V sweep)")
            for r in pts:
                ax.annotate(f"{r['value']:g}", (r["backlog"], r["penalty"]), fontsize=5,
                            xytext=(2, 2), textcoords="offset points",
                            color=line.get("color"))
        d = [(r["backlog"], r["penalty"]) for r in sel if r["policy"] in DPP_POLICIES]
        if d:
            fb, fp = frontier(*zip(*d, strict=True))
            ax.plot(fb, fp, "k:", lw=1, label="DPP frontier (means)")
        short = {v: v[:3] for v in VERDICTS}
        for j, pol in enumerate(LEARNERS):
            for k, r in enumerate(x for x in sel if x["policy"] == pol):
                ax.errorbar(r["backlog"], r["penalty"], xerr=r["backlog_ci"] or 0,
                            yerr=r["penalty_ci"] or 0, fmt=marks[pol], ms=7, color=("C3", "C2")[j],
                            label=f"{pol} ({LEARNER_PARAMS[pol]}; verdict: CI corners / "
                                  "paired)" if k == 0 else None)
                ax.annotate(f"{r['param']}={r['value']:g}: "
                            f"{short.get(r.get('verdict_all'), '?')}/"
                            f"{short.get(r.get('paired_verdict_all'), '?')}",
                            (r["backlog"], r["penalty"]), fontsize=5, color=("C3", "C2")[j],
                            xytext=(4, -8), textcoords="offset points")
        ax.set_xscale("log")
        log_axis(ax, "x")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_ylim(bottom=0.0)  # a penalty is >= 0 (symlog: a free policy's 0 stays visible)
        ax.set_xlabel("time-average backlog (requests)")
        ax.set_ylabel("time-average penalty (1e-4 USD per request)")
        ax.set_title(f"persistence rho = {rho:g}", fontsize=9)
    cfg = meta["config"]
    return [finish(fig, axes, run_dir / "frontier.png",
                   f"Far-sighted learners vs the DPP frontier: {cfg['model']} on {cfg['device']}, "
                   f"{cfg['cloud']}, Poisson {cfg['rate']:g} per {cfg['tau_s']:g} s slot, "
                   f"Markov link", ncol=2,
                   note=f"{cfg['n_slots']} slots from empty queues, {cfg['seeds']} held-out "
                        f"seeds, 95% CIs; learners {cfg['train_steps']} PPO steps each. "
                        + meta.get("verdict", ""))]


EXPERIMENT = Experiment(NAME, 16, "Far-sighted learners against the DPP frontier", QUICK, FULL,
                        run, plot)
