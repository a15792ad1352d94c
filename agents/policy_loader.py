"""Trained checkpoints as `lyapunov.policies.Policy` objects, and the ``checkpoint:`` loader of
the policy registry (`lyapunov.registry`, docs/design.md §4.5).

Importing this module registers the loader, so ``lyapunov.registry.resolve("checkpoint:DIR")``
works everywhere a policy string is accepted (``simulate``, ``evaluate``, the runtime):

- DIR is a *seed directory* (it holds ``config.json``, written by `agents.checkpoint.save`):
  one policy, named ``<parent>/<dir>`` (e.g. ``hier/seed0`` for ``runs/hier/seed0``);
- DIR is a *run directory* (no ``config.json``, but ``seed<k>/config.json`` below it, as
  `agents.train.run` writes): one policy per seed, in seed order, named ``<run>/seed<k>``;
  name one seed directory to pick one seed.

``checkpoint:DIR:sample`` samples from the trained distribution instead of taking the most
likely option at every step (greedy, the default). A trained policy sees only the
observation (it is causal) and works on any `lyapunov.env.EnvParams` whose model has the
checkpoint's layers, heads, tied embedding, privacy floor and history window, whose
allowed precisions include the checkpoint's, and whose option space includes its action
space's (a tensor-parallel policy needs ``EnvParams.tp``; a paper-space one acts in either);
anything else is a ValueError naming the mismatch. Every other failure (no such directory, no
``config.json``, a corrupt ``.npz``) is an `agents.checkpoint.CheckpointError` naming the path
and what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax

from agents import checkpoint
from agents.actions import ActionSpace, mask_context, to_partition
from agents.networks import ActorCritic, act, greedy
from agents.slot_env import observe_features, observed_outage
from lyapunov.policies import Policy
from lyapunov.registry import register_loader

_SEED_DIR = re.compile(r"seed(\d+)")


def check_compatible(space: ActionSpace, shapes, params, x, origin: str) -> None:
    """ValueError unless a policy of `space` and feature `shapes` can act on `params` (its
    features `x` of one observation); `origin` names the policy in the message."""
    spec = params.spec
    want = {"layers": space.n_layers, "heads": space.n_heads, "tied embedding": space.tied,
            "privacy layers": space.privacy_layers}
    have = {"layers": spec.n_layers, "heads": spec.n_heads, "tied embedding": spec.tied,
            "privacy layers": params.privacy_layers}
    if shapes is not None:
        want.update({"feature scalars": shapes[0], "history window": shapes[1],
                     "history channels": shapes[2]})
        have.update({"feature scalars": x.scalars.shape[-1],
                     "history window": x.history.shape[-2],
                     "history channels": x.history.shape[-1]})
    bad = [f"{k} {want[k]} vs {have[k]}" for k in want if want[k] != have[k]]
    missing = sorted(set(space.precisions) - set(params.precisions))
    if missing:
        bad.append(f"precisions {space.precisions} vs {tuple(params.precisions)}")
    if space.tp and not getattr(params, "tp", False):
        bad.append("tensor-parallel options True vs tp False")
    if bad:
        raise ValueError(f"{origin}: trained for another model or scenario than these "
                         f"EnvParams (checkpoint vs EnvParams: {'; '.join(bad)})")


def legacy_features(x, shapes):
    """The features a checkpoint of feature `shapes` was trained on: features added since
    (appended last: the thermal state, the latency channel) dropped; unchanged otherwise."""
    if shapes is None:
        return x
    n_s, _, n_c = shapes
    if (x.scalars.shape[-1], x.history.shape[-1]) != (n_s, n_c) and \
            16 <= n_s <= x.scalars.shape[-1] and 3 <= n_c <= x.history.shape[-1]:
        x = x.replace(scalars=x.scalars[..., :n_s], history=x.history[..., :n_c])
    return x


def learned_policy(model: ActorCritic, name: str = "ppo", sample: bool = False,
                   shapes=None) -> Policy:
    """The trained actor as a Policy on `lyapunov.env` observations (causal).

    Greedy by default (the most likely option at every step of the masked sequential
    choice); `sample=True` draws from the policy with the given key. `shapes`: the
    checkpoint's (n_scalars, hist_len, hist_ch), checked against the observation.
    """
    space: ActionSpace = model.space

    def policy_act(key, obs, params):
        features = legacy_features(observe_features(obs, params), shapes)
        check_compatible(space, shapes, params, features, name)
        x = jax.tree.map(lambda v: v[None], features)
        ctx = jax.tree.map(lambda v: v[None],
                           mask_context(params.spec, space, observed_outage(obs)))
        if sample:
            a = act(model, x, ctx, key)[0]
        else:
            a = greedy(model, x, ctx)
        return to_partition(jax.tree.map(lambda v: v[0], a), space)

    return Policy(name, policy_act)


def load_policy(path: str | Path, sample: bool = False, name: str | None = None) -> Policy:
    """The Policy of one seed directory, named `name` or ``<parent>/<dir>``."""
    path = Path(path)
    model, config = checkpoint.load_model(path)
    shapes = tuple(config["shapes"])
    return learned_policy(model, name or _name(path), sample=sample, shapes=shapes)


def _name(path: Path) -> str:
    full = path.resolve()
    return f"{full.parent.name}/{full.name}"


def checkpoint_dirs(path: str | Path) -> list[Path]:
    """The seed directories `path` names: itself if it holds config.json, else its
    ``seed<k>`` subdirectories in seed order (each must hold config.json)."""
    path = Path(path)
    if not path.is_dir():
        raise checkpoint.CheckpointError(f"{path}: no such checkpoint directory")
    if (path / "config.json").is_file():
        return [path]
    seeds = sorted((int(m.group(1)), d) for d in path.iterdir()
                   if d.is_dir() and (m := _SEED_DIR.fullmatch(d.name)))
    if not seeds:
        raise checkpoint.CheckpointError(
            f"{path}: no config.json and no seed<k>/ subdirectories (neither a checkpoint "
            f"nor a training run directory)")
    for _, d in seeds:
        if not (d / "config.json").is_file():
            raise checkpoint.CheckpointError(f"{d}: no config.json (an unfinished seed of "
                                             f"the run {path}?)")
    return [d for _, d in seeds]


def load_checkpoint_policies(arg: str, sample: bool = False, **solver_kw) -> list[Policy]:
    """The registry's ``checkpoint:`` loader: ``DIR`` or ``DIR:sample`` -> one Policy per seed
    directory (`checkpoint_dirs`). `solver_kw` (arguments of the model-based policies) do not
    apply to a trained policy and are ignored."""
    del solver_kw
    if arg.endswith(":sample"):
        arg, sample = arg[: -len(":sample")], True
    if not arg:
        raise ValueError("checkpoint: needs a directory (checkpoint:DIR or checkpoint:DIR:sample)")
    return [load_policy(d, sample=sample) for d in checkpoint_dirs(arg)]


register_loader("checkpoint", load_checkpoint_policies)  # help: registry.KNOWN_LOADERS
