"""A tiny stand-in for lyapunov.env (tests only): the same reset/step signature and the same
slot model (system-model sections 3-4), small and fast to compile. Used until the real slot
environment lands, and to keep the agent tests independent of its evolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from costmodel.costs import request_costs
from costmodel.link import LinkState
from costmodel.spec import CostSpec
from lyapunov import processes as pr
from lyapunov.queues import Budgets, Queues, dpp_objective, service_rate, update_queues

HIST_FIELDS = 5  # bw_up, bw_down, rtt, share, up


@struct.dataclass
class EnvParams:
    spec: CostSpec
    link: pr.LinkParams
    arrivals: pr.PoissonParams
    V: jnp.ndarray
    tau: jnp.ndarray
    latency_cap: jnp.ndarray
    budgets: Budgets = Budgets()
    horizon: int = struct.field(pytree_node=False, default=64)
    hist_len: int = struct.field(pytree_node=False, default=8)


@struct.dataclass
class Obs:
    queues: Queues
    history: jnp.ndarray  # float [W, 5], oldest first
    arrival_est: jnp.ndarray
    t: jnp.ndarray


@struct.dataclass
class EnvState:
    queues: Queues
    link: pr.LinkState
    history: jnp.ndarray
    arrival_est: jnp.ndarray
    t: jnp.ndarray


def _obs(s: EnvState) -> Obs:
    return Obs(s.queues, s.history, s.arrival_est, s.t)


def reset(key, params: EnvParams):
    k1, k2 = jax.random.split(key)
    link = pr.link_init(k1, params.link)
    # warm the history with draws of the link so the first observation is informative
    def body(ls, k):
        ls, smp = pr.link_step(k, ls, params.link)
        return ls, jnp.stack([smp.bw_up_mbps, smp.bw_down_mbps, smp.rtt_ms, smp.cloud_share,
                              smp.up.astype(jnp.float32)])
    link, hist = jax.lax.scan(body, link, jax.random.split(k2, params.hist_len))
    s = EnvState(Queues.zeros(), link, hist, params.arrivals.rate, jnp.int32(0))
    return _obs(s), s


def step(key, state: EnvState, action, params: EnvParams):
    k_link, k_arr = jax.random.split(key)
    link, smp = pr.link_step(k_link, state.link, params.link)
    arrivals = jax.random.poisson(k_arr, params.arrivals.rate).astype(jnp.float32)
    ls = LinkState(smp.bw_up_mbps, smp.bw_down_mbps, smp.rtt_ms, smp.cloud_share)
    c = request_costs(action, ls, params.spec)
    lat = jnp.where(c.feasible, c.latency_s, jnp.inf)
    mu = service_rate(lat, params.tau)
    pen = jnp.minimum(lat, params.latency_cap)
    energy = jnp.where(c.feasible, c.energy_j, 0.0)
    dpp = dpp_objective(state.queues, params.V, pen, arrivals, mu, energy, c.accuracy_drop,
                        c.cloud_cost, params.budgets)
    q = update_queues(state.queues, arrivals, mu, energy, c.accuracy_drop, c.cloud_cost,
                      params.budgets)
    row = jnp.stack([smp.bw_up_mbps, smp.bw_down_mbps, smp.rtt_ms, smp.cloud_share,
                     smp.up.astype(jnp.float32)])
    hist = jnp.concatenate([state.history[1:], row[None]], axis=0)
    est = 0.9 * state.arrival_est + 0.1 * arrivals
    t = state.t + 1
    done = t >= params.horizon
    new = EnvState(q, link, hist, est, t)
    obs0, s0 = reset(key, params)
    new = jax.tree.map(lambda a, b: jnp.where(done, a, b), s0, new)
    info = {"dpp": dpp, "latency_s": lat, "backlog": state.queues.q, "service": mu,
            "arrivals": arrivals, "energy_j": energy, "accuracy_drop": c.accuracy_drop,
            "feasible": c.feasible}
    return _obs(new), new, -dpp, done, info


def features(obs: Obs, params: EnvParams):
    from agents.networks import Features

    q = obs.queues
    scalars = jnp.stack([jnp.log1p(q.q), jnp.log1p(q.z_e), jnp.log1p(q.z_a), jnp.log1p(q.z_c),
                         obs.arrival_est, jnp.log1p(params.V)])
    h = obs.history
    hist = jnp.stack([jnp.log1p(h[:, 0]) / 5.0, jnp.log1p(h[:, 1]) / 5.0,
                      jnp.log1p(h[:, 2]) / 5.0, h[:, 3], h[:, 4]], axis=-1)
    return Features(scalars, hist)


def adapter():
    from agents.ppo import EnvAdapter

    return EnvAdapter(
        reset=reset, step=step, features=features,
        outage=lambda obs: obs.history[-1, 4] < 0.5,
        spec=lambda params: params.spec,
        metrics=lambda info: {"dpp": info["dpp"], "backlog": info["backlog"],
                              "latency_s": jnp.minimum(info["latency_s"], 1e3)})


def make_params(model="llama-7b", device="rpi5", cloud="datacenter", rate=1.0, V=10.0,
                tau=10.0, horizon=64, share=0.3, bw_mean=20.0, rtt=40.0, outage=0.0,
                privacy_layers=0):
    from costmodel.spec import make_spec

    spec = make_spec(model, device, cloud, privacy_layers=privacy_layers)
    link = pr.make_link(pr.LinkConfig(
        bandwidth=pr.BandwidthConfig(kind="ar1", mean_mbps=bw_mean, std_mbps=bw_mean, rho=0.9),
        rtt_ms=rtt, share=pr.ShareConfig(kind="ar1", median_share=share, logit_std=1.5,
                                         rho=0.9), outage_prob=outage))
    return EnvParams(spec, link, pr.make_poisson(rate), jnp.float32(V), jnp.float32(tau),
                     jnp.float32(3 * tau), horizon=horizon)
