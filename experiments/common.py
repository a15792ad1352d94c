"""The request-level evaluator of figures 1, 2, 6, 7, 8, 11 and 12: every strategy's costs
for one request, from the cost model only (no queues).

The evaluator (`evaluate_links`) computes, for one cost spec (model x edge device x cloud) and a
batch of link states, the per-request costs of the five strategies of `costmodel.strategies`:

- edge-only and cloud-only: fixed partitions;
- best-layer-cut: the best member of the layer-wise family (`costmodel.strategies.
  layer_wise_candidates`: edge-only, cloud-only and every single cut at every activation
  precision, privacy floor respected), scored by the same weighted objective as the DP;
- best-headwise: the memory-constrained additive DP (`costmodel.dp.solve_memory`, Lagrangian on
  the edge-memory budget), then the better of it and the best layer cut. Where the multiplier
  leaves a duality gap the DP result is only an upper bound on the optimum; the `gap` array says
  where (and `costmodel.strategies.strategy_partition` adds the resource DP there).
- best-tp: the same with tensor-parallel FFNs and the residual on both sides (the DP's tp
  space, docs/design.md §2), then the better of it and best-headwise (the tp space contains
  the paper's).

Everything is one `jax.jit` per static spec shape (the model; the privacy floor is data): links
are padded to a fixed chunk so that changing devices, clouds, floors or sweep sizes never
recompiles.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from costmodel import partition as P
from costmodel.costs import RequestCosts, request_costs
from costmodel.dp import Weights, solve_memory
from costmodel.link import LinkState, Workload
from costmodel.spec import CostSpec, make_spec
from costmodel.strategies import STRATEGIES, layer_wise_candidates
from lyapunov.env import EnvParams, batchable

MODELS = ("gpt2-xl", "llama-7b", "llama-13b")
DEVICES = ("rpi5", "orin-nx", "galaxy-s23")
CHUNK = 128  # links per evaluator call (fixed: one compilation per spec shape)
# Fields of RequestCosts written to the tables.
COST_FIELDS = ("latency_s", "energy_j", "cloud_cost", "accuracy_drop", "edge_memory_gb",
               "feasible", "edge_compute_s", "bytes_up", "bytes_down", "cloud_gpu_s",
               "n_crossings")


@functools.lru_cache(maxsize=64)
def get_spec(model: str, device: str, cloud: str, privacy_layers: int = 0,
             prompt_tokens: int = 128, new_tokens: int = 32) -> CostSpec:
    return make_spec(model, device, cloud, Workload(prompt_tokens, new_tokens), privacy_layers)


def links(bw_mbps, rtt_ms, cloud_share) -> LinkState:
    """LinkState of broadcast arrays (float32 [N]); uplink = downlink bandwidth."""
    bw, rtt, share = np.broadcast_arrays(*(np.asarray(x, np.float32)
                                           for x in (bw_mbps, rtt_ms, cloud_share)))
    bw, rtt, share = (np.ravel(x) for x in (bw, rtt, share))
    return LinkState(jnp.asarray(bw), jnp.asarray(bw), jnp.asarray(rtt), jnp.asarray(share))


def _score(c: RequestCosts, w: Weights):
    val = (w.latency * c.latency_s + w.energy * c.energy_j + w.cloud_cost * c.cloud_cost
           + w.accuracy * c.accuracy_drop + w.memory * c.edge_memory_gb)
    return jnp.where(c.feasible & jnp.isfinite(val), val, jnp.inf)


def _pick(mask, a, b):
    return jax.tree.map(lambda x, y: jnp.where(mask, x, y), a, b)


def _evaluate_one(spec: CostSpec, link: LinkState, w: Weights):
    """Per-strategy costs for one (spec, link) sample."""
    n_l, n_h = spec.n_layers, spec.n_heads
    cands = layer_wise_candidates(spec)
    n_edge = (cands.ffn == P.EDGE).sum(1)  # NumPy: layers on the edge per candidate
    ends = stack([P.edge_only(n_l, n_h), P.cloud_only(n_l)])
    res = solve_memory(link, spec, w)
    res_tp = solve_memory(link, spec, w, tp=True)
    # One traced cost model for every partition priced here: the two DP results, edge-only,
    # cloud-only and the layer-wise candidates (those behind a barrier, not folded as
    # constants: costmodel.strategies.layer_wise_batch).
    fixed = jax.lax.optimization_barrier(jax.tree.map(
        lambda a, b: jnp.concatenate([jnp.asarray(a), jnp.asarray(b)]), ends, cands))
    every = jax.tree.map(lambda a, b: jnp.concatenate([a, b]),
                         stack([res.partition, res_tp.partition]), fixed)
    allc = jax.vmap(request_costs, in_axes=(0, None, None))(every, link, spec)
    dp_costs, tp_costs, edge, cloud, cc = (jax.tree.map(lambda x, sl=sl: x[sl], allc)
                                           for sl in (0, 1, 2, 3, slice(4, None)))
    score = _score(cc, w)
    i_cut = score.argmin()
    cut = jax.tree.map(lambda x: x[i_cut], cc)
    cut_layer, cut_prec = jnp.asarray(n_edge)[i_cut], jnp.asarray(cands.act_prec)[i_cut]
    use_dp = _score(dp_costs, w) <= score[i_cut]
    head = _pick(use_dp, dp_costs, cut)
    use_tp = _score(tp_costs, w) <= _score(head, w)
    tp_best = _pick(use_tp, tp_costs, head)
    heads = res.partition.edge_heads
    split = jnp.any((heads > 0) & (heads < n_h)) | jnp.any(res.partition.ffn == P.SPLIT)
    # The best proper cut (something on each side), for margins between classes.
    proper = jnp.asarray((n_edge > 0) & (n_edge < n_l))
    i_proper = jnp.where(proper, score, jnp.inf).argmin()
    proper_ok = proper[i_proper] & jnp.isfinite(score[i_proper])
    extra = {
        "proper_cut_latency": jnp.where(proper_ok, cc.latency_s[i_proper], jnp.inf),
        "cut_layer": cut_layer, "cut_prec": cut_prec,
        "headwise_is_split": use_dp & split,
        "headwise_edge_frac": jnp.where(use_dp, heads.sum() / (n_l * n_h), cut_layer / n_l),
        "headwise_prec": jnp.where(use_dp, res.partition.act_prec, cut_prec),
        "headwise_gap": jnp.where(use_dp, res.gap, 0.0),
        "tp_is_tp": use_tp & jnp.any(res_tp.partition.ffn == P.TP),
        "tp_gap": jnp.where(use_tp, res_tp.gap, 0.0),
    }
    return {"edge-only": edge, "cloud-only": cloud, "best-layer-cut": cut,
            "best-headwise": head, "best-tp": tp_best}, extra


_evaluate_chunk = jax.jit(jax.vmap(_evaluate_one, in_axes=(0, 0, None)))


def stack(trees: Sequence):
    """Stack a list of pytrees of one structure along a new leading axis: NumPy leaves where
    every leaf is concrete (an eager ``jnp.stack`` of N arrays compiles one XLA program per N,
    seconds each for a grid's thousands), ``jnp`` inside traced code."""
    def one(*x):
        if any(isinstance(v, jax.core.Tracer) for v in x):
            return jnp.stack([jnp.asarray(v) for v in x])
        return np.stack([np.asarray(v) for v in x])

    if trees and all(isinstance(t, EnvParams) for t in trees):
        trees = batchable(list(trees))  # one static memory flag for the batch
    return jax.tree.map(one, *trees)


def evaluate_links(spec: CostSpec, link: LinkState, w: Weights | None = None):
    """({strategy: RequestCosts of float [N]}, extras {name: [N]}) as NumPy, for N links.

    `spec` is one CostSpec (broadcast to every link) or a stacked batch of N specs of one
    static shape (one model; devices, clouds and privacy floors differ in the leaves)."""
    w = w or Weights()
    n = int(np.shape(link.bw_up_mbps)[0])
    if np.ndim(spec.prompt_tokens) == 0:
        spec = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), spec)
    outs, extras = [], []
    for start in range(0, n, CHUNK):
        idx = jnp.asarray(np.minimum(np.arange(start, start + CHUNK), n - 1))
        chunk_link = jax.tree.map(lambda x, idx=idx: jnp.asarray(x)[idx], link)
        chunk_spec = jax.tree.map(lambda x, idx=idx: x[idx], spec)
        o, e = _evaluate_chunk(chunk_spec, chunk_link, w)
        keep = min(CHUNK, n - start)
        outs.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[:keep], o))
        extras.append({k: np.asarray(v)[:keep] for k, v in e.items()})
    costs = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
    extra = {k: np.concatenate([e[k] for e in extras]) for k in extras[0]}
    return costs, extra


def strategy_rows(costs: dict, extra: dict, base: dict) -> list[dict]:
    """Long-format rows: one per (link index, strategy), `base` columns broadcast."""
    n = len(next(iter(costs.values())).latency_s)
    rows = []
    for i in range(n):
        for s in STRATEGIES:
            row = {k: (v[i] if np.ndim(v) else v) for k, v in base.items()}
            row["strategy"] = s
            for f in COST_FIELDS:
                row[f] = np.asarray(getattr(costs[s], f))[i]
            if s == "best-headwise":
                row["is_split"] = bool(extra["headwise_is_split"][i])
                row["dp_gap"] = float(extra["headwise_gap"][i])
            if s == "best-tp":
                row["is_split"] = bool(extra["tp_is_tp"][i])
                row["dp_gap"] = float(extra["tp_gap"][i])
            rows.append(row)
    return rows
