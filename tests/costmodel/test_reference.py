"""JAX request costs == the loop-based NumPy reference (tests/costmodel/reference.py) on random
partitions, link states (outages included), devices, clouds, workloads and accuracy terms;
jit == no-jit; vmap over a batch == a loop of single calls."""

from __future__ import annotations

import jax
import numpy as np
from costmodel_testkit import (
    CLOUDS,
    EDGES,
    TINY_GQA,
    TINY_MHA,
    assert_matches_reference,
    case,
    costs_batch,
    costs_jit,
    link_state,
    links,
    one_link,
    one_partition,
    partition_batch,
    partitions,
    reference_batch,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.cards import get_card
from costmodel.costs import request_costs

BATCH = 4  # fixed batch so that each card compiles once
# (card, privacy_layers): the floor is data in the spec, so each card is one compile.
# TINY_GQA: 4 query heads on 2 K/V heads; TINY_MHA: GELU, tied; SmolLM2: 9 on 3 (with a
# privacy floor); GPT-2 XL: 25 heads; Llama 3.1 8B: 32 on 8, 128k vocabulary.
CONFIGS = [(TINY_GQA, 0), (TINY_GQA, 1), (TINY_MHA, 0), (get_card("smollm2-135m"), 3),
           (get_card("gpt2-xl"), 0), (get_card("llama3.1-8b"), 0)]


@st.composite
def batches(draw):
    card, privacy = draw(st.sampled_from(CONFIGS))
    parts = [draw(partitions(card.n_layers, card.n_heads)) for _ in range(BATCH)]
    if privacy and draw(st.booleans()):
        # Make some partitions respect the floor so that privacy_ok is exercised both ways.
        heads, ffn, q, _, frac = parts[0]
        parts[0] = ([card.n_heads] * privacy + heads[privacy:], [0] * privacy + ffn[privacy:],
                    q, True, [0] * privacy + frac[privacy:])
    lks = [draw(links()) for _ in range(BATCH)]
    return dict(card=card, privacy=privacy, parts=parts, links=lks,
                edge=draw(st.sampled_from(EDGES)), cloud=draw(st.sampled_from(CLOUDS)),
                prompt=draw(st.integers(1, 2048)), new=draw(st.integers(1, 256)),
                acc_seed=draw(st.integers(0, 2**16)))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_jax_matches_reference(b):
    spec, sc = case(b["card"], b["edge"], b["cloud"], b["prompt"], b["new"], b["privacy"],
                    b["acc_seed"])
    got = costs_batch(partition_batch(b["parts"]), link_state(b["links"]), spec)
    assert_matches_reference(got, reference_batch(sc, b["parts"], b["links"]))


@settings(max_examples=4, deadline=None)
@given(partitions(TINY_GQA.n_layers, TINY_GQA.n_heads), links())
def test_jit_equals_nojit(part, lk):
    spec, _ = case(TINY_GQA, "orin-nx", "mec")
    p, link = one_partition(part), one_link(lk)
    a, b = costs_jit(p, link, spec), request_costs(p, link, spec)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-6)


@settings(max_examples=5, deadline=None)
@given(st.lists(partitions(TINY_GQA.n_layers, TINY_GQA.n_heads), min_size=BATCH,
                max_size=BATCH),
       st.lists(links(), min_size=BATCH, max_size=BATCH))
def test_vmap_equals_loop(parts, lks):
    spec, _ = case(TINY_GQA, "galaxy-s23", "datacenter", 64, 16)
    batched = costs_batch(partition_batch(parts), link_state(lks), spec)
    for i in range(BATCH):
        single = costs_jit(one_partition(parts[i]), one_link(lks[i]), spec)
        for x, y in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(np.asarray(x, float)[i], np.asarray(y, float),
                                       rtol=1e-6)
