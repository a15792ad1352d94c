"""The ``checkpoint:`` loader of the policy registry: a training run directory resolves to one
policy per seed, a seed directory to itself; the policies act on EnvParams of the
checkpoint's model and name the mismatch on any other; broken directories are one-line errors
that name the path and what is missing. The checkpoints are untrained networks (saving and
resolving do not depend on training)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import agents.policy_loader  # noqa: F401  (registers the checkpoint: loader)
from agents import checkpoint
from agents.actions import make_space
from agents.ppo import build_model, feature_shapes
from agents.slot_env import lyapunov_adapter
from lyapunov import registry
from lyapunov.simulate import rollout
from tests.agents.small import CFG, SCENARIO


def _save_seed(directory, seed: int):
    params = SCENARIO.build()
    env = lyapunov_adapter()
    space = make_space(params.spec, CFG.action, params.precisions)
    shapes = feature_shapes(env, params)
    model = build_model(space, shapes, CFG.net, jax.random.key(seed))
    checkpoint.save(directory, model, CFG.net, shapes, meta={"seed": seed})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run's layout: hier/seed0, hier/seed1 (seed directories), hier/metrics.csv."""
    run = tmp_path_factory.mktemp("runs") / "hier"
    for s in (1, 0):
        _save_seed(run / f"seed{s}", s)
    (run / "metrics.csv").write_text("seed,update\n")
    return run


@pytest.mark.extended
def test_run_directory_resolves_to_every_seed(run_dir):
    pols = registry.resolve(f"checkpoint:{run_dir}")
    assert [p.name for p in pols] == ["hier/seed0", "hier/seed1"]
    [one] = registry.resolve(f"checkpoint:{run_dir / 'seed1'}")
    assert one.name == "hier/seed1"
    [sampled] = registry.resolve(f"checkpoint:{run_dir / 'seed1'}:sample")
    assert sampled.name == "hier/seed1"
    # the two seeds are different networks: their decisions along one trajectory differ
    params = SCENARIO.build()
    key = jax.random.PRNGKey(3)
    acts = [jax.jit(lambda k, p=p: rollout(p, params, 16, k)[1])(key) for p in pols]
    for a in acts:
        assert a.edge_heads.shape == (16, 4)
        assert ((a.edge_heads >= 0) & (a.edge_heads <= 4)).all()
    assert any(not np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(acts[0]), jax.tree.leaves(acts[1]), strict=True))


def test_seed_policies_name_a_model_mismatch(run_dir):
    [pol] = registry.resolve(f"checkpoint:{run_dir / 'seed0'}")
    other = dataclasses.replace(SCENARIO, model="gpt2-xl").build()
    with pytest.raises(ValueError, match=r"hier/seed0: .*layers 4 vs 48"):
        jax.jit(lambda k: rollout(pol, other, 2, k)[1])(jax.random.PRNGKey(0))
    # the floor is data in the spec (traced here); the scenario's static copy is checked
    floor = dataclasses.replace(SCENARIO, privacy_layers=1).build()
    with pytest.raises(ValueError, match=r"hier/seed0: .*privacy layers 0 vs 1"):
        jax.jit(lambda k: rollout(pol, floor, 2, k)[1])(jax.random.PRNGKey(0))


def test_broken_directories_are_named(run_dir, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"nowhere: no such checkpoint"):
        registry.resolve(f"checkpoint:{tmp_path / 'nowhere'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(checkpoint.CheckpointError, match=r"empty: no config.json and no seed"):
        registry.resolve(f"checkpoint:{empty}")
    unfinished = tmp_path / "unfinished"
    _save_seed(unfinished / "seed0", 0)
    (unfinished / "seed1").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match=r"seed1: no config.json"):
        registry.resolve(f"checkpoint:{unfinished}")
    corrupt = tmp_path / "corrupt"
    _save_seed(corrupt, 0)
    (corrupt / "params.npz").write_bytes(b"not a zip archive")
    with pytest.raises(checkpoint.CheckpointError, match=r"params.npz: not a readable .npz"):
        registry.resolve(f"checkpoint:{corrupt}")
    (corrupt / "params.npz").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"params.npz: missing"):
        registry.resolve(f"checkpoint:{corrupt}")
    (corrupt / "config.json").write_text("{")
    with pytest.raises(checkpoint.CheckpointError, match=r"config.json: not valid JSON"):
        registry.resolve(f"checkpoint:{corrupt}")
    with pytest.raises(ValueError, match="needs a directory"):
        registry.resolve("checkpoint:")


def test_loaded_parameters_are_the_saved_ones(run_dir):
    model, config = checkpoint.load_model(run_dir / "seed1")
    params = SCENARIO.build()
    space = make_space(params.spec, CFG.action, params.precisions)
    fresh = build_model(space, tuple(config["shapes"]), CFG.net, jax.random.key(1))
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(fresh)),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.extended
def test_memoryless_checkpoint_and_legacy_features(tmp_path):
    """The memory flag is recorded and rebuilt (no conv layers without it); a checkpoint
    written before the thermal-state scalar and the latency channel (16 scalars, 3 channels,
    no memory field) still loads and acts on the features it was trained on."""
    import json

    from agents.networks import NetConfig

    params = SCENARIO.build()
    env = lyapunov_adapter()
    space = make_space(params.spec, CFG.action, params.precisions)
    shapes = feature_shapes(env, params)
    assert shapes[0] == 17 and shapes[2] == 4
    net = dataclasses.replace(CFG.net, memory=False)
    model = build_model(space, shapes, net, jax.random.key(0))
    assert not hasattr(model, "conv1")
    checkpoint.save(tmp_path / "nomem", model, net, shapes)
    (pol,) = registry.resolve(f"checkpoint:{tmp_path / 'nomem'}")
    info, _, _ = rollout(pol, params, 4, jax.random.PRNGKey(0))
    assert np.isfinite(np.asarray(info.dpp)).all()
    assert checkpoint.load_model(tmp_path / "nomem")[1]["net"]["memory"] is False

    legacy = (16, shapes[1], 3)
    old = build_model(space, legacy, CFG.net, jax.random.key(1))
    checkpoint.save(tmp_path / "old", old, CFG.net, legacy)
    cfg_file = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["net"]["memory"]
    cfg_file.write_text(json.dumps(cfg))
    (pol,) = registry.resolve(f"checkpoint:{tmp_path / 'old'}")
    info, _, _ = rollout(pol, params, 4, jax.random.PRNGKey(0))
    assert np.isfinite(np.asarray(info.dpp)).all()
    assert NetConfig(**cfg["net"]).memory is True
