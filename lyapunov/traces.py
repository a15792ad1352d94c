"""Network throughput traces: loaders for three file formats and resampling to the slot grid.

A :class:`Trace` is a piecewise-constant throughput signal: ``mbps[i]`` (Mbit/s) holds on
``[time_s[i], time_s[i + 1])`` (a zero-order hold), and the last sample holds until
``time_s[0] + duration_s``. Pensieve's own simulator attributes line ``i`` to the interval
*ending* at ``time_s[i]`` instead; the two conventions differ by one sample's shift, not in the
mean.

Formats (``load_trace(path, fmt=...)``):

- ``"pensieve"``: two whitespace-separated columns per line, ``time_s  Mbit/s`` (the
  "cooked" traces of Pensieve; Riiser et al. MMSys 2013, FCC MBA 2016). Time strictly
  increasing.
- ``"mahimahi"``: one integer per line, the millisecond (since start) of one 1500-byte
  delivery opportunity; a value repeated ``k`` times means ``k`` packets in that ms. The
  trace's period is its last timestamp. Converted to Mbit/s over ``bin_ms`` bins.
- ``"csv"``: comma-separated with a header line, a named throughput column with a unit in
  ``{"bps", "kbps", "mbps"}`` (5Gophers: ``throughput_mbps``; G-NetTrack: ``DL_bitrate`` in
  kbit/s), an optional time column (seconds) or else a fixed sample period (1 Hz), and
  optional equality filters on other columns (e.g. ``{"carrier": "VERIZON"}``).

Every malformed file raises :class:`TraceFormatError` naming the file, the 1-based line
number and the reason. The few traces shipped with the package (``SHIPPED_TRACES``; see
``lyapunov/data/traces/README.md`` for their origin and licence) load with
:func:`load_shipped`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MAHIMAHI_PACKET_BYTES = 1500
"""Bytes delivered per mahimahi delivery opportunity (one line of the file)."""

UNIT_TO_MBPS = {"bps": 1e-6, "kbps": 1e-3, "mbps": 1.0}
"""Multiplier from a CSV column's unit to Mbit/s."""

FORMATS = ("auto", "pensieve", "mahimahi", "csv")

SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "traces"
"""Folder of the traces shipped with the package (with their licence and README)."""

SHIPPED_TRACES = ("norway_bus_1", "norway_car_1", "norway_ferry_1", "norway_metro_1",
                  "fivegophers_verizon_drive_2", "fcc_10730")
"""Names of the shipped traces, all in the ``pensieve`` format (the last two have outages)."""
NORWAY_TRACES = SHIPPED_TRACES[:4]
"""The four Norway HSDPA commutes (no zero-throughput samples)."""
OUTAGE_TRACES = SHIPPED_TRACES[4:]
"""Shipped traces with zero-throughput periods."""

_KNOWN_CSV_COLUMNS = (("throughput_mbps", "mbps"), ("DL_bitrate", "kbps"))


class TraceFormatError(ValueError):
    """A trace file that cannot be read as the requested format.

    Attributes:
      path: the file.
      line: 1-based line number of the offending line (0 when the file as a whole is wrong,
        e.g. empty).
      reason: what is wrong, in words.
    """

    def __init__(self, path: str | Path, line: int, reason: str):
        self.path = str(path)
        self.line = int(line)
        self.reason = reason
        super().__init__(f"{self.path}:{self.line}: {reason}")


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """A throughput trace (piecewise constant, zero-order hold).

    Attributes:
      name: short name (the file's stem by default).
      time_s: float64 [N], sample start times in seconds, strictly increasing.
      mbps: float64 [N], throughput in Mbit/s (>= 0) holding from ``time_s[i]`` on.
      source: where it came from (path and format).
      duration_s: seconds covered, from ``time_s[0]``; must exceed ``time_s[-1] - time_s[0]``.
        Default: the last sample holds for the median sampling interval (1 s for N = 1).
    """

    name: str
    time_s: np.ndarray
    mbps: np.ndarray
    source: str
    duration_s: float | None = None

    def __post_init__(self):
        time_s = np.asarray(self.time_s, dtype=np.float64)
        mbps = np.asarray(self.mbps, dtype=np.float64)
        if time_s.ndim != 1 or mbps.shape != time_s.shape or time_s.size == 0:
            raise ValueError(
                f"Trace {self.name!r}: time_s and mbps must be non-empty 1-D arrays of one "
                f"length; got shapes {time_s.shape} and {mbps.shape}"
            )
        if not (np.all(np.isfinite(time_s)) and np.all(np.isfinite(mbps))):
            raise ValueError(f"Trace {self.name!r}: time_s and mbps must be finite")
        if np.any(np.diff(time_s) <= 0):
            raise ValueError(f"Trace {self.name!r}: time_s must be strictly increasing")
        if np.any(mbps < 0):
            raise ValueError(f"Trace {self.name!r}: mbps must be >= 0")
        span = float(time_s[-1] - time_s[0])
        if self.duration_s is None:
            last_dt = float(np.median(np.diff(time_s))) if time_s.size > 1 else 1.0
            duration = span + last_dt
        else:
            duration = float(self.duration_s)
            if not (math.isfinite(duration) and duration > span):
                raise ValueError(
                    f"Trace {self.name!r}: duration_s must exceed the time span {span} s; "
                    f"got {self.duration_s}"
                )
        time_s.setflags(write=False)
        mbps.setflags(write=False)
        object.__setattr__(self, "time_s", time_s)
        object.__setattr__(self, "mbps", mbps)
        object.__setattr__(self, "duration_s", duration)

    def mean_mbps(self) -> float:
        """Time-weighted mean throughput over the trace's duration, Mbit/s."""
        return float(_cumulative_mbit(self)[-1] / self.duration_s)


# --------------------------------------------------------------------------------------------
# Loaders


def load_pensieve(path: str | Path, name: str | None = None) -> Trace:
    """Read a two-column ``time_s Mbit/s`` file (Pensieve "cooked" format).

    Blank lines are skipped. Raises TraceFormatError for an empty file, a line without exactly
    two numbers, a non-finite or negative value, or a time not strictly after the previous one.
    """
    path = Path(path)
    times, values = [], []
    prev_t, prev_line = None, 0
    for lineno, raw in _read_lines(path):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise TraceFormatError(
                path, lineno, f"expected 2 columns 'time_s Mbit/s', found {len(parts)}"
            )
        t = _parse_float(path, lineno, parts[0], "time")
        v = _parse_float(path, lineno, parts[1], "throughput")
        if v < 0:
            raise TraceFormatError(path, lineno, f"negative throughput {v}")
        if prev_t is not None and t <= prev_t:
            raise TraceFormatError(
                path, lineno,
                f"time {t} s is not after {prev_t} s on line {prev_line} (non-monotone time)",
            )
        prev_t, prev_line = t, lineno
        times.append(t)
        values.append(v)
    if not times:
        raise TraceFormatError(path, 0, "empty trace (no data lines)")
    return Trace(name or path.name, np.array(times), np.array(values), f"{path} (pensieve)")


def load_mahimahi(path: str | Path, bin_ms: float = 100.0, name: str | None = None) -> Trace:
    """Read a mahimahi link trace and convert it to Mbit/s per ``bin_ms`` bin.

    Each line is the integer millisecond at which one 1500-byte packet may be delivered;
    repeated values are several packets in that millisecond. Timestamps must be
    non-decreasing, and the last one, the period ``T`` with which mahimahi loops the file,
    must be > 0. Bin ``k`` covers ``(k·bin_ms, (k+1)·bin_ms]`` ms (right-closed, so the
    canonical constant-rate file ``1, 2, ..., 1000`` gives equal bins); the last bin ends at
    ``T`` and may be shorter, and an opportunity at ms 0 is the same instant as ``T`` of the
    previous loop, so it counts in the last bin. The throughput of a bin is
    ``packets · 1500 · 8 / width`` bit/s, so the total bytes are conserved.
    """
    path = Path(path)
    if not (math.isfinite(bin_ms) and bin_ms > 0):
        raise ValueError(f"bin_ms must be a positive number; got {bin_ms}")
    stamps = []
    prev, prev_line = None, 0
    for lineno, raw in _read_lines(path):
        s = raw.strip()
        if not s:
            continue
        try:
            ms = int(s)
        except ValueError:
            raise TraceFormatError(
                path, lineno, f"expected an integer millisecond timestamp, found {s!r}"
            ) from None
        if ms < 0:
            raise TraceFormatError(path, lineno, f"negative timestamp {ms} ms")
        if prev is not None and ms < prev:
            raise TraceFormatError(
                path, lineno,
                f"timestamp {ms} ms is before {prev} ms on line {prev_line} (non-monotone time)",
            )
        prev, prev_line = ms, lineno
        stamps.append(ms)
    if not stamps:
        raise TraceFormatError(path, 0, "empty trace (no data lines)")
    period_ms = stamps[-1]
    if period_ms <= 0:
        raise TraceFormatError(path, prev_line, "trace period (last timestamp) is 0 ms")
    n_bins = math.ceil(period_ms / bin_ms)
    idx = np.ceil(np.asarray(stamps, dtype=np.float64) / bin_ms).astype(np.int64) - 1
    idx = np.clip(np.where(idx < 0, n_bins - 1, idx), 0, n_bins - 1)
    packets = np.bincount(idx, minlength=n_bins).astype(np.float64)
    starts_ms = np.arange(n_bins, dtype=np.float64) * bin_ms
    widths_ms = np.minimum(starts_ms + bin_ms, period_ms) - starts_ms
    mbps = packets * MAHIMAHI_PACKET_BYTES * 8.0 / (widths_ms * 1e-3) / 1e6
    return Trace(
        name or path.name,
        starts_ms / 1e3,
        mbps,
        f"{path} (mahimahi, {bin_ms:g} ms bins)",
        duration_s=period_ms / 1e3,
    )


def load_csv(
    path: str | Path,
    column: str,
    unit: str = "mbps",
    time_column: str | None = None,
    sample_period_s: float = 1.0,
    filters: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Trace:
    """Read a throughput column of a CSV file with a header line.

    Args:
      path: the CSV file.
      column: name of the throughput column (``throughput_mbps`` for 5Gophers, ``DL_bitrate``
        or ``UL_bitrate`` for G-NetTrack).
      unit: unit of ``column``: ``"bps"``, ``"kbps"`` or ``"mbps"`` (G-NetTrack is kbit/s).
      time_column: a column of times in seconds (strictly increasing over the kept rows);
        None: rows are ``sample_period_s`` apart starting at 0.
      sample_period_s: seconds between rows when ``time_column`` is None (1 Hz default).
      filters: keep only rows whose named columns equal the given strings, e.g.
        ``{"carrier": "VERIZON", "run_num": "1"}`` (5Gophers concatenates runs).
      name: trace name (default: the file name).
    """
    path = Path(path)
    if unit not in UNIT_TO_MBPS:
        raise ValueError(f"unit must be one of {sorted(UNIT_TO_MBPS)}; got {unit!r}")
    if not (math.isfinite(sample_period_s) and sample_period_s > 0):
        raise ValueError(f"sample_period_s must be a positive number; got {sample_period_s}")
    filters = dict(filters or {})
    scale = UNIT_TO_MBPS[unit]
    lines = _text_lines(path)
    try:
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise TraceFormatError(path, 0, "empty file (no header line)")
        header = [h.strip() for h in header]
        wanted = [column] + ([time_column] if time_column else []) + list(filters)
        for col in wanted:
            if col not in header:
                raise TraceFormatError(path, 1, f"no column {col!r}; the header has {header}")
        i_val = header.index(column)
        i_time = header.index(time_column) if time_column else None
        i_filters = [(header.index(k), str(v)) for k, v in filters.items()]
        times, values = [], []
        prev_t, prev_line = None, 0
        for row in reader:
            lineno = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TraceFormatError(
                    path, lineno, f"expected {len(header)} fields, found {len(row)}"
                )
            if any(row[i].strip() != v for i, v in i_filters):
                continue
            v = _parse_float(path, lineno, row[i_val].strip(), f"column {column!r}") * scale
            if v < 0:
                raise TraceFormatError(path, lineno, f"negative throughput {v} Mbit/s")
            if i_time is not None:
                t = _parse_float(path, lineno, row[i_time].strip(), f"column {time_column!r}")
                if prev_t is not None and t <= prev_t:
                    raise TraceFormatError(
                        path, lineno,
                        f"time {t} s is not after {prev_t} s on line {prev_line} "
                        "(non-monotone time)",
                    )
                prev_t, prev_line = t, lineno
                times.append(t)
            values.append(v)
    finally:
        lines.close()
    if not values:
        why = f" matching {filters}" if filters else ""
        raise TraceFormatError(path, 0, f"empty trace (no data rows{why})")
    time_s = np.array(times) if i_time is not None else np.arange(len(values)) * sample_period_s
    duration = None if i_time is not None else len(values) * sample_period_s
    return Trace(
        name or path.name,
        time_s,
        np.array(values),
        f"{path} (csv, {column} [{unit}])",
        duration_s=duration,
    )


def detect_format(path: str | Path) -> str:
    """Guess a trace file's format: ``csv`` by extension or a header with a known column,
    ``mahimahi`` for one integer a line, ``pensieve`` for two numbers a line."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "csv"
    for lineno, raw in _read_lines(path):
        parts = raw.split()
        if not parts:
            continue
        if "," in raw:
            return "csv"
        if len(parts) == 1 and parts[0].lstrip("-").isdigit():
            return "mahimahi"
        if len(parts) == 2:
            return "pensieve"
        raise TraceFormatError(
            path, lineno,
            "cannot detect the format (expected 'time_s Mbit/s', one integer ms, or CSV)",
        )
    raise TraceFormatError(path, 0, "empty trace (no data lines)")


def load_trace(path: str | Path, fmt: str = "auto", **kw) -> Trace:
    """Load a trace file.

    Args:
      path: the file.
      fmt: ``"auto"`` (see :func:`detect_format`), ``"pensieve"``, ``"mahimahi"`` or ``"csv"``.
      **kw: passed to the loader: ``bin_ms`` (mahimahi); ``column``, ``unit``,
        ``time_column``, ``sample_period_s``, ``filters`` (csv); ``name`` (all). For a CSV
        without ``column``, a known column is used: ``throughput_mbps`` (Mbit/s), else
        ``DL_bitrate`` (kbit/s).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "pensieve":
        return load_pensieve(path, **kw)
    if fmt == "mahimahi":
        return load_mahimahi(path, **kw)
    if "column" not in kw:
        header = _csv_header(Path(path))
        for col, unit in _KNOWN_CSV_COLUMNS:
            if col in header:
                kw = {"column": col, "unit": unit, **kw}
                break
        else:
            raise TraceFormatError(
                path, 1,
                f"no known throughput column {[c for c, _ in _KNOWN_CSV_COLUMNS]} in header "
                f"{header}; pass column= and unit=",
            )
    return load_csv(path, **kw)


def load_shipped(name: str) -> Trace:
    """Load one of ``SHIPPED_TRACES`` (origins and licences: ``lyapunov/data/traces/README.md``)."""
    return load_pensieve(shipped_trace_path(name), name=name)


def shipped_trace_path(name: str) -> Path:
    """Path of a shipped trace file."""
    if name not in SHIPPED_TRACES:
        raise ValueError(f"unknown shipped trace {name!r}; available: {SHIPPED_TRACES}")
    return SHIPPED_DIR / name


# --------------------------------------------------------------------------------------------
# Resampling


def resample(
    trace: Trace, slot_s: float, n_slots: int | None = None, offset_s: float = 0.0
) -> np.ndarray:
    """Mean throughput of each slot of length ``slot_s``, Mbit/s.

    The trace is the zero-order hold of its samples over ``[time_s[0], time_s[0] +
    duration_s)``, and the value of slot ``k`` is the exact time-average of that signal over
    ``[offset_s + k·slot_s, offset_s + (k+1)·slot_s)`` (times relative to ``time_s[0]``).
    **The trace wraps around**: asking for more slots than it holds (``n_slots · slot_s +
    offset_s > duration_s``), or for a slot longer than the trace, replays it periodically from
    its start; a slot that straddles the end averages the end and the start.

    Args:
      trace: the trace.
      slot_s: slot length in seconds (> 0).
      n_slots: number of slots; default ``max(1, floor(duration_s / slot_s))``, the whole
        slots the trace holds (without wrapping unless the trace is shorter than a slot).
      offset_s: start time relative to the trace's start, seconds (>= 0).

    Returns:
      float64 [n_slots], mean Mbit/s per slot.
    """
    if not (math.isfinite(slot_s) and slot_s > 0):
        raise ValueError(f"slot_s must be a positive number; got {slot_s}")
    if not (math.isfinite(offset_s) and offset_s >= 0):
        raise ValueError(f"offset_s must be a non-negative number; got {offset_s}")
    duration = trace.duration_s
    if n_slots is None:
        n_slots = max(1, int(math.floor(duration / slot_s + 1e-9)))
    if n_slots < 1:
        raise ValueError(f"n_slots must be >= 1; got {n_slots}")
    knots_t = np.append(trace.time_s - trace.time_s[0], duration)
    knots_f = _cumulative_mbit(trace)

    def integral(t):
        periods, rem = np.divmod(t, duration)
        return periods * knots_f[-1] + np.interp(rem, knots_t, knots_f)

    edges = offset_s + slot_s * np.arange(n_slots + 1, dtype=np.float64)
    return np.diff(integral(edges)) / slot_s


# --------------------------------------------------------------------------------------------
# Helpers


def _cumulative_mbit(trace: Trace) -> np.ndarray:
    """Integral of the held signal at each knot (sample starts and the end): float64 [N+1]."""
    widths = np.diff(np.append(trace.time_s, trace.time_s[0] + trace.duration_s))
    return np.concatenate([[0.0], np.cumsum(trace.mbps * widths)])


def _read_lines(path: Path):
    """Yield (1-based line number, decoded line); a line that is not UTF-8 raises
    TraceFormatError at its own number."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise TraceFormatError(path, 0, f"cannot open: {e.strerror or e}") from e
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TraceFormatError(path, lineno, f"not UTF-8 text ({e.reason})") from e


def _text_lines(path: Path):
    """The decoded lines of a file, for csv.reader (whose line_num then counts them)."""
    for _, line in _read_lines(path):
        yield line


def _csv_header(path: Path) -> list[str]:
    header = next(csv.reader(_text_lines(path)), None)
    if header is None:
        raise TraceFormatError(path, 0, "empty file (no header line)")
    return [h.strip() for h in header]


def _parse_float(path: Path, lineno: int, text: str, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise TraceFormatError(path, lineno, f"{what}: not a number: {text!r}") from None
    if not math.isfinite(x):
        raise TraceFormatError(path, lineno, f"{what}: not finite: {text!r}")
    return x
