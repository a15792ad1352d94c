"""The slot environment (`lyapunov.env`) as PPO sees it: the adapter, the network features of
an observation, and the drift-plus-penalty rewards (docs/design.md §3).

`lyapunov_adapter()` is the `agents.ppo.EnvAdapter` of `lyapunov.env`: it auto-resets after
`episode_slots`, maps an `Obs` to `agents.networks.Features` (`observe_features`), reports the
outage flag the action masks use (`observed_outage`), the per-update metrics and the option
space (``EnvParams.tp``: the action space follows it), and supplies `relative_reward` for
`PPOConfig.reward_mode == "relative"` and `longrun_cost` for "longrun".

Rewards. "dpp" is the environment's own reward, -DPP / its reward_scale. "relative" (for
gamma = 0, where PPO is a contextual bandit on the per-slot drift-plus-penalty, the objective
the Lyapunov controller minimizes each slot, Neely 2010 ch. 4) is

    r = -(DPP - Q A - DPP_ref) / scale_ref,

where DPP_ref is the slot's DPP of the edge-only partition (link-independent, so computable
from the queues) with the arrivals' Q A term cancelled, and scale_ref = V l_edge + Q tau /
l_edge + sum_i Z_i x_i,edge. Per state this is -DPP up to a shift and a positive factor that
do not depend on the action, so every state's best action is unchanged (the bandit's optimal
policy is the DPP minimizer), while the reward no longer grows with the backlog Q and the
noise Q (A - E[A]) of the arrivals is removed.

"longrun" (`longrun_cost`, any gamma < 1: the objective the DPP controller approximates, not
its per-slot bound) charges the slot's penalty and the backlog it leaves,

    cost_t = p_t + beta Q_{t+1}   (Q_{t+1}: the environment's StepInfo.backlog_next),

beta in penalty units per request of backlog and slot (default 1 / V: V p + Q is the DPP's
exchange rate). Q_{t+1}, not Q_t: Q_t is fixed before the slot's action, Q_{t+1} is what the
action changes; the two have the same time average up to (Q_T - Q_0) / T. A policy that
minimizes the time average of cost_t minimizes the time-average penalty plus beta times the
time-average backlog: beta is the multiplier of a backlog constraint, and sweeping it traces
the lower-left convex hull of the achievable (backlog, penalty) pairs. `agents.ppo.train_reward`
turns it into the reward -(1 - gamma) cost_t / PPOConfig.reward_scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agents.networks import Features
from agents.ppo import EnvAdapter
from costmodel.costs import request_costs, structure_terms
from costmodel.link import LinkState
from costmodel.partition import edge_only
from lyapunov import env as E
from lyapunov.oracle import slot_dpp


def observe_features(obs: E.Obs, params: E.EnvParams) -> Features:
    """Features of a `lyapunov.env.Obs` (one sample): normalized and log-scaled.

    scalars (17): log1p of the four queues; log1p(V); arrival estimate / mean rate; last and
    EWMA downlink bandwidth as log1p(bw / mean) and log1p(bw) / 5 (absolute scale); last and
    EWMA RTT / mean RTT; last and EWMA cloud share on a log scale; link up in the last slot;
    memory headroom (budget / edge-only memory, capped at 2); the edge's measured thermal
    state (``Obs.heat``).
    history [W, 4]: log1p(bw / mean) of the past W slots, their log-scaled cloud share,
    outage flag, log1p(measured per-request latency / 10 s).
    The entries added last (the thermal state, the latency channel) are dropped for a
    checkpoint trained before them (`agents.policy_loader.learned_policy`).
    """
    spec = params.spec
    bw_s = jnp.maximum(params.bw_mean_mbps, 1e-3)
    rtt_s = jnp.maximum(params.rtt_mean_ms, 1e-3)
    q = obs.queues
    last, ewma = obs.link_last, obs.link_ewma
    _, layer_mem = structure_terms(spec.n_heads, 0, spec, 0.0, 0.0)
    full = spec.n_layers * layer_mem + 2.0 * spec.edge.weight_bytes * spec.vocab * spec.d_model
    headroom = jnp.minimum(spec.edge.mem_budget / full, 2.0)
    scalars = jnp.stack([
        jnp.log1p(q.q), jnp.log1p(q.z_e), jnp.log1p(q.z_a), jnp.log1p(q.z_c),
        jnp.log1p(params.slot.V),
        obs.lam_hat / jnp.maximum(params.lam_mean, 1e-6),
        jnp.log1p(last.bw_down_mbps / bw_s), jnp.log1p(ewma.bw_down_mbps / bw_s),
        jnp.log1p(last.bw_down_mbps) / 5.0, jnp.log1p(ewma.bw_down_mbps) / 5.0,
        last.rtt_ms / rtt_s, ewma.rtt_ms / rtt_s,
        _log_share(last.cloud_share), _log_share(ewma.cloud_share),
        last.up.astype(jnp.float32), headroom, obs.heat,
    ]).astype(jnp.float32)
    hist = jnp.stack([jnp.log1p(obs.bw_hist / bw_s), _log_share(obs.share_hist),
                      (obs.bw_hist <= 0).astype(jnp.float32),
                      jnp.log1p(obs.lat_hist / 10.0)], axis=-1).astype(jnp.float32)
    return Features(scalars, hist)


def _log_share(share):
    """1 + ln(share) / 3.5: a contended cloud's share spans decades (0.001 .. 1), and the
    cloud's speed is proportional to it, so the policy needs its logarithm (-1 .. 1)."""
    return 1.0 + jnp.log(jnp.maximum(share, 1e-4)) / 3.5


def observed_outage(obs: E.Obs):
    """bool []: the link was down in the last slot."""
    return ~obs.link_last.up


def relative_reward(obs: E.Obs, info, params: E.EnvParams):
    """float []: -(DPP - Q A - DPP_ref) / scale_ref of one slot (module docstring); `obs` is
    the observation the action was taken on, `info` the step's `lyapunov.env` info."""
    spec, sp, q = params.spec, params.slot, obs.queues
    one = jnp.float32(1.0)
    ref = request_costs(edge_only(spec.n_layers, spec.n_heads), LinkState(one, one, one, one),
                        spec)
    ref_dpp = slot_dpp(ref, q, 0.0, sp)  # A = 0: no Q A term
    l_e = ref.latency_s
    z = sp.budgets
    scale = (sp.V * sp.penalty.latency * l_e + q.q * sp.tau / l_e
             + jnp.where(jnp.isfinite(z.e_bar), q.z_e * ref.energy_j, 0.0)
             + jnp.where(jnp.isfinite(z.a_bar), q.z_a * ref.accuracy_drop, 0.0)
             + jnp.where(jnp.isfinite(z.c_bar), q.z_c * ref.cloud_cost, 0.0)
             + sp.V * (sp.penalty.energy * ref.energy_j + sp.penalty.accuracy
                       * ref.accuracy_drop + sp.penalty.cloud_cost * ref.cloud_cost))
    dpp_no_arrivals = info.dpp - q.q * info.arrivals
    return -(dpp_no_arrivals - ref_dpp) / jnp.maximum(scale, 1e-6)


def longrun_cost(info, params: E.EnvParams, backlog_weight=None):
    """float []: p_t + beta Q_{t+1} of one slot (module docstring); `info` is the step's
    `lyapunov.env.StepInfo`, beta = `backlog_weight`, or 1 / V of `params` when None (V > 0)."""
    beta = (1.0 / params.slot.V) if backlog_weight is None else backlog_weight
    return (info.penalty + beta * info.backlog_next).astype(jnp.float32)


def _step(key, state, action, params):
    """`lyapunov.env.step`, then a fresh reset where the episode ended."""
    k_step, k_reset = jax.random.split(key)
    obs, state, reward, done, info = E.step(k_step, state, action, params)
    obs0, state0 = E.reset(k_reset, params)
    obs, state = jax.tree.map(lambda a, b: jnp.where(done, a, b), (obs0, state0), (obs, state))
    return obs, state, reward, done, info


def _metrics(info):
    ok = info.feasible
    return {"dpp": info.dpp, "backlog": info.backlog,
            "latency_s": jnp.where(ok, info.latency_s, 0.0) / jnp.maximum(ok.mean(), 1e-9),
            "infeasible": 1.0 - ok.astype(jnp.float32)}


def lyapunov_adapter() -> EnvAdapter:
    """The `EnvAdapter` of `lyapunov.env` (auto-reset after `episode_slots`)."""
    return EnvAdapter(reset=E.reset, step=_step, features=observe_features,
                      outage=observed_outage, spec=lambda p: p.spec, metrics=_metrics,
                      precisions=lambda p: p.precisions, relative_reward=relative_reward,
                      longrun_cost=longrun_cost, tp=lambda p: p.tp)
