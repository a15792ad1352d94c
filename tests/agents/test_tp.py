"""The tensor-parallel action space (docs/design.md §2.8, §4.5): the actions map onto the cost
model's tp options exactly, the memory masks stay exact with tp options (enumeration on a
small card), the networks sample and rescore tp actions consistently, and checkpoints record
their action-space version (an uninterpretable one is refused)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agents import checkpoint
from agents.actions import (
    MODE_TP,
    Action,
    ActionConfig,
    HighLogits,
    from_partition,
    high_level,
    low_level,
    make_space,
    mask_context,
    phi_grid,
    to_partition,
)
from agents.networks import ActorCritic, Features, NetConfig, act, evaluate_actions, greedy
from costmodel import dp
from costmodel.costs import endpoint_terms, total_terms
from costmodel.link import make_link
from costmodel.partition import CLOUD, EDGE, SPLIT, TP, TP_GRID
from tests.agents.helpers import TINY, tight_spec

LINK = make_link(100.0, 2.0)


def test_phi_grid_and_space_sizes():
    assert phi_grid(7) == (2, 4, 6, 8, 10, 12, 14)  # eighths of the columns, units of 1/16
    assert phi_grid(1) == (8,) and phi_grid(3) == (4, 8, 12)
    assert phi_grid(0) == tuple(range(1, TP_GRID))
    spec = tight_spec(frac=1.0)
    paper = make_space(spec, ActionConfig())
    assert (paper.tp, paper.n_ffn, paper.n_modes, paper.n_states) == (False, 3, 3, 2)
    on = make_space(spec, ActionConfig(), tp=True)  # follows the scenario
    assert (on.tp, on.n_ffn, on.n_modes, on.n_states) == (True, 10, 4, 3)
    assert on.n_low == 10 * on.n_bins and on.full_edge == 10 * (on.n_bins - 1) + EDGE
    assert not make_space(spec, ActionConfig(tp=False), tp=True).tp  # forced off
    assert make_space(spec, ActionConfig(tp=True)).tp  # forced on
    assert not make_space(spec, ActionConfig(kind="layerwise"), tp=True).tp
    f, j, is_tp = on.ffn_options()  # edge, cloud, split, then the tp shares in order
    assert f.tolist() == [EDGE, CLOUD, SPLIT] + [TP] * 7 and j.tolist() == [0] * 3 + list(
        phi_grid(7)) and is_tp.tolist() == [False] * 3 + [True] * 7
    with pytest.raises(ValueError, match="phi_bins"):
        ActionConfig(phi_bins=16)
    with pytest.raises(ValueError, match="ActionConfig.tp"):
        ActionConfig(tp="yes")


def _flat_tp_space(spec, phi_bins=0):
    return make_space(spec, ActionConfig(kind="flat_head", head_bins=0, phi_bins=phi_bins),
                      precisions=(0,), tp=True)


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
def test_every_tp_option_maps_to_the_solvers_option_and_its_costs():
    """to_partition of each joint option equals the DP's own option partition, and the request
    costs of the partition equal the sum of the solver's option terms along its side path."""
    spec = tight_spec(frac=1.0)
    space = _flat_tp_space(spec)  # every head count and every share: the DP's own grid
    terms = dp.option_terms(0, LINK, spec, tp=True)
    _, _, side_out = dp.option_grid(True)
    rng = np.random.default_rng(0)
    n_l = space.n_layers
    for trial in range(12):
        low = rng.integers(0, space.n_low, n_l)
        if trial < 4:  # runs of tp layers
            low = (low // space.n_ffn) * space.n_ffn + rng.integers(3, space.n_ffn, n_l)
        embed = int(rng.integers(0, 2))
        a = Action(jnp.int32(embed), jnp.zeros(space.n_groups, jnp.int32), jnp.int32(0),
                   jnp.asarray(low, jnp.int32), jnp.int32(0))
        part = to_partition(a, space)
        b, o = low // space.n_ffn, low % space.n_ffn
        ref = dp.option_partition(jnp.asarray(np.asarray(space.head_counts)[b]),
                                  jnp.asarray(o), 0, jnp.bool_(embed == EDGE), True)
        for x, y in zip(jax.tree.leaves(part), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert ((np.asarray(part.ffn) == TP) == (o >= 3)).all()
        side = EDGE if embed == EDGE else CLOUD
        total = None
        for layer in range(n_l):
            idx = (layer, side, space.head_counts[b[layer]], o[layer])
            t = jax.tree.map(lambda v, idx=idx: v[idx], terms)
            total = t if total is None else total + t
            side = int(side_out[o[layer]])
        total = total + endpoint_terms(jnp.int32(EDGE if embed == EDGE else CLOUD),
                                       jnp.int32(side), LINK, spec)
        want = total_terms(part, LINK, spec)
        for f in ("latency", "mem", "mem_cloud", "up_bytes", "n_cross"):
            np.testing.assert_allclose(float(getattr(total, f)), float(getattr(want, f)),
                                       rtol=1e-5, err_msg=f"{f} of {low} embed {embed}")


def _all_actions(space):
    """Every (embedding, per-layer joint option) action of a flat space (precision 0)."""
    n_l = space.n_layers
    grid = np.stack(np.meshgrid(*[np.arange(space.n_low)] * n_l, indexing="ij"), -1)
    low = np.tile(grid.reshape(-1, n_l), (2, 1))
    embed = np.repeat(np.arange(2), grid.reshape(-1, n_l).shape[0])
    n = low.shape[0]
    return Action(jnp.asarray(embed, jnp.int32), jnp.zeros((n, space.n_groups), jnp.int32),
                  jnp.zeros(n, jnp.int32), jnp.asarray(low, jnp.int32), jnp.zeros(n, jnp.int32))


@pytest.mark.parametrize("tied", [False, True])
def test_tp_mask_is_exact_by_enumeration(tied):
    """Every action of a tp space on the 3-layer, 2-head card (12^3 * 2 = 3456 with one tp
    share): positive probability under the masks iff its edge memory (total_terms: heads plus
    the share phi of the FFN, the LM head on the embedding's side after a tp last layer) fits
    the budget."""
    spec = tight_spec(frac=0.52, tied=tied)
    space = _flat_tp_space(spec, phi_bins=1)
    ctx = mask_context(spec, space, False)
    acts = _all_actions(space)
    hl = HighLogits(jnp.zeros(2), jnp.zeros((space.n_groups, 4)), jnp.zeros(3),
                    jnp.zeros(space.n_cuts), jnp.zeros((4, 4)))
    ll = jnp.zeros((space.n_layers, space.n_low))

    def score(a):
        lp = high_level(space, ctx, hl, action=a)[4]
        lp = lp + low_level(space, ctx, ll, a.embed, a.modes, low=a.low).logp.sum()
        return lp, total_terms(to_partition(a, space), LINK, spec).mem

    lp, mem = jax.jit(jax.vmap(score))(acts)
    lp, mem = np.asarray(lp), np.asarray(mem)
    budget = float(spec.edge.mem_budget)
    feasible = mem <= budget
    is_tp = (np.asarray(acts.low) % space.n_ffn >= 3).any(1)
    assert 0 < (feasible & is_tp).sum() < is_tp.sum()  # the budget binds on tp actions
    assert not ((mem > budget * (1 - 1e-5)) & (mem <= budget)).any()
    np.testing.assert_array_equal(lp > -1e6, feasible)


@pytest.mark.parametrize("privacy", [0, 1])
def test_hier_tp_mask_is_exact(privacy):
    """Groups of one layer: every partition with tp layers (one share) as its canonical hier
    action (tp mode where the layer is tp) is reachable iff it fits memory and the privacy
    floor, and maps back to itself."""
    spec = tight_spec(frac=0.52, privacy_layers=privacy)
    space = make_space(spec, ActionConfig(kind="hier", n_groups=3, head_bins=0, phi_bins=1),
                       precisions=(0,), tp=True)
    flat = _flat_tp_space(spec, phi_bins=1)
    ctx = mask_context(spec, space, False)
    hl = HighLogits(jnp.zeros(2), jnp.zeros((3, 4)), jnp.zeros(3), jnp.zeros(space.n_cuts),
                    jnp.zeros((4, 4)))
    ll = jnp.zeros((space.n_layers, space.n_low))
    parts = jax.vmap(lambda a: to_partition(a, flat))(_all_actions(flat))

    def score(p):
        a = from_partition(p, space)
        lp = high_level(space, ctx, hl, action=a)[4]
        lp = lp + low_level(space, ctx, ll, a.embed, a.modes, low=a.low).logp.sum()
        return lp, to_partition(a, space), a.modes, total_terms(p, LINK, spec)

    lp, back, modes, tt = jax.jit(jax.vmap(score))(parts)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(parts), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(modes) == MODE_TP, np.asarray(parts.ffn) == TP)
    priv_ok = (np.asarray(parts.edge_heads)[:, :privacy] == TINY.n_heads).all(1) & (
        np.asarray(parts.ffn)[:, :privacy] == EDGE).all(1) & (
        np.asarray(parts.embed_edge) | (privacy == 0))
    feasible = (np.asarray(tt.mem) <= float(spec.edge.mem_budget)) & priv_ok
    assert feasible.sum() > 0 and ((np.asarray(parts.ffn) == TP).any(1) & feasible).any()
    np.testing.assert_array_equal(np.asarray(lp) > -1e6, feasible)


def test_from_partition_of_tp_in_a_paper_space_is_split():
    spec = tight_spec(frac=1.0)
    space = make_space(spec, ActionConfig(kind="flat_head", head_bins=0))
    on = _flat_tp_space(spec)
    a = Action(jnp.int32(0), jnp.zeros(1, jnp.int32), jnp.int32(0),
               jnp.asarray([on.n_ffn * 1 + 3 + 7] * 3, jnp.int32), jnp.int32(0))
    p = to_partition(a, on)
    assert (np.asarray(p.ffn) == TP).all() and (np.asarray(p.ffn_frac) == 8).all()
    assert (np.asarray(to_partition(from_partition(p, space), space).ffn) == SPLIT).all()


def _model(space, scale=300.0):
    net = NetConfig(hidden=16, low_hidden=16)
    params = jax.jit(lambda: nnx.split(ActorCritic(space, 4, 8, 3, net, nnx.Rngs(0)))[1])()
    graphdef = nnx.split(nnx.eval_shape(lambda: ActorCritic(space, 4, 8, 3, net,
                                                           nnx.Rngs(0))))[0]
    model = nnx.merge(graphdef, params)
    model.high.kernel[...] = model.high.kernel[...] * scale
    model.low2.kernel[...] = model.low2.kernel[...] * scale
    return model, net


@pytest.mark.parametrize("kind", [pytest.param("hier", marks=pytest.mark.extended),
                                  pytest.param("flat_head", marks=pytest.mark.slow)])
def test_tp_networks_sample_fit_and_rescore(kind):
    """Sampled tp-space actions fit the budget, include tp layers, and their recomputed
    log-probabilities equal the sampled ones; greedy is among them."""
    from costmodel.cards import get_card

    spec = tight_spec(get_card("llama-7b"), frac=0.5)
    space = make_space(spec, ActionConfig(kind=kind), tp=True)
    model, _ = _model(space)
    b = 64
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    x = Features(jax.random.normal(k1, (b, 4)), jax.random.normal(k2, (b, 8, 3)))
    ctx = jax.vmap(lambda o: mask_context(spec, space, o))(jnp.zeros(b, bool))
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, k):
        m = nnx.merge(graphdef, state)
        action, fac, _ = act(m, x, ctx, k)
        fac2, _ = evaluate_actions(m, x, ctx, action)
        parts = jax.vmap(lambda a: to_partition(a, space))(action)
        g = jax.vmap(lambda a: to_partition(a, space))(greedy(m, x, ctx))
        mem = jax.vmap(lambda p: total_terms(p, LINK, spec).mem)(parts)
        gmem = jax.vmap(lambda p: total_terms(p, LINK, spec).mem)(g)
        return fac, fac2, parts, mem, gmem

    fac, fac2, parts, mem, gmem = run(state, k3)
    np.testing.assert_allclose(fac.logp, fac2.logp, rtol=1e-5, atol=1e-4)
    assert (np.asarray(fac.logp) > -1e6).all()
    budget = float(spec.edge.mem_budget)
    assert (np.asarray(mem) <= budget).all() and (np.asarray(gmem) <= budget).all()
    ffn, frac = np.asarray(parts.ffn), np.asarray(parts.ffn_frac)
    assert (ffn == TP).any()
    assert set(np.unique(frac[ffn == TP])) <= set(space.phi_grid)
    assert (frac[ffn != TP] == 0).all()


# --- checkpoints: the action-space version --------------------------------------------------


def _save(tmp_path, space):
    model, net = _model(space, scale=1.0)
    return checkpoint.save(tmp_path / "ck", model, net, (4, 8, 3))


def test_checkpoint_records_the_version_and_round_trips_tp(tmp_path):
    space = make_space(tight_spec(frac=1.0), ActionConfig(), tp=True)
    path = _save(tmp_path, space)
    config = json.loads((path / "config.json").read_text())
    assert config["action_space_version"] == checkpoint.ACTION_SPACE_VERSION == 2
    model, _ = checkpoint.load_model(path)
    assert model.space == space and model.space.tp


@pytest.mark.extended
def test_legacy_checkpoint_without_version_is_version_1_and_acts(tmp_path):
    """A config written before the version and tp existed (no key, no tp fields) loads as the
    paper's space and acts."""
    space = make_space(tight_spec(frac=1.0), ActionConfig())
    path = _save(tmp_path, space)
    config = json.loads((path / "config.json").read_text())
    del config["action_space_version"]
    del config["space"]["tp"], config["space"]["phi_grid"]
    (path / "config.json").write_text(json.dumps(config))
    assert checkpoint.action_space_version(config) == 1
    model, _ = checkpoint.load_model(path)
    assert not model.space.tp and model.space == space
    spec = tight_spec(frac=1.0)
    ctx = jax.tree.map(lambda v: v[None], mask_context(spec, model.space, False))
    x = Features(jnp.zeros((1, 4)), jnp.zeros((1, 8, 3)))
    p = to_partition(jax.tree.map(lambda v: v[0], greedy(model, x, ctx)), model.space)
    assert not (np.asarray(p.ffn) == TP).any()


@pytest.mark.parametrize("version,tp", [(0, False), (3, False), (1, True), ("2", False)])
def test_uninterpretable_action_space_version_is_refused(tmp_path, version, tp):
    space = make_space(tight_spec(frac=1.0), ActionConfig(), tp=tp)
    path = _save(tmp_path, space)
    config = json.loads((path / "config.json").read_text())
    config["action_space_version"] = version
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"action-space version .* cannot be interpreted") as err:
        checkpoint.load_model(path)
    assert "\n" not in str(err.value)


# --- training in the tp space ---------------------------------------------------------------


@pytest.mark.extended
def test_short_ppo_run_in_the_tp_space_learns_tp_layers():
    """Two Pi 5s on a 10 Gbit/s, 0.05 ms LAN with LLaMA-7B-wide layers, where the cost model
    makes tensor-parallel layers pay (tests/lyapunov/test_policies.py): a short PPO run of the
    hierarchical agent in the scenario's tp space (one jit) ends with greedy actions that use
    tp layers."""
    import dataclasses

    from agents.policy_loader import learned_policy
    from agents.ppo import PPOConfig, model_from_runner
    from agents.train import TrainConfig, make_train
    from costmodel.cards import ModelCard
    from lyapunov import env as E
    from lyapunov import processes as pr

    card = ModelCard("tp-4x8", 4, 8, 8, 4096, 11008, 32000, "swiglu", False)
    link = pr.LinkConfig(bandwidth=pr.BandwidthConfig(kind="constant", mean_mbps=10000.0),
                         rtt_ms=0.05, rtt_jitter_ms=0.0,
                         share=pr.ShareConfig(kind="constant", share=1.0))
    sc = E.Scenario(model=card, device="rpi5", cloud="pi5-peer", prompt_tokens=32,
                    new_tokens=8, tau_s=2.0, V=10.0, link=link, history=8, episode_slots=64,
                    arrival=pr.ArrivalConfig(rate=2.0), tp=True)
    cfg = TrainConfig(scenario=sc,
                      ppo=PPOConfig(num_envs=8, num_steps=16, num_updates=30, update_epochs=4,
                                    num_minibatches=4, lr=3e-3, ent_coef=0.01),
                      action=ActionConfig(kind="hier", n_groups=2, head_bins=5, phi_bins=3),
                      net=NetConfig(hidden=32, low_hidden=32, conv_channels=4), log_every=30)
    train = make_train(cfg)
    assert train.setup.space.tp
    runner, _ = jax.jit(train)(jax.random.key(0))
    model = model_from_runner(train.setup, runner.nets)
    params = sc.build()
    pol = learned_policy(model, "tp", shapes=train.setup.shapes)
    act, step = jax.jit(pol.act), jax.jit(E.step)  # compiled once (op by op: many seconds)
    obs, state = jax.jit(E.reset)(jax.random.key(1), params)
    n_tp = []
    for t in range(4):
        part = act(jax.random.key(t), obs, params)
        n_tp.append(int((np.asarray(part.ffn) == TP).sum()))
        obs, state, *_ = step(jax.random.key(10 + t), state, part, params)
    assert min(n_tp) > 0, n_tp
    with pytest.raises(ValueError, match="tensor-parallel"):
        act(jax.random.key(0), obs, dataclasses.replace(sc, tp=False).build())


def test_the_numpy_geometry_names_the_cost_models_sides():
    """agents.space_geometry repeats costmodel.partition's side codes (it must not import JAX,
    the exported runtime imports it): they are equal."""
    from agents import space_geometry as g

    assert (g.FFN_EDGE, g.FFN_CLOUD, g.FFN_TP) == (EDGE, CLOUD, TP)
