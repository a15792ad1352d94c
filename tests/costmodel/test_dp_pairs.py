"""The two-layer moves (costmodel.dp_pairs) against brute force on a tiny card: the best move is
the least objective over every partition that differs only in two candidate layers, keeps their
residual sides and fits the exact memory; each proposal's totals are its partition's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from costmodel.cards import ModelCard
from costmodel.costs import request_costs, sides, total_terms
from costmodel.dp import BIG, Weights, scalarize, slot_tables
from costmodel.dp_pairs import apply_move, candidates, pair_moves
from costmodel.link import Workload, make_link
from costmodel.partition import make_partition
from costmodel.spec import make_spec
from tests.partitions import all_partitions

CARD = ModelCard("tiny-pairs", n_layers=3, n_heads=2, n_kv_heads=2, d_model=256, d_ff=1024,
                 vocab=512, ffn_type="swiglu", tied_embeddings=True)
SPEC = make_spec(CARD, "rpi5", "datacenter", Workload(16, 4))
PARTS = all_partitions(CARD.n_layers, CARD.n_heads)
PARTS_TP = all_partitions(CARD.n_layers, CARD.n_heads, tp_shares=(4, 8, 12))

_terms = jax.jit(jax.vmap(total_terms, in_axes=(0, None, None)))
_costs = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))
_moves = jax.jit(pair_moves)


def _side_out(parts):
    s_in, s_last = jax.vmap(sides)(parts)
    return np.concatenate([np.asarray(s_in)[:, 1:], np.asarray(s_last)[:, None]], 1)


def _table(parts, link, w):
    """(objective [N] under ``w``, edge memory GB [N], latency [N]; inf where the link is down)."""
    obj = np.asarray(scalarize(_terms(parts, link, SPEC), parts.act_prec, SPEC, w), np.float64)
    costs = _costs(parts, link, SPEC)
    obj = np.where(np.asarray(costs.link_ok) & (obj < 1e29), obj, np.inf)
    return obj, np.asarray(costs.edge_memory_gb, np.float64), np.asarray(costs.latency_s)


def test_candidates_put_side_changes_first():
    # layer 0 all-edge, layer 1 mixed on the edge side, layer 2 leaves for the cloud, layer 3
    # all-cloud: side change (2) first, then the mixed layer (1), then padding (L = 4).
    p = make_partition([2, 1, 2, 0], [0, 0, 1, 1])
    assert np.asarray(candidates(p, 2, 4)).tolist() == [2, 1, 4, 4]
    # the embedding on the cloud and layer 0 on the edge: layer 0 is a side change too
    p = make_partition([2, 2, 0], [0, 0, 1], embed_edge=False)
    assert np.asarray(candidates(p, 2, 2)).tolist() == [0, 2]


@pytest.mark.parametrize("tp", [False, True])
def test_best_move_is_the_least_fitting_two_layer_change(tp):
    """For random partitions, weights and budgets (the partition itself fitting), the best
    proposal's objective equals the least over every enumerated partition that differs from it
    only in two candidate layers, with each of those layers' residual output side kept, within
    the exact memory budget. In tp the enumeration has three of the fifteen shares, so the
    moves are at most the brute force."""
    rng = np.random.default_rng(11)
    parts = PARTS_TP if tp else PARTS
    n_p = parts.edge_heads.shape[0]
    heads, ffn, frac = (np.asarray(x) for x in (parts.edge_heads, parts.ffn, parts.ffn_frac))
    prec, emb = np.asarray(parts.act_prec), np.asarray(parts.embed_edge)
    s_out = _side_out(parts)
    compared = 0
    for _ in range(12):
        link = make_link(float(10 ** rng.uniform(-0.5, 2)), float(rng.uniform(2, 80)),
                         cloud_share=float(rng.uniform(0.05, 1.0)))
        w = Weights(latency=jnp.float32(rng.uniform(0.5, 2.0)),
                    energy=jnp.float32(rng.uniform(0.0, 0.3)),
                    accuracy=jnp.float32(rng.uniform(0.0, 0.1)))
        obj, mem, _ = _table(parts, link, w)
        tb = slot_tables(link, SPEC, (0, 1, 2), tp)
        for _ in range(6):
            i0 = int(rng.integers(n_p))
            if not np.isfinite(obj[i0]):
                continue
            p = jax.tree.map(lambda x, i0=i0: x[i0], parts)
            budget = mem[i0] * float(rng.uniform(1.0, 1.4))
            mv = _moves(tb, w, p, jnp.float32(budget))
            value = np.asarray(mv.value, np.float64)
            cand = [c for c in np.asarray(candidates(p, CARD.n_heads)) if c < CARD.n_layers]
            same = (prec == prec[i0]) & (emb == emb[i0])
            best = np.inf
            for a in range(len(cand)):
                for b in range(a + 1, len(cand)):
                    rest = [x for x in range(CARD.n_layers) if x not in (cand[a], cand[b])]
                    ok = same & (s_out[:, cand[a]] == s_out[i0, cand[a]])
                    ok &= s_out[:, cand[b]] == s_out[i0, cand[b]]
                    for x in rest:
                        ok &= ((heads[:, x] == heads[i0, x]) & (ffn[:, x] == ffn[i0, x])
                               & (frac[:, x] == frac[i0, x]))
                    ok &= mem <= budget * (1 - 1e-6)
                    if ok.any():
                        best = min(best, obj[ok].min())
            if not np.isfinite(best):
                assert len(cand) < 2 or value.min() >= BIG or value.min() <= 1e-6 * abs(obj[i0])
                continue
            got = obj[i0] + value.min()
            tol = 1e-4 * abs(best) + 1e-6
            assert got <= best + tol
            if not tp:
                assert got >= best - tol
            compared += 1
    assert compared >= 30


@pytest.mark.parametrize("tp", [False, True])
def test_proposals_are_their_partitions(tp):
    """Each proposal's totals (latency, edge memory) and value are those of the partition that
    ``apply_move`` builds, priced by the cost model; the move keeps every residual side."""
    rng = np.random.default_rng(3)
    parts = PARTS_TP if tp else PARTS
    link = make_link(20.0, 20.0, cloud_share=0.3)
    w = Weights(latency=jnp.float32(1.0), energy=jnp.float32(0.2))
    tb = slot_tables(link, SPEC, (0, 1, 2), tp)
    checked = 0
    for i0 in rng.choice(parts.edge_heads.shape[0], 40, replace=False):
        p = jax.tree.map(lambda x, i0=i0: x[i0], parts)
        obj_p, mem_p, _ = _table(jax.tree.map(lambda x: x[None], p), link, w)
        mv = _moves(tb, w, p, jnp.float32(mem_p[0] * 1.2))
        good = np.flatnonzero(np.asarray(mv.value) < BIG)
        for k in rng.choice(good, min(3, good.size), replace=False) if good.size else []:
            q = apply_move(p, mv.layers[k], mv.options[k], tp)
            assert np.array_equal(np.asarray(sides(q)[0]), np.asarray(sides(p)[0]))
            obj_q, mem_q, lat_q = _table(jax.tree.map(lambda x: x[None], q), link, w)
            six = np.asarray(mv.six[k], np.float64)
            np.testing.assert_allclose(six[0], lat_q[0], rtol=1e-4)
            np.testing.assert_allclose(six[4], mem_q[0], rtol=1e-4)
            np.testing.assert_allclose(obj_p[0] + float(mv.value[k]), obj_q[0], rtol=1e-4,
                                       atol=1e-6)
            assert mem_q[0] <= mem_p[0] * 1.2 * (1 + 1e-5)
            checked += 1
    assert checked >= 20
