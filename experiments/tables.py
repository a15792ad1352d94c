"""Result tables on disk: CSV with a header (`write_rows` / `read_rows`), the run's config as
JSON beside the arrays (`write_config`), and small selectors over rows."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def write_rows(path: Path, rows: Sequence[dict]) -> Path:
    """CSV of `rows` (columns: the union of their keys, in first-seen order; booleans 1/0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(cols)
        for r in rows:
            wr.writerow([_fmt(r.get(k, "")) for k in cols])
    return path


def _parse(v: str):
    if v == "":
        return None
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV written by `write_rows`, numbers parsed back (empty -> None)."""
    with Path(path).open(newline="") as fh:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def column(rows: Iterable[dict], key: str, **where) -> np.ndarray:
    """The `key` column of the rows matching all `where` equalities, as a float array."""
    out = [r[key] for r in rows if all(r.get(k) == v for k, v in where.items())]
    return np.asarray([np.nan if x is None else x for x in out], dtype=float)


def by_key(rows: Iterable[dict], *keys) -> dict[tuple, dict]:
    """{(row[k] for k in keys): row}."""
    return {tuple(r[k] for k in keys): r for r in rows}


def write_config(out_dir: Path, cfg, **extra) -> Path:
    """<out_dir>/config.json: {"config": the frozen config as a dict, **extra}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"config": _jsonable(dataclasses.asdict(cfg)), **_jsonable(extra)}
    path = out_dir / "config.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def read_config(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "config.json").read_text())


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x
