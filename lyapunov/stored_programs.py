"""Traced programs kept on disk between runs of the CLI (docs/design.md §4.5).

JAX's persistent compilation cache (``splitwise_cli.enable_compilation_cache``) spares a
repeated command XLA's compile, but each run still traces the Python function and lowers it to
StableHLO before it can look the compile up; for the slot environment's rollout that is most of
a repeated ``splitwise simulate``. :func:`stored_jit` serializes the lowered program with
``jax.export`` and, in a later process, loads it instead of tracing (the compile is then the
persistent cache's hit).

A stored program is found under a key made of: its name, the caller's static key (e.g. the
policy string and the slot count), the tree structure of the arguments (static fields of the
pytrees included, exactly: the structure is pickled), their shapes and dtypes, JAX's and
jaxlib's versions and a hash of every file of the packages the program can run
(``costmodel``, ``lyapunov``, ``agents``). Any change to the code or to the inputs' structure
is a new key: the program is traced and stored again, never reused across source versions. A
caller passes only functions whose every input is an argument or covered by the static key
(the CLI's registered policies; not a checkpoint, whose weights are constants of its program,
nor a policy registered from outside these packages).

Off unless enabled (:func:`enable`, by the CLI for one ``simulate``, in the compilation cache's
directory): a library caller, or a test that patches a function, always traces. The directory
is trusted as the compilation cache is (that one holds executables): entries are unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax

log = logging.getLogger(__name__)

PACKAGES = ("costmodel", "lyapunov", "agents")
_ROOT = Path(__file__).resolve().parents[1]
_DIR: dict[str, Path | None] = {"dir": None}


def enable(directory: str | os.PathLike | None) -> None:
    """Store and load programs under ``directory`` (None: off)."""
    _DIR["dir"] = None if directory is None else Path(directory)


def directory() -> Path | None:
    return _DIR["dir"]


def fingerprint(root: Path, packages=PACKAGES) -> str:
    """SHA-256 of every file under ``root / package`` (relative paths and contents) and of the
    JAX versions."""
    import jaxlib

    h = hashlib.sha256(f"jax {jax.__version__} jaxlib {jaxlib.__version__}".encode())
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def source_fingerprint() -> str:
    """:func:`fingerprint` of this installation's packages (computed once per process)."""
    return fingerprint(_ROOT)


def _key(name: str, static, tree, leaves) -> str:
    avals = [jax.typeof(x) for x in leaves]
    material = pickle.dumps((name, static, tree, [(a.shape, a.dtype.str, a.weak_type)
                                                  for a in avals], source_fingerprint()))
    return hashlib.sha256(material).hexdigest()[:40]


def stored_jit(name: str, fn: Callable, static, *args,
               compiler_options: dict | None = None) -> Callable:
    """``jax.jit(fn, compiler_options=...)`` for arguments shaped like ``args``, through a
    stored program when enabled: the returned function takes the same pytrees (same structure,
    shapes and dtypes) and returns ``fn``'s output. ``static`` (picklable) names everything
    ``fn`` closes over that is not in ``args``; ``compiler_options`` are XLA's, for the compile
    (not part of the stored program)."""
    where = directory()
    if where is None:
        return jax.jit(fn, compiler_options=compiler_options)
    leaves, tree = jax.tree.flatten(args)
    try:
        key = _key(name, static, tree, leaves)
    except (pickle.PicklingError, TypeError, AttributeError) as e:  # an unpicklable static
        log.debug("%s: not stored (%s)", name, e)
        return jax.jit(fn, compiler_options=compiler_options)
    path = where / "programs" / f"{name}-{key}.jaxexport"
    loaded = _load(path)
    if loaded is None:
        box = {}

        def flat(*xs):
            out_leaves, box["tree"] = jax.tree.flatten(fn(*jax.tree.unflatten(tree, xs)))
            return out_leaves

        exp = jax.export.export(jax.jit(flat))(*leaves)
        loaded = (box["tree"], exp)
        _store(path, box["tree"], exp)
    out_tree, exp = loaded
    call = jax.jit(exp.call, compiler_options=compiler_options)

    def run(*a):
        return jax.tree.unflatten(out_tree, call(*jax.tree.leaves(a)))

    return run


def _load(path: Path):
    try:
        out_tree, blob = pickle.loads(path.read_bytes())
        return out_tree, jax.export.deserialize(blob)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a damaged entry is a miss, not an error
        log.warning("stored program %s unreadable (%s); tracing again", path, e)
        return None


def _store(path: Path, out_tree, exp) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = pickle.dumps((out_tree, exp.serialize()))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the whole file
    except (OSError, pickle.PicklingError, TypeError, ValueError) as e:
        log.warning("stored program %s not written (%s)", path, e)
