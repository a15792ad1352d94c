"""Named partitioning strategies for one request (docs/design.md §4): edge-only, cloud-only,
the best layer cut, the best head/FFN-granular partition in the paper's space (exact additive
DP, memory-feasible), and the best partition with tensor-parallel FFNs (the same DP over the
sides {edge, cloud, both}).

The *layer-wise family* is defined once, here (:func:`layer_wise_candidates`): edge-only,
cloud-only and every single cut ``c`` in ``[1, L - 1]`` (layers ``< c`` and the embedding on
the edge) at every allowed activation precision; under a privacy floor of ``k`` layers its
members are those that keep the floor (no cloud-only, cuts ``c >= k``). The floor is data in
the spec, so traced code takes the whole family and the floor through feasibility
(``RequestCosts.privacy_ok``); code with a concrete floor may leave the others out.
:func:`best_layer_cut` picks its feasible member of least objective, optionally under an
accuracy-drop cap; the layer-cut policies of ``lyapunov.policies``, the experiments and the
runtime call it.
"""

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

STRATEGIES = ("edge-only", "cloud-only", "best-layer-cut", "best-headwise", "best-tp")
# The rows of `splitwise costs`: the strategies plus the accuracy-constrained layer cut.
ACC1_PCT = 1.0
COMPARE = ("edge-only", "cloud-only", "best-layer-cut", "best-layer-cut-acc1", "best-headwise",
           "best-tp")
# What each row optimises (the `optimises` field of `compare`).
OPTIMISES = {
    "edge-only": "nothing: every block on the edge",
    "cloud-only": "nothing: every block on the cloud",
    "best-layer-cut": "min latency over edge-only, cloud-only and every single cut, any "
                      "precision",
    "best-layer-cut-acc1": f"min latency over edge-only, cloud-only and every single cut, any "
                           f"precision, accuracy drop <= {ACC1_PCT:g} %",
    "best-headwise": "min latency over every head/FFN partition and precision (exact DP), "
                     "within edge memory (the paper's space: no tensor-parallel FFN)",
    "best-tp": "min latency over every head/FFN partition with tensor-parallel FFNs and the "
               "residual on both sides, and precision (exact DP), within edge memory",
}
OBJECTIVES = {"latency": "latency_s", "energy": "energy_j", "cloud_cost": "cloud_cost",
              "accuracy": "accuracy_drop"}

_batched_costs = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))


def layer_wise_candidates(spec: CostSpec, precisions=(0, 1, 2),
                          privacy_layers: int = 0) -> P.Partition:
    """The layer-wise family as a batch (built in NumPy from the spec's static sizes):
    edge-only, cloud-only when ``privacy_layers == 0``, then every single cut ``c`` in
    ``[max(1, privacy_layers), L - 1]`` at each precision (precision-major). ``privacy_layers``
    (a Python int) leaves out the members that break that floor; by default none are, and
    the spec's own floor acts through feasibility."""
    n_l, n_h = spec.n_layers, spec.n_heads
    cuts = [(n_l, 0, True)]  # (layers on the edge, precision, embedding on the edge)
    if not privacy_layers:
        cuts.append((0, 0, False))
    cuts += [(c, q, True) for q in precisions for c in range(max(1, privacy_layers), n_l)]
    n_edge, q, emb = (np.asarray(x) for x in zip(*cuts, strict=True))
    on_edge = np.arange(n_l)[None, :] < n_edge[:, None]
    return P.Partition(np.where(on_edge, n_h, 0).astype(np.int32),
                       np.where(on_edge, P.EDGE, P.CLOUD).astype(np.int32),
                       q.astype(np.int32), emb.astype(bool), np.zeros(on_edge.shape, np.int32))


def layer_wise_batch(spec: CostSpec, precisions=(0, 1, 2),
                     privacy_layers: int = 0) -> P.Partition:
    """:func:`layer_wise_candidates` as jnp leaves for traced code, behind an
    ``optimization_barrier``: as plain constants XLA folds the cost model through the whole
    batch at compile time (LLaMA-13B, a chunk of 128 links: 6.1 s of compile against 1.9 s
    behind the barrier; the same executable otherwise)."""
    return jax.lax.optimization_barrier(
        jax.tree.map(jnp.asarray, layer_wise_candidates(spec, tuple(precisions),
                                                        privacy_layers)))


def best_layer_cut(link: LinkState, spec: CostSpec, precisions=(0, 1, 2),
                   objective: str = "latency",
                   max_accuracy_pct: float | None = None) -> P.Partition:
    """The feasible member of the layer-wise family of least ``objective`` ("latency",
    "energy", "cloud_cost" or "accuracy"), among those with accuracy drop <=
    ``max_accuracy_pct`` if given; edge-only if none qualifies. Pure JAX (jit/vmap-able over
    ``link`` and the spec's array leaves)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    cands = layer_wise_batch(spec, precisions)
    costs = jax.vmap(request_costs, in_axes=(0, None, None))(cands, link, spec)
    ok = costs.feasible
    if max_accuracy_pct is not None:
        ok = ok & (costs.accuracy_drop <= max_accuracy_pct)
    score = jnp.where(ok, getattr(costs, OBJECTIVES[objective]), jnp.inf)
    i = jnp.argmin(score)
    i = jnp.where(jnp.isfinite(score[i]), i, 0)  # candidate 0 is edge-only
    return jax.tree.map(lambda x: x[i], cands)


_best_layer_cut = jax.jit(best_layer_cut,
                          static_argnames=("precisions", "objective", "max_accuracy_pct"))
_solve_memory = jax.jit(solve_memory, static_argnames=("precisions", "iters", "tp"))
_solve_memory_exact = jax.jit(solve_memory_exact, static_argnames=("precisions", "units", "tp"))
_request_costs = jax.jit(request_costs)  # one compile per shape, not hundreds of eager ops


def _layer_cut(link, spec, max_accuracy_pct=None):
    """(partition, costs) of the best layer cut; (None, None) when no member qualifies."""
    p = _best_layer_cut(link, spec, max_accuracy_pct=max_accuracy_pct)
    c = _request_costs(p, link, spec)
    ok = bool(c.feasible) and (max_accuracy_pct is None
                               or float(c.accuracy_drop) <= max_accuracy_pct)
    return (p, c) if ok else (None, None)


def strategy_partition(name: str, link: LinkState, spec: CostSpec, weights: Weights | None = None):
    """(partition, costs) of a named strategy (`COMPARE`); (None, None) when it has no
    feasible partition.

    best-headwise (the paper's space) and best-tp (with tensor-parallel FFNs) minimize
    `weights` (latency by default): exactly when the memory multipliers close the duality gap
    (costmodel.dp.solve_memory), else with the memory-resource DP (costmodel.dp_memory),
    optimal up to rounding memory to 1/1024 of the budget, and never worse than the best layer
    cut (best-tp never worse than best-headwise)."""
    n_l, n_h = spec.n_layers, spec.n_heads
    if name == "edge-only":
        p = P.edge_only(n_l, n_h)
    elif name == "cloud-only":
        p = P.cloud_only(n_l)
    elif name == "best-layer-cut":
        return _layer_cut(link, spec)
    elif name == "best-layer-cut-acc1":
        return _layer_cut(link, spec, ACC1_PCT)
    elif name in ("best-headwise", "best-tp"):
        tp = name == "best-tp"
        w = weights or Weights()
        res = _solve_memory(link, spec, w, tp=tp)
        if not bool(res.feasible) or float(res.gap) > 1e-6 * abs(float(res.value)):
            # The multiplier leaves a duality gap: add the memory-resource DP, and keep the
            # best of the smaller spaces if it is better still (rounding memory can exclude it).
            res = _solve_memory_exact(link, spec, w, units=1024, tp=tp)
            own = _request_costs(res.partition, link, spec) if bool(res.feasible) else None
            alt, alt_costs = (strategy_partition("best-headwise", link, spec, weights) if tp
                              else _layer_cut(link, spec))
            if alt is not None and (own is None or _score(alt_costs, w) < _score(own, w)):
                return alt, alt_costs
        if not bool(res.feasible):
            return None, None
        p = res.partition
    else:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(COMPARE)}")
    c = _request_costs(p, link, spec)
    return p, c


def _score(c: RequestCosts, w: Weights) -> float:
    """The weighted objective of one request's costs (memory in GB)."""
    return (float(w.latency) * float(c.latency_s) + float(w.energy) * float(c.energy_j)
            + float(w.cloud_cost) * float(c.cloud_cost)
            + float(w.accuracy) * float(c.accuracy_drop)
            + float(w.memory) * float(c.edge_memory_gb)
            + float(w.cloud_memory) * float(c.cloud_memory_gb))


def describe(p: P.Partition) -> str:
    """Short human-readable form: per run of equal layers 'first-last:h<edge heads>/<FFN>',
    the FFN as e(dge), c(loud), s(plit) or t<edge share in sixteenths> (tensor-parallel)."""
    heads, ffn, frac = np.asarray(p.edge_heads), np.asarray(p.ffn), np.asarray(p.ffn_frac)

    def ffn_name(i):
        return f"t{frac[i]}" if ffn[i] == P.TP else P.FFN_SIDES[ffn[i]][0]

    runs, start = [], 0
    for i in range(1, len(heads) + 1):
        if i == len(heads) or heads[i] != heads[start] or ffn_name(i) != ffn_name(start):
            runs.append(f"{start}-{i - 1}:h{heads[start]}/{ffn_name(start)}")
            start = i
    emb = "emb=edge" if bool(p.embed_edge) else "emb=cloud"
    return f"{emb} {' '.join(runs)} q={P.ACT_PRECISIONS[int(p.act_prec)]}"


def compare(link: LinkState, spec: CostSpec) -> list[dict]:
    """One row per strategy of `COMPARE` with the keys of `splitwise costs --json` (strategy,
    optimises, label, latency_s, energy_j, cloud_cost, accuracy_drop, edge_memory_gb,
    cloud_memory_gb, feasible, partition)."""
    rows = []
    for name in COMPARE:
        p, c = strategy_partition(name, link, spec)
        rows.append(row(name, p, c))
    return rows


def row(name: str, p, c: RequestCosts | None) -> dict:
    """One `compare` row; ``label`` is the strategy with what it optimises."""
    what = OPTIMISES.get(name, "")
    head = {"strategy": name, "optimises": what, "label": f"{name} ({what})" if what else name}
    if c is None:
        return {**head, "latency_s": None, "energy_j": None, "cloud_cost": None,
                "accuracy_drop": None, "edge_memory_gb": None, "cloud_memory_gb": None,
                "feasible": False, "partition": None}
    return {**head, "latency_s": float(c.latency_s), "energy_j": float(c.energy_j),
            "cloud_cost": float(c.cloud_cost), "accuracy_drop": float(c.accuracy_drop),
            "edge_memory_gb": float(c.edge_memory_gb),
            "cloud_memory_gb": float(c.cloud_memory_gb), "feasible": bool(c.feasible),
            "partition": describe(p)}
