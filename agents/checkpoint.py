"""Policy checkpoints: parameters as NumPy arrays in .npz (no pickle) plus a config.json that
is sufficient to rebuild the networks (brax `training/checkpoint.py` habit). The registry
resolves one as ``checkpoint:DIR`` through `agents.policy_loader` (docs/design.md §4.5).

Layout of a checkpoint directory:

    config.json   {"format": 1, "action_space_version": 2, "space": ActionSpace fields,
                   "net": NetConfig fields,
                   "shapes": [n_scalars, hist_len, hist_ch], "train": the training config
                   (free-form JSON, e.g. agents.train.TrainConfig), "meta": {...}}
    params.npz    the ActorCritic's state, one array per leaf, keyed by its pytree path
    train_state.npz (optional) the (ActorCritic, Optimizer) state, to continue training

Loading rebuilds the module from the config with `nnx.eval_shape` (no initialization work),
checks that every stored key and shape matches, and fills the leaves in.

Action-space versions (``action_space_version``; how the action indices and the network's
output layout are to be read, `agents.actions`): 1, the paper's space (joint layer options
``b * 3 + f``, group modes edge/cloud/split), written before the key existed (a config
without it is version 1); 2, adds the tensor-parallel space (``ActionSpace.tp`` and
``phi_grid``: options ``b * F + o``, the tp group mode and the residual state both), identical
to version 1 when tp is off. A version this code cannot interpret (another number, or a
version-1 config that claims tp) is refused with a `CheckpointError` that says so.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from agents.actions import ActionSpace
from agents.networks import ActorCritic, NetConfig

FORMAT = 1
ACTION_SPACE_VERSION = 2  # the version this code writes
READABLE_ACTION_SPACE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or does not match the networks it should fill."""


def _to_arrays(state) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _from_arrays(template, arrays: dict[str, np.ndarray], origin: str):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p) for p, _ in leaves]
    missing = sorted(set(keys) - set(arrays))
    extra = sorted(set(arrays) - set(keys))
    if missing or extra:
        raise CheckpointError(f"{origin}: parameters do not match the networks of its "
                              f"config.json (missing {missing[:5]}, unexpected {extra[:5]})")
    out = []
    for k, (_, leaf) in zip(keys, leaves, strict=True):
        a = arrays[k]
        if tuple(a.shape) != tuple(leaf.shape) or a.dtype != np.dtype(leaf.dtype):
            raise CheckpointError(f"{origin}: {k} has shape {a.shape} {a.dtype}, the networks "
                                  f"need {tuple(leaf.shape)} {leaf.dtype}")
        out.append(jax.numpy.asarray(a))
    return jax.tree_util.tree_unflatten(treedef, out)


def _jsonable(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, tuple | list):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.generic):
        return x.item()
    return x


def save(path: str | Path, model: ActorCritic, net: NetConfig, shapes, train_config: Any = None,
         meta: dict | None = None, train_state=None) -> Path:
    """Write a checkpoint directory; `train_state`: the nnx state of (model, optimizer)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "action_space_version": ACTION_SPACE_VERSION,
              "space": _jsonable(model.space), "net": _jsonable(net),
              "shapes": [int(s) for s in shapes], "train": _jsonable(train_config),
              "meta": _jsonable(meta or {})}
    (path / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    np.savez(path / "params.npz", **_to_arrays(nnx.state(model)))
    if train_state is not None:
        np.savez(path / "train_state.npz", **_to_arrays(train_state))
    return path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{path}: no config.json (not a checkpoint directory)")
    try:
        config = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{f}: not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{f}: unsupported format {found!r}")
    return config


def action_space_version(config: dict, origin: str = "config.json") -> int:
    """The action-space version of a checkpoint config (1 when it predates the key);
    CheckpointError if this code cannot interpret it."""
    v = config.get("action_space_version", 1)
    tp = bool(config.get("space", {}).get("tp", False)) if isinstance(config.get("space"),
                                                                       dict) else False
    if isinstance(v, bool) or v not in READABLE_ACTION_SPACE_VERSIONS or (v == 1 and tp):
        raise CheckpointError(
            f"{origin}: action-space version {v!r}{' with tp' if tp else ''} cannot be "
            f"interpreted by this code (it reads versions "
            f"{', '.join(map(str, READABLE_ACTION_SPACE_VERSIONS))}); retrain the policy")
    return int(v)


def space_and_net(config: dict, origin: str = "config.json"
                  ) -> tuple[ActionSpace, NetConfig, tuple[int, int, int]]:
    """The action space, network sizes and feature shapes a config.json describes (its
    action-space version checked first)."""
    action_space_version(config, origin)
    try:
        sp = dict(config["space"])
        for k in ("head_counts", "group_of_layer", "precisions", "phi_grid"):
            if k in sp:
                sp[k] = tuple(sp[k])
        shapes = tuple(int(n) for n in config["shapes"])
        return ActionSpace(**sp), NetConfig(**config["net"]), shapes
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{origin}: malformed checkpoint config "
                              f"({type(err).__name__}: {err})") from None


def _npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable .npz archive ({err})") from None


def load_model(path: str | Path) -> tuple[ActorCritic, dict]:
    """(ActorCritic with the stored parameters, config dict) of a checkpoint directory."""
    path = Path(path)
    config = read_config(path)
    space, net, shapes = space_and_net(config, str(path / "config.json"))
    abstract = nnx.eval_shape(lambda: ActorCritic(space, *shapes, net, nnx.Rngs(0)))
    graphdef, template = nnx.split(abstract)
    state = _from_arrays(template, _npz(path / "params.npz"), str(path / "params.npz"))
    return nnx.merge(graphdef, state), config


def load_train_state(path: str | Path, template):
    """The stored (model, optimizer) state, shaped like `template` (e.g. a fresh Runner.nets)."""
    f = Path(path) / "train_state.npz"
    return _from_arrays(template, _npz(f), str(f))
