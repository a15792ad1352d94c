"""Named partitioning strategies for one request: edge-only, cloud-only, the best single layer
cut, and the best head/FFN-granular partition (exact additive DP, memory-feasible)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from costmodel import partition as P
from costmodel.costs import RequestCosts, request_costs
from costmodel.dp import Weights, solve_memory
from costmodel.dp_memory import solve_memory_exact
from costmodel.link import LinkState
from costmodel.spec import CostSpec

STRATEGIES = ("edge-only", "cloud-only", "best-layer-cut", "best-headwise")

_batched_costs = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))


def layer_cut_candidates(spec: CostSpec) -> P.Partition:
    """All single cut points c in [0, L] at every activation precision, embedding on the edge
    (a batch of (L + 1) * 3 partitions). c = L is edge-only."""
    parts = [P.layer_cut(spec.n_layers, spec.n_heads, c, q)
             for q in range(len(P.ACT_PRECISIONS)) for c in range(spec.n_layers + 1)]
    return jax.tree.map(lambda *x: jnp.stack(x), *parts)


def best_of(parts: P.Partition, link: LinkState, spec: CostSpec, key: str = "latency_s"):
    """The feasible partition of a batch minimizing `key` (None if none is feasible)."""
    costs = _batched_costs(parts, link, spec)
    score = np.where(np.asarray(costs.feasible), np.asarray(getattr(costs, key)), np.inf)
    if not np.isfinite(score).any():
        return None, None
    i = int(np.argmin(score))
    return jax.tree.map(lambda x: x[i], parts), jax.tree.map(lambda x: x[i], costs)


_solve_memory = jax.jit(solve_memory, static_argnames=("precisions", "iters"))
_solve_memory_exact = jax.jit(solve_memory_exact, static_argnames=("precisions", "units"))


def strategy_partition(name: str, link: LinkState, spec: CostSpec, weights: Weights | None = None):
    """(partition, costs) of a named strategy; (None, None) when it has no feasible partition.

    best-headwise minimizes `weights` (latency by default): exactly when the memory multiplier
    closes the duality gap (costmodel.dp.solve_memory), else with the memory-resource DP
    (costmodel.dp_memory), optimal up to rounding memory to 1/128 of the budget."""
    n_l, n_h = spec.n_layers, spec.n_heads
    if name == "edge-only":
        p = P.edge_only(n_l, n_h)
    elif name == "cloud-only":
        p = P.cloud_only(n_l)
    elif name == "best-layer-cut":
        return best_of(layer_cut_candidates(spec), link, spec)
    elif name == "best-headwise":
        res = _solve_memory(link, spec, weights or Weights())
        if not bool(res.feasible) or float(res.gap) > 1e-6 * abs(float(res.value)):
            # The multiplier leaves a duality gap: add the memory-resource DP, and keep the
            # best layer cut if it is better still (rounding memory can exclude it).
            res = _solve_memory_exact(link, spec, weights or Weights(), units=1024)
            cut, cut_costs = best_of(layer_cut_candidates(spec), link, spec)
            own = request_costs(res.partition, link, spec)
            if cut is not None and (not bool(res.feasible)
                                    or float(cut_costs.latency_s) < float(own.latency_s)):
                return cut, cut_costs
        if not bool(res.feasible):
            return None, None
        p = res.partition
    else:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    c = request_costs(p, link, spec)
    return p, c


def describe(p: P.Partition) -> str:
    """Short human-readable form: e.g. 'E:0-3 C:4-31 q=fp16' or per-layer heads/FFN."""
    heads, ffn = np.asarray(p.edge_heads), np.asarray(p.ffn)
    runs, start = [], 0
    for i in range(1, len(heads) + 1):
        if i == len(heads) or heads[i] != heads[start] or ffn[i] != ffn[start]:
            runs.append(f"{start}-{i - 1}:h{heads[start]}/{P.FFN_SIDES[ffn[start]][0]}")
            start = i
    emb = "emb=edge" if bool(p.embed_edge) else "emb=cloud"
    return f"{emb} {' '.join(runs)} q={P.ACT_PRECISIONS[int(p.act_prec)]}"


def compare(link: LinkState, spec: CostSpec) -> list[dict]:
    """One row per strategy with the keys of `splitwise costs --json`."""
    rows = []
    for name in STRATEGIES:
        p, c = strategy_partition(name, link, spec)
        rows.append(row(name, p, c))
    return rows


def row(name: str, p, c: RequestCosts | None) -> dict:
    if c is None:
        return {"strategy": name, "latency_s": None, "energy_j": None, "cloud_cost": None,
                "accuracy_drop": None, "edge_memory_gb": None, "feasible": False,
                "partition": None}
    return {"strategy": name, "latency_s": float(c.latency_s), "energy_j": float(c.energy_j),
            "cloud_cost": float(c.cloud_cost), "accuracy_drop": float(c.accuracy_drop),
            "edge_memory_gb": float(c.edge_memory_gb), "feasible": bool(c.feasible),
            "partition": describe(p)}
