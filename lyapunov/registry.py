"""The one policy registry (docs/design.md §4): every controller of the slot environment by
name, with what the CLI help, ``simulate``, ``evaluate``, the runtime, the experiments' tables
and the claims need to know about it.

A :class:`PolicySpec` names a factory (``**kw -> lyapunov.policies.Policy``), the legend text,
colour and line style of its curves, and its role: ``reference`` (the oracle and the solver it
is compared with), ``ours`` (the controllers this project proposes) or ``baseline``. A module
that defines policies registers them at import (``register``); the model-based ones live in
``lyapunov.policies``, loaded on the first lookup, so importing this module alone is enough to
resolve them. Learned policies ("hier", "layerwise", "flat") are entries without a factory
(label, colour and role only): a trained policy is resolved through a *loader* registered for
a prefix, ``checkpoint:DIR`` by ``agents.policy_loader``, which a caller above ``agents``
imports before resolving. This module imports no package above ``lyapunov``.

Adding a baseline: define its factory in a module and ``register(PolicySpec(...))`` there; the
help text, the simulator and the experiments read it from here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any, Literal

Role = Literal["baseline", "ours", "reference"]
ROLES: tuple[str, ...] = ("reference", "ours", "baseline")

# Modules that register built-in policies, imported on the first lookup.
BUILTIN_MODULES = ("lyapunov.policies",)
# The known loader prefixes: (the module that registers it, for the error of an unregistered
# one; its help, which the CLI lists whether or not that module has been imported).
KNOWN_LOADERS = {
    "checkpoint": ("agents.policy_loader",
                   "DIR[:sample]: a trained seed directory, or every seed of a training run "
                   "directory (agents.policy_loader)"),
    "onnx": ("bridge.exported_policy",
             "a policy exported with `splitwise export --format onnx` (FILE)"),
    "torch": ("bridge.exported_policy",
              "a policy exported with `splitwise export --format torch` (FILE)"),
}


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """One registered policy.

    name: the string that selects it ("oracle", "dp-estimate", "best-cut", ...).
    factory: ``**kw -> lyapunov.policies.Policy``; None for a learned policy (loaded from a
      checkpoint through a loader).
    label: legend and table text. color: matplotlib colour.
    style: matplotlib keyword arguments as sorted ``(name, value)`` pairs (frozen).
    role: "baseline", "ours" or "reference". help: one line for the CLI help.
    clairvoyant: it sees the current slot's link (an upper bound, not a deployable policy).
    learned: a trained policy ("hier", "layerwise", "flat").
    """

    name: str
    factory: Callable[..., Any] | None
    label: str
    color: str
    style: tuple[tuple[str, Any], ...]
    role: Role
    help: str
    clairvoyant: bool = False
    learned: bool = False

    def __post_init__(self):
        if not self.name or ":" in self.name or self.name != self.name.strip():
            raise ValueError(f"PolicySpec.name must be a non-empty word without ':', got "
                             f"{self.name!r}")
        if self.role not in ROLES:
            raise ValueError(f"PolicySpec.role must be one of {ROLES}, got {self.role!r}")
        if (self.factory is None) != self.learned:
            raise ValueError(f"PolicySpec {self.name!r}: a learned policy has no factory and "
                             f"every other one has one")
        object.__setattr__(self, "style", tuple(sorted(dict(self.style).items())))


@dataclasses.dataclass(frozen=True)
class _Loader:
    prefix: str
    load: Callable[..., list]
    help: str


_SPECS: dict[str, PolicySpec] = {}
_LOADERS: dict[str, _Loader] = {}
_loaded = False


def register(spec: PolicySpec) -> PolicySpec:
    """Add ``spec``; a second spec of the same name is an error."""
    if spec.name in _SPECS:
        raise ValueError(f"policy {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def register_loader(prefix: str, loader: Callable[..., list], help: str | None = None) -> None:
    """Resolve ``"prefix:ARG"`` with ``loader(ARG, **kw) -> list[Policy]``; one per prefix."""
    if not prefix or ":" in prefix:
        raise ValueError(f"loader prefix must be a word without ':', got {prefix!r}")
    if prefix in _LOADERS:
        raise ValueError(f"a loader for {prefix!r}: is already registered")
    _LOADERS[prefix] = _Loader(prefix, loader, help or KNOWN_LOADERS.get(prefix, ("", ""))[1])


def _specs() -> dict[str, PolicySpec]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    return _SPECS


def get(name: str) -> PolicySpec:
    """The spec of ``name``; ValueError listing the valid names otherwise."""
    specs = _specs()
    if name not in specs:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(specs)}")
    return specs[name]


def names(role: Role | None = None, learned: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order, optionally of one role / learned or not."""
    return tuple(n for n, s in _specs().items()
                 if (role is None or s.role == role) and (learned is None or s.learned == learned))


def loaders() -> tuple[str, ...]:
    """The registered loader prefixes."""
    return tuple(_LOADERS)


def resolve(text: str, **kw) -> list:
    """The policies a policy string names.

    A registered name gives one policy built by its factory with ``kw`` (the same name and
    arguments give the same object, so jitted rollouts of it compile once). ``PREFIX:ARG``
    gives the list the loader of ``PREFIX`` returns (``checkpoint:DIR``: one policy per seed
    of a run directory, or the one policy of a seed directory). A learned name alone, an
    unknown name and an unregistered prefix are ValueErrors that say what to do.
    """
    if ":" in text:
        prefix, arg = text.split(":", 1)
        if prefix not in _LOADERS:
            where = KNOWN_LOADERS.get(prefix, (None,))[0]
            hint = (f"; it is registered by importing {where}" if where else
                    f"; registered prefixes: {', '.join(_LOADERS) or 'none'}")
            raise ValueError(f"no loader for policy prefix {prefix!r}{hint}")
        return list(_LOADERS[prefix].load(arg, **kw))
    spec = get(text)
    if spec.learned:
        raise ValueError(f"policy {text!r} is learned: name its checkpoint "
                         f"(checkpoint:DIR) instead")
    try:
        return [_build(text, tuple(sorted(kw.items())))]
    except TypeError as err:
        if "unhashable" not in str(err):
            raise
        return [spec.factory(**kw)]


@functools.lru_cache(maxsize=128)
def _build(name: str, kw: tuple):
    return _SPECS[name].factory(**dict(kw))


def help_text() -> str:
    """Every name (with its role) and every loader prefix, for the CLI help."""
    specs = _specs()
    parts = [f"{n} ({s.role}{', learned: use checkpoint:DIR' if s.learned else ''})"
             for n, s in specs.items()]
    helps = {**{p: h for p, (_, h) in KNOWN_LOADERS.items()},
             **{p: ld.help for p, ld in _LOADERS.items()}}
    parts += [f"{p}:ARG ({h})" for p, h in helps.items()]
    return "; ".join(parts)


def label_of(name: str) -> str:
    """Legend text of a registered name (the name itself for anything else, e.g. a
    checkpoint label)."""
    spec = _specs().get(name)
    return spec.label if spec else name


def color_of(name: str) -> str | None:
    spec = _specs().get(name)
    return spec.color if spec else None


def style_of(name: str) -> dict:
    """Matplotlib line keyword arguments of a registered name ({} otherwise)."""
    spec = _specs().get(name)
    return dict(spec.style) if spec else {}


def _learned(name: str, label: str, color: str, style: dict, role: Role, help: str):
    register(PolicySpec(name, None, label, color, tuple(style.items()), role, help,
                        learned=True))


_learned("hier", "ours: hierarchical PPO (trained)", "#e6ab02", dict(lw=1.6), "ours",
         "hierarchical PPO over heads and FFN parts (trained; checkpoint:DIR)")
_learned("layerwise", "layer-wise DRL (trained PPO over cuts)", "#1f78b4",
         dict(lw=1.3, ls="-."), "baseline",
         "PPO over one layer cut and precision (trained; checkpoint:DIR)")
_learned("flat", "flat PPO over heads and FFN parts (trained, no hierarchy)", "#666666",
         dict(lw=1.1, ls=":"), "baseline",
         "PPO over per-layer heads and FFN without the hierarchy (trained; checkpoint:DIR)")
