"""The catalog of experiments (one per figure) and the `run_figures` driver.

An experiment is a frozen config dataclass (a `quick` and a `full` instance), a
`run(cfg, out_dir, progress)` that writes arrays (CSV) with `config.json` beside them into
`out_dir = <out>/<name>/`, and a separate `plot(run_dir) -> list[Path]` that reads only the
arrays and writes PNGs next to them. `progress(iterable, desc, total)` wraps inner loops (a tqdm
bar in `run_figures`, `identity_progress` otherwise).

An experiment whose input does not exist (figure 10 without a training run) raises
`Unavailable` from `run`; `run_figures` records it as skipped with the reason, and the claims
that need it are marked pending. (Policies are catalogued elsewhere: `lyapunov.registry`.)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import subprocess
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

MODES = ("quick", "full")


class Unavailable(RuntimeError):
    """An experiment's input does not exist; the message says which and how to make it."""


def identity_progress(iterable, desc: str = "", total: int | None = None):
    """The `progress` of a run without progress bars."""
    return iterable


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One figure.

    name: key for --only and the results folder.
    number: figure number.
    title: one line.
    quick, full: the frozen configs of the two modes.
    run: run(cfg, out_dir, progress) writes the arrays and config.json.
    plot: plot(run_dir) -> list of PNG paths, reading only the arrays.
    """

    name: str
    number: int
    title: str
    quick: Any
    full: Any
    run: Callable[..., Any]
    plot: Callable[[Path], list[Path]]

    def config(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return self.quick if mode == "quick" else self.full


# Modules in figure order; each defines EXPERIMENT.
_MODULES = (
    "experiments.fig01_latency_bandwidth",
    "experiments.fig02_energy",
    "experiments.fig03_trace_latency",
    "experiments.fig04_backlog",
    "experiments.fig05_v_tradeoff",
    "experiments.fig06_memory",
    "experiments.fig07_speedup",
    "experiments.fig08_operational_cost",
    "experiments.fig09_robustness",
    "experiments.fig10_training_curves",
    "experiments.fig11_accuracy",
    "experiments.fig12_regime_map",
    "experiments.fig13_learning",
    "experiments.fig14_certificate",
    "experiments.fig15_runtime",
    "experiments.fig16_frontier",
)


def _coerce(value, current, where: str, hint=None):
    """``value`` (a string from --set, or a JSON value) as the type of the field's
    ``current`` value (or, where it is None, of its annotation ``hint``, e.g. ``float |
    None``; "none" sets None); ValueError naming ``where``."""
    optional = hint is not None and type(None) in typing.get_args(hint)
    if optional and (value is None or (isinstance(value, str)
                                       and value.lower() in ("none", "null"))):
        return None
    if current is None and hint is not None:  # an optional field now None: its declared type
        kinds = [t for t in typing.get_args(hint) if t in (int, float, str)]
        if kinds:
            return _coerce(value, kinds[0](), where)
    if isinstance(current, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        like = current[0] if current else ""
        return tuple(_coerce(v, like, where) for v in items)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(value, bool):
        try:
            out = type(current)(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {type(current).__name__}, got {value!r}") \
                from None
        if isinstance(out, float) and out != out:
            raise ValueError(f"{where}: NaN is not a value")
        return out
    if isinstance(current, str) or current is None:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise ValueError(f"{where}: a {type(current).__name__} field cannot be set from the "
                     f"command line or a config file")


def _hint(cls, name: str):
    """The annotation of field ``name`` of the dataclass ``cls`` (None where it cannot be
    resolved)."""
    try:
        return typing.get_type_hints(cls).get(name)
    except (NameError, TypeError):
        return None


def with_overrides(cfg, changes: dict, origin: str):
    """``cfg`` (a frozen config dataclass) with fields replaced: ``{"field": value}`` or
    ``{"sub.field": value}`` into a nested config (e.g. figure 14's ``train.model``). Values are
    coerced to the field's type; an unknown field or a bad value is a ValueError naming
    ``origin`` and the field, with the valid fields listed."""
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        fields = {f.name for f in dataclasses.fields(cfg)}
        if head not in fields:
            raise ValueError(f"{origin}: {type(cfg).__name__} has no field {head!r} (valid: "
                             f"{', '.join(sorted(fields))})")
        current = getattr(cfg, head)
        where = f"{origin}: field {key!r}"
        if rest:
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"{where}: {head!r} is not a nested config")
            new = with_overrides(current, {rest: value}, f"{origin} ({head})")
        else:
            new = _coerce(value, current, where, _hint(type(cfg), head))
        try:
            cfg = dataclasses.replace(cfg, **{head: new})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
    return cfg


def parse_overrides(sets: Sequence[str] = (), config_file: str | Path | None = None
                    ) -> dict[str, dict]:
    """{experiment: {field: value}} from ``--config FILE`` (JSON: ``{"memory": {"model":
    "my-card"}}``) and ``--set EXPERIMENT.FIELD=VALUE`` flags (applied after the file).
    Experiment names are checked by :func:`run_figures`."""
    out: dict[str, dict] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise ValueError(f"--config {path}: {err.strerror or err}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {path}: not JSON ({err.msg}, line {err.lineno})") \
                from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError(f"--config {path}: expected an object of experiment -> "
                             f"{{field: value}}")
        for name, fields in data.items():
            out.setdefault(name, {}).update({k: (v, f"--config {path}") for k, v in
                                             fields.items()})
    for text in sets:
        key, eq, value = text.partition("=")
        name, dot, field = key.partition(".")
        if not eq or not dot or not name or not field:
            raise ValueError(f"--set {text!r}: expected EXPERIMENT.FIELD=VALUE")
        out.setdefault(name, {})[field] = (value, f"--set {text}")
    return out


def catalog() -> dict[str, Experiment]:
    """All experiments by name, in figure order."""
    exps = [importlib.import_module(mod).EXPERIMENT for mod in _MODULES]
    return {e.name: e for e in sorted(exps, key=lambda e: e.number)}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def enable_compilation_cache(out: Path) -> None:
    """Persist compiled XLA programs under <out>/.jax_cache (reruns skip most compilation)."""
    cache = Path(out) / ".jax_cache"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # as the CLI


def run_one(exp: Experiment, mode: str, out: Path, progress=None, cfg=None) -> dict:
    """Run and plot one experiment (``cfg``: its config, default the mode's); returns its
    status record."""
    out_dir = Path(out) / exp.name
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    record = {"name": exp.name, "number": exp.number, "title": exp.title, "mode": mode}
    try:
        exp.run(cfg if cfg is not None else exp.config(mode), out_dir,
                progress or identity_progress)
    except Unavailable as err:
        record.update(status="skipped", reason=str(err),
                      seconds=round(time.perf_counter() - t0, 1))
        (out_dir / "SKIPPED.txt").write_text(f"{err}\n")
        return record
    (out_dir / "SKIPPED.txt").unlink(missing_ok=True)
    t1 = time.perf_counter()
    pngs = exp.plot(out_dir)
    record.update(status="done", run_seconds=round(t1 - t0, 1),
                  plot_seconds=round(time.perf_counter() - t1, 1),
                  seconds=round(time.perf_counter() - t0, 1),
                  figures=[str(Path(p).relative_to(out)) for p in pngs])
    return record


def run_figures(mode: str = "quick", only: Sequence[str] | None = None, out: str | Path = "results",
                show_progress: bool = True, claims: bool = True, cache: bool = True,
                overrides: dict[str, dict] | None = None, jobs: int = 1,
                registrations: Sequence[tuple[str, str]] = ()) -> dict:
    """Run the experiments (all, or those named in `only`) in `mode`, plot them, and write the
    claims table; returns the summary also written to <out>/summary.json. ``overrides``:
    ``{experiment: {field: (value, origin)}}`` (:func:`parse_overrides`) replaces config
    fields, e.g. a user card (registered with ``--card-file``) as figure 6's ``model``.
    ``jobs`` > 1 runs the experiments in that many worker processes (:func:`_run_parallel`);
    ``registrations``: ("card" | "profile", file) the workers register first, as the CLI's
    ``--card-file`` / ``--profile-file`` did in this process."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cache:
        enable_compilation_cache(out)
    reg = catalog()
    names = list(reg) if not only else list(only)
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; valid: {', '.join(reg)}")
    overrides = overrides or {}
    bad = sorted(set(overrides) - set(reg))
    if bad:
        origin = next(iter(overrides[bad[0]].values()))[1]
        raise ValueError(f"{origin}: unknown experiment {bad[0]!r}; valid: {', '.join(reg)}")
    configs = {}
    for name in names:
        cfg = reg[name].config(mode)
        for field, (value, origin) in overrides.get(name, {}).items():
            cfg = with_overrides(cfg, {field: value}, origin)
        configs[name] = cfg
    records = []
    t0 = time.perf_counter()
    if jobs > 1 and len(names) > 1:
        records = _run_parallel(names, configs, mode, out, jobs, cache, registrations,
                                show_progress)
    else:
        bar = tqdm(names, desc="figures", unit="exp", disable=not show_progress, position=0)
        for name in bar:
            bar.set_postfix_str(name)

            def inner(iterable, desc="", total=None, _name=name):
                return tqdm(iterable, desc=f"  {_name}: {desc}", total=total, leave=False,
                            position=1, disable=not show_progress)

            records.append(run_one(reg[name], mode, out, inner, configs[name]))
    summary_path = out / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    merged = {r["name"]: r for r in previous.get("experiments", [])}
    merged.update({r["name"]: r for r in records})
    summary = {
        "mode": mode, "commit": _git_commit(), "python": platform.python_version(),
        "jax": jax.__version__, "wall_seconds_last_call": round(time.perf_counter() - t0, 1),
        "experiments": sorted(merged.values(), key=lambda r: r["number"]),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    if claims:
        from experiments.claims import write_claims

        summary["claims"] = [str(p) for p in write_claims(out)]
    return summary


# --- parallel runs ----------------------------------------------------------------------------
# XLA compiles a program on one core, and the experiments are independent (each writes its own
# folder), so on a machine with several cores they run in worker processes. Two things order
# them: the training runs that figures 3, 10 and 14 read are made first (one job per agent
# kind), so that no two workers train into the same folder and every figure sees the same
# runs whatever the schedule; then the experiments, longest first by the last recorded wall
# time in <out>/summary.json (QUICK_SECONDS where there is none). Workers are spawned, not
# forked (JAX is not fork-safe), and register the user's cards and profiles again.


def _worker_init(registrations, out: str, cache: bool) -> None:
    from costmodel.cards import load_card
    from costmodel.profiles import load_profile

    for kind, path in registrations:
        (load_card if kind == "card" else load_profile)(path)
    if cache:
        enable_compilation_cache(Path(out))


# Experiments that compile the same programs (figure 2 prices the partitions figure 1 solves,
# with the same solver calls): run one after the other in one worker, the second reads the
# first's compiled programs from the cache (about 30 s instead of 3 minutes, measured).
SHARED_PROGRAMS = (("latency_vs_bandwidth", "energy"),)

# Where <out>/summary.json has no time for an experiment (a fresh clone), the parallel run
# orders by these: quick-mode seconds of each experiment in a fresh-clone `make demo` (2 jobs,
# cold compilation cache, the 2-core machine, commit aab49f8; figure 3's without the training
# runs, which a parallel run does first; runtime: `figures --quick --only runtime --jobs 1`,
# 2026-12-04). Only the order depends on them, not a result: the longest first, so that no long
# experiment starts last while the other workers idle.
QUICK_SECONDS = {"latency_vs_bandwidth": 60, "energy": 11, "trace_latency": 57,
                 "backlog": 52, "v_tradeoff": 52, "memory": 2, "speedup": 2,
                 "operational_cost": 3, "robustness": 10, "training_curves": 10,
                 "accuracy": 9, "regime_map": 164, "learning": 97, "certificate": 101,
                 "runtime": 94}


def _worker_run(names: tuple[str, ...], mode: str, out: str, cfgs: tuple) -> list[dict]:
    return [run_one(catalog()[n], mode, Path(out), None, c) for n, c in zip(names, cfgs,
                                                                           strict=True)]


def _worker_train(out: str, spec, kind: str) -> str:
    from experiments.training import ensure_runs

    ensure_runs(Path(out), spec, identity_progress, kinds=(kind,))
    return kind


def _run_parallel(names, configs, mode, out: Path, jobs: int, cache: bool, registrations,
                  show_progress: bool) -> list[dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from experiments.training import KINDS, has_run

    # One training spec, the first experiment's that has one, as in a sequential run (where
    # the first experiment to need a run trains it); two specs must not train one folder.
    spec = next((c.train for n in names if (c := configs[n]) is not None
                 and getattr(c, "train", None) is not None), None)
    train = [(spec, k) for k in KINDS if spec is not None and not has_run(out / "train" / k)]
    previous = {}
    if (out / "summary.json").exists():
        previous = {r["name"]: r.get("seconds", 0.0) for r in
                    json.loads((out / "summary.json").read_text()).get("experiments", [])}
    jobs_of = []  # tuples of names, one worker job each
    for n in names:
        group = next((g for g in SHARED_PROGRAMS if n in g), (n,))
        job = tuple(x for x in group if x in names)
        if job not in jobs_of:
            jobs_of.append(job)
    order = sorted(jobs_of, key=lambda j: -sum(previous.get(n, QUICK_SECONDS.get(n, 0.0))
                                               for n in j))
    records = {}
    with ProcessPoolExecutor(jobs, mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(tuple(registrations), str(out), cache)) as pool:
        if train:
            futs = [pool.submit(_worker_train, str(out), spec, k) for spec, k in train]
            for f in tqdm(as_completed(futs), total=len(futs), desc="training agents",
                          disable=not show_progress):
                f.result()
        futs = [pool.submit(_worker_run, j, mode, str(out), tuple(configs[n] for n in j))
                for j in order]
        bar = tqdm(total=len(names), desc=f"figures ({jobs} jobs)", unit="exp",
                   disable=not show_progress)
        for f in as_completed(futs):
            for rec in f.result():
                records[rec["name"]] = rec
                bar.update(1)
                bar.set_postfix_str(f"{rec['name']} {rec.get('seconds', 0):.0f} s")
        bar.close()
    return [records[n] for n in names]
