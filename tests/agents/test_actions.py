"""Action spaces: masks are exact and never sampled, the mapping to Partition is valid, and
log-probabilities recomputed from stored actions equal the ones of sampling."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agents.actions import (
    KINDS,
    MEM_RTOL,
    Action,
    ActionConfig,
    HighLogits,
    from_partition,
    high_level,
    low_level,
    make_space,
    mask_context,
    to_partition,
)
from agents.networks import ActorCritic, Features, NetConfig, act, evaluate_actions
from costmodel.cards import get_card
from costmodel.costs import privacy_ok, total_terms
from costmodel.link import make_link
from costmodel.partition import EDGE, check_partition
from tests.agents.helpers import TINY, all_partitions, tight_spec

LINK = make_link(20.0, 30.0)
N = 512


def _sample(space, ctx, key, scale=5.0):
    """N actions under random logits (large scale: the policy strongly prefers some options,
    which pushes it against the masks). One program per space: the masks and the scale are
    arguments, so tests that differ only in the budget, the outage or the scale share it."""
    return _sample_jit(space, ctx, jax.random.split(key, N), jnp.float32(scale))


@functools.partial(jax.jit, static_argnums=0)
def _sample_jit(space, ctx, keys, scale):
    g, n_l = space.n_groups, space.n_layers

    def one(k):
        ks = jax.random.split(k, 8)
        hl = HighLogits(*(scale * jax.random.normal(kk, s) for kk, s in
                          zip(ks[:5], [(2,), (g, 3), (3,), (n_l + 2,), (3, 3)], strict=True)))
        embed, modes, prec, cut, lp_h, _ = high_level(space, ctx, hl, key=ks[5])
        ll = scale * jax.random.normal(ks[6], (n_l, space.n_low))
        tr = scale * jax.random.normal(ks[7], (2, space.n_low))
        low = low_level(space, ctx, ll, embed, modes, key=ks[6], trans=tr)
        return Action(embed, modes, prec, low.actions, cut)

    return jax.vmap(one)(keys)


def _mem_and_priv(parts, spec):
    tt = jax.vmap(lambda p: total_terms(p, LINK, spec))(parts)
    return np.asarray(tt.mem), np.asarray(jax.vmap(lambda p: privacy_ok(p, spec))(parts))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("privacy", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_sampled_actions_fit_memory_and_privacy(kind, privacy):
    # budget 45% of edge-only memory on a 3-layer card: the masks bind at every level
    spec = tight_spec(frac=0.45, privacy_layers=privacy)
    space = make_space(spec, ActionConfig(kind=kind, n_groups=2, head_bins=0))
    ctx = mask_context(spec, space, False)
    acts = _sample(space, ctx, jax.random.key(1))
    parts = jax.vmap(lambda a: to_partition(a, space))(acts)
    mem, priv = _mem_and_priv(parts, spec)
    assert (mem <= float(spec.edge.mem_budget)).all()
    assert priv.all()
    # the budget binds: some sampled actions use more than half of it
    assert mem.max() > 0.5 * float(spec.edge.mem_budget)


@pytest.mark.parametrize("model", [pytest.param("llama-7b", marks=pytest.mark.slow),
                                   pytest.param("gpt2-xl", marks=pytest.mark.extended)])
def test_real_card_tight_budget(model):
    # a real card (gpt2-xl: tied embeddings) with a budget at 30% of its edge-only memory,
    # the default grid and groups of the hierarchical action
    card = get_card(model)
    spec = tight_spec(card, frac=0.3, tied=card.tied_embeddings)
    space = make_space(spec, ActionConfig(kind="hier"))
    acts = _sample(space, mask_context(spec, space, False), jax.random.key(2))
    parts = jax.vmap(lambda a: to_partition(a, space))(acts)
    mem, _ = _mem_and_priv(parts, spec)
    assert (mem <= float(spec.edge.mem_budget)).all()
    assert mem.max() > 0.5 * float(spec.edge.mem_budget)


@pytest.mark.parametrize("tied", [False, True])
def test_flat_mask_is_exact(tied):
    # Enumerate every partition of the 3-layer, 2-head card (9^3 * 3 * 2 = 4374): an action
    # has positive probability under the masks iff it fits the budget and the privacy floor
    # (up to the relative margin MEM_RTOL, which no partition falls into at this budget).
    spec = tight_spec(frac=0.52, privacy_layers=0, tied=tied)
    space = make_space(spec, ActionConfig(kind="flat_head", head_bins=0))
    ctx = mask_context(spec, space, False)
    parts = all_partitions(TINY.n_layers, TINY.n_heads)
    hl = HighLogits(jnp.zeros(2), jnp.zeros((space.n_groups, 3)), jnp.zeros(3),
                    jnp.zeros(space.n_cuts), jnp.zeros((3, 3)))
    ll = jnp.zeros((space.n_layers, space.n_low))

    def logp(p):
        a = from_partition(p, space)
        lp_h = high_level(space, ctx, hl, action=a)[4]
        return lp_h + low_level(space, ctx, ll, a.embed, a.modes, low=a.low).logp.sum()

    lp = np.asarray(jax.jit(jax.vmap(logp))(parts))
    mem, priv = _mem_and_priv(parts, spec)
    budget = float(spec.edge.mem_budget)
    feasible = (mem <= budget) & priv
    assert 0 < feasible.sum() < len(feasible)
    assert not ((mem > budget * (1 - MEM_RTOL)) & (mem <= budget)).any()
    np.testing.assert_array_equal(lp > -1e6, feasible)


def test_hier_mask_is_exact():
    # Every feasible partition, written as its canonical hierarchical action, is reachable;
    # no infeasible one is (groups of one layer so that every partition is representable).
    spec = tight_spec(frac=0.52, privacy_layers=1)
    space = make_space(spec, ActionConfig(kind="hier", n_groups=3, head_bins=0))
    ctx = mask_context(spec, space, False)
    parts = all_partitions(TINY.n_layers, TINY.n_heads)
    hl = HighLogits(jnp.zeros(2), jnp.zeros((3, 3)), jnp.zeros(3), jnp.zeros(space.n_cuts),
                    jnp.zeros((3, 3)))
    ll = jnp.zeros((space.n_layers, space.n_low))

    def logp_and_back(p):
        a = from_partition(p, space)
        lp_h = high_level(space, ctx, hl, action=a)[4]
        lp = lp_h + low_level(space, ctx, ll, a.embed, a.modes, low=a.low).logp.sum()
        return lp, to_partition(a, space)

    lp, back = jax.jit(jax.vmap(logp_and_back))(parts)
    np.testing.assert_array_equal(back.edge_heads, parts.edge_heads)
    np.testing.assert_array_equal(back.ffn, parts.ffn)
    mem, priv = _mem_and_priv(parts, spec)
    feasible = (mem <= float(spec.edge.mem_budget)) & priv
    np.testing.assert_array_equal(np.asarray(lp) > -1e6, feasible)


@pytest.mark.parametrize("kind", KINDS)
def test_outage_allows_only_edge_only(kind):
    spec = tight_spec(frac=1.5)  # everything fits
    space = make_space(spec, ActionConfig(kind=kind, n_groups=2, head_bins=0))
    acts = _sample(space, mask_context(spec, space, True), jax.random.key(3))
    parts = jax.vmap(lambda a: to_partition(a, space))(acts)
    assert np.asarray(parts.embed_edge).all()
    assert (np.asarray(parts.edge_heads) == TINY.n_heads).all()
    assert (np.asarray(parts.ffn) == EDGE).all()


@pytest.mark.parametrize("kind", KINDS)
def test_partitions_valid_and_round_trip(kind):
    card = get_card("llama-7b")
    spec = tight_spec(card, frac=0.6)
    space = make_space(spec, ActionConfig(kind=kind))
    acts = _sample(space, mask_context(spec, space, False), jax.random.key(4), scale=1.0)
    parts = jax.vmap(lambda a: to_partition(a, space))(acts)
    for i in range(0, N, 37):
        check_partition(jax.tree.map(lambda x, i=i: x[i], parts), card.n_layers, card.n_heads)
    again = jax.vmap(lambda p: to_partition(from_partition(p, space), space))(parts)
    for a, b in zip(jax.tree.leaves(parts), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    if kind == "layerwise":  # cut c <= L: edge for layers < c; c = L + 1: cloud-only
        cut = np.asarray(acts.cut)
        heads = np.asarray(parts.edge_heads)
        assert (cut == card.n_layers + 1).any() and (cut <= card.n_layers).any()
        for i in range(N):
            c = cut[i] if cut[i] <= card.n_layers else 0
            expect = card.n_heads * (np.arange(card.n_layers) < c)
            np.testing.assert_array_equal(heads[i], expect)


def test_head_grid():
    spec = tight_spec(get_card("gpt2-xl"), frac=1.0, tied=True)
    space = make_space(spec, ActionConfig(head_bins=9))
    # H = 25: round(25 * i / 8) = 0, 3, 6, 9, 12 (12.5 rounds to even), 16, 19, 22, 25
    assert space.head_counts == (0, 3, 6, 9, 12, 16, 19, 22, 25)
    assert make_space(spec, ActionConfig(head_bins=0)).head_counts == tuple(range(26))
    # 48 layers in 4 groups of 12
    assert space.group_of_layer == tuple(i // 12 for i in range(48))
    with pytest.raises(ValueError, match="kind"):
        ActionConfig(kind="nope")


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "flat_head"
                                  else k for k in KINDS])  # flat_head: the default budget
def test_logp_of_sampled_equals_recomputed(kind):
    spec = tight_spec(get_card("llama-7b"), frac=0.5)
    space = make_space(spec, ActionConfig(kind=kind))
    model = nnx.eval_shape(lambda: ActorCritic(space, 4, 8, 3,
                                               NetConfig(hidden=16, low_hidden=16),
                                               nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    params = jax.jit(lambda: nnx.split(ActorCritic(space, 4, 8, 3,
                                                   NetConfig(hidden=16, low_hidden=16),
                                                   nnx.Rngs(0)))[1])()
    model = nnx.merge(graphdef, params)
    # larger output scale than at init so that the policy is far from uniform
    model.high.kernel[...] = model.high.kernel[...] * 300.0
    if kind != "layerwise":
        model.low2.kernel[...] = model.low2.kernel[...] * 300.0
    b = 64
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    x = Features(jax.random.normal(k1, (b, 4)), jax.random.normal(k2, (b, 8, 3)))
    outage = jnp.arange(b) % 7 == 0
    ctx = jax.vmap(lambda o: mask_context(spec, space, o))(outage)
    graphdef, state = nnx.split(model)

    @jax.jit
    def sample_and_score(state, k):
        m = nnx.merge(graphdef, state)
        action, fac, v = act(m, x, ctx, k)
        fac2, v2 = evaluate_actions(m, x, ctx, action)
        other = dataclasses.replace(action, prec=(action.prec + 1) % 3)
        return action, fac, v, fac2, v2, evaluate_actions(m, x, ctx, other)[0]

    action, fac, v, fac2, v2, fac_other = sample_and_score(state, k3)
    np.testing.assert_allclose(fac.logp, fac2.logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fac.entropy, fac2.entropy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v, v2, rtol=1e-6)
    assert np.isfinite(np.asarray(fac.logp)).all()
    assert (np.asarray(fac.logp) > -1e6).all()  # no masked option was taken
    # an action that differs changes the log-probability
    assert not np.allclose(fac_other.logp, fac.logp)
