"""The layer-wise family and best_layer_cut (costmodel.strategies): what the family holds, the
privacy floor, the accuracy cap, equality with brute force over the family, and the rows of
`splitwise costs`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from costmodel_testkit import TINY_GQA, TINY_MHA, case, costs_many, links, one_link
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.link import make_link
from costmodel.partition import CLOUD, EDGE, cloud_only, edge_only, layer_cut
from costmodel.spec import make_spec
from costmodel.strategies import COMPARE, best_layer_cut, compare, layer_wise_candidates

best_jit = jax.jit(best_layer_cut, static_argnames=("precisions", "objective",
                                                    "max_accuracy_pct"))


def _rows(parts):
    """The family as a set of (heads, ffn, precision, embedding) tuples."""
    return {(tuple(h), tuple(f), int(q), bool(e)) for h, f, q, e in zip(
        np.asarray(parts.edge_heads), np.asarray(parts.ffn), np.asarray(parts.act_prec),
        np.asarray(parts.embed_edge), strict=True)}


def _row(p):
    return (tuple(np.asarray(p.edge_heads)), tuple(np.asarray(p.ffn)), int(p.act_prec),
            bool(p.embed_edge))


@pytest.mark.parametrize("privacy", [0, 1, 2])
def test_family_members(privacy):
    """Edge-only, cloud-only (only without a privacy floor) and every single cut c in
    [max(1, floor), L - 1] at every precision, nothing else (TINY_MHA: L = 3). The whole
    family (no floor given) is the same under every floor, and the spec's floor makes
    exactly the members outside the floor's family privacy-infeasible."""
    spec, _ = case(TINY_MHA, privacy=privacy)
    n_l, n_h = TINY_MHA.n_layers, TINY_MHA.n_heads
    fam = layer_wise_candidates(spec, privacy_layers=privacy)
    want = {_row(edge_only(n_l, n_h))}
    if not privacy:
        want.add(_row(cloud_only(n_l)))
    want |= {_row(layer_cut(n_l, n_h, c, q)) for q in range(3)
             for c in range(max(1, privacy), n_l)}
    assert _rows(fam) == want and len(np.asarray(fam.act_prec)) == len(want)
    assert _row(jax.tree.map(lambda x: x[0], fam)) == _row(edge_only(n_l, n_h))
    costs = costs_many(jax.tree.map(jnp.asarray, fam), make_link(10.0, 20.0), spec)
    assert np.all(np.asarray(costs.privacy_ok))
    assert len(_rows(layer_wise_candidates(spec, (1,), privacy))) == (
        len(want) - 2 * (n_l - max(1, privacy)))
    whole = layer_wise_candidates(spec)
    assert _rows(whole) == _rows(layer_wise_candidates(case(TINY_MHA, privacy=0)[0]))
    ok = np.asarray(costs_many(jax.tree.map(jnp.asarray, whole), make_link(10.0, 20.0),
                               spec).privacy_ok)
    rows = [_row(jax.tree.map(lambda x, i=i: x[i], whole)) for i in range(len(ok))]
    assert [r in want for r in rows] == ok.tolist()


@pytest.mark.extended
@settings(max_examples=25, deadline=None)
@given(card=st.sampled_from([TINY_GQA, TINY_MHA]), privacy=st.integers(0, 1), lk=links(),
       objective=st.sampled_from(["latency", "energy"]),
       cap=st.one_of(st.none(), st.floats(0.0, 5.0)))
def test_best_layer_cut_is_the_brute_force_minimum_over_the_family(card, privacy, lk,
                                                                   objective, cap):
    spec, _ = case(card, privacy=privacy)
    link = one_link(lk)
    fam = jax.tree.map(jnp.asarray, layer_wise_candidates(spec))
    costs = costs_many(fam, link, spec)
    key = {"latency": "latency_s", "energy": "energy_j"}[objective]
    ok = np.asarray(costs.feasible)
    if cap is not None:
        ok = ok & (np.asarray(costs.accuracy_drop) <= np.float32(cap))
    score = np.where(ok, np.asarray(getattr(costs, key), float), np.inf)
    got = best_jit(link, spec, objective=objective, max_accuracy_pct=cap)
    own = costs_many(jax.tree.map(lambda x: x[None], got), link, spec)
    if not np.isfinite(score).any():  # nothing qualifies: edge-only
        assert _row(got) == _row(edge_only(card.n_layers, card.n_heads))
        return
    assert bool(own.feasible[0])
    if cap is not None:
        assert float(own.accuracy_drop[0]) <= np.float32(cap)
    assert float(getattr(own, key)[0]) == pytest.approx(score.min(), rel=1e-6)
    if privacy:
        assert bool(got.embed_edge) and int(got.ffn[0]) == EDGE


@pytest.mark.slow
def test_best_layer_cut_vmaps_and_picks_the_trivial_cuts():
    """Outage: edge-only. Fast link, idle cloud: cloud-only (in the family). Batched over links
    with vmap."""
    spec = make_spec(TINY_GQA, "rpi5", "datacenter")
    links_ = jax.tree.map(lambda *x: jnp.stack(x), make_link(0.0, 10.0),
                          make_link(5000.0, 0.5))
    got = jax.vmap(best_layer_cut, in_axes=(0, None))(links_, spec)
    assert np.all(np.asarray(got.ffn[0]) == EDGE)
    assert not bool(got.embed_edge[1]) and np.all(np.asarray(got.ffn[1]) == CLOUD)
    with pytest.raises(ValueError, match="objective"):
        best_layer_cut(make_link(1.0, 1.0), spec, objective="speed")


def test_compare_rows_say_what_they_optimise():
    """The `splitwise costs` rows: one per COMPARE entry, the keys the CLI reads, an
    `optimises` text naming the family, and the accuracy-capped cut within 1 %."""
    spec = make_spec("llama-7b", "rpi5")
    rows = compare(make_link(5.0, 40.0), spec)
    assert [r["strategy"] for r in rows] == list(COMPARE)
    keys = {"strategy", "optimises", "label", "latency_s", "energy_j", "cloud_cost",
            "accuracy_drop", "edge_memory_gb", "feasible", "partition"}
    assert all(keys <= set(r) for r in rows)
    by = {r["strategy"]: r for r in rows}
    assert "edge-only, cloud-only and every single cut" in by["best-layer-cut"]["optimises"]
    assert by["best-layer-cut"]["label"].startswith("best-layer-cut (min latency")
    acc1 = by["best-layer-cut-acc1"]
    assert acc1["feasible"] and acc1["accuracy_drop"] <= 1.0
    assert by["best-layer-cut"]["latency_s"] <= acc1["latency_s"] + 1e-9
    assert by["best-layer-cut"]["latency_s"] <= by["cloud-only"]["latency_s"] + 1e-9
