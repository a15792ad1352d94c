"""Fit a device profile's efficiency factors to measured block timings.

A measurements CSV has one row per timed call of one block, with the columns
`block,side,tokens,precision,seconds` (and optionally `context`):

- block: `attn_heads:<k>` (k query heads of one layer with the ceil(k / group) K/V heads they
  need, their W_O slices included), `ffn` (the whole FFN), `ffn_w1` (gate and up projections,
  or W1 for a GELU FFN: the edge part of a split FFN), `ffn_w2` (the down projection / W2), or
  `lm_head` (the vocabulary projection);
- side: `edge` or `cloud`, the device the row was measured on (rows of the other side are
  ignored by a fit);
- tokens: tokens the call processes (n >= 1). Attention rows are prefill-style causal passes
  over n tokens (mean context (n + 1) / 2, no K/V cache read), unless `context` gives the K/V
  length of a decode-style call, which reads the K/V cache of `context` tokens;
- precision: weight precision of the measured call, a name (fp32, fp16, bf16, int8, q8_0, int4,
  q4_0, q4_1) or a number of bits per weight;
- seconds: wall time of the call (> 0).

The FLOPs and bytes of each row come from the model card with the same formulas as
`costmodel.costs`; the model of a row is the roofline of `costmodel.costs.roofline`:
    t = max(F / (eff_compute * peak), B / (eff_memory * bw)) + overhead.
With the profile's peak and bandwidth fixed, (eff_compute, eff_memory, overhead_us) are fitted
with `scipy.optimize.least_squares` on the residuals log t_predicted - log t_measured (relative
errors, so that microsecond and second rows weigh alike), bounded to (0, 1] and >= 0, from
several starting points. A factor no row is bound by is not identified: it keeps its prior
value and the report says so.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.optimize import least_squares

from costmodel.cards import ModelCard
from costmodel.costs import _attn_work, _ffn_work
from costmodel.profiles import DeviceProfile

COLUMNS = ("block", "side", "tokens", "precision", "seconds")
OPTIONAL = ("context",)
PRECISION_BITS = {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0, "int8": 8.0, "q8_0": 8.5,
                  "int4": 4.0, "q4_0": 4.5, "q4_1": 5.0}
_ATTN = re.compile(r"attn_heads:(\d+)")
EFF_MIN = 1e-6


class CalibrationError(ValueError):
    """A malformed measurements file (the message names file, line and column) or an
    impossible fit."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One timed call. bits: weight bits of `precision`; context: K/V length of a decode-style
    attention call (None: prefill-style); line: its line in the file (0 if not from a file)."""

    block: str
    side: str
    tokens: int
    precision: str
    seconds: float
    bits: float
    context: float | None = None
    line: int = 0


def precision_bits(precision: str) -> float:
    """Bits per weight of a precision name or number; ValueError if neither."""
    name = precision.strip().lower()
    if name in PRECISION_BITS:
        return PRECISION_BITS[name]
    bits = float(name)
    if not (math.isfinite(bits) and bits > 0):
        raise ValueError(precision)
    return bits


def block_work(card: ModelCard, block: str, tokens: float, bits: float, kv_bits: float,
               context: float | None = None) -> tuple[float, float]:
    """(FLOPs, bytes) of one call of `block` over `tokens` tokens at `bits` per weight."""
    spec = SimpleNamespace(d_model=card.d_model, head_dim=card.head_dim, d_ff=card.d_ff)
    prof = SimpleNamespace(weight_bytes=bits / 8.0, kv_bytes=kv_bits / 8.0)
    m = card.n_ffn_mats
    match = _ATTN.fullmatch(block)
    if match:
        k = int(match.group(1))
        groups = -(-k // card.group_size)
        ctx, read = ((tokens + 1.0) / 2.0, 0.0) if context is None else (context, 1.0)
        return tuple(float(x) for x in _attn_work(spec, prof, k, groups, tokens, ctx, read))
    mats = {"ffn": m, "ffn_w1": m - 1, "ffn_w2": 1}.get(block)
    if mats is not None:
        return tuple(float(x) for x in _ffn_work(spec, prof, mats, tokens))
    if block == "lm_head":
        params = card.vocab * card.d_model
        return 2.0 * tokens * params, bits / 8.0 * params
    raise ValueError(f"unknown block {block!r}")


def read_measurements(path: str | Path, card: ModelCard) -> list[Measurement]:
    """Parse and validate a measurements CSV; errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise CalibrationError(f"{path}: cannot read: {err}") from None
    lines = text.splitlines()
    reader = csv.reader(lines)
    header = None
    rows: list[Measurement] = []
    for lineno, fields in enumerate(reader, start=1):
        if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in fields]
        if header is None:
            header = fields
            missing = [c for c in COLUMNS if c not in header]
            unknown = [c for c in header if c not in COLUMNS + OPTIONAL]
            if missing or unknown:
                what = (f"missing column(s) {missing}" if missing else
                        f"unknown column(s) {unknown}")
                raise CalibrationError(f"{path}, line {lineno}: header: {what}; expected "
                                       f"{','.join(COLUMNS)} (optional: {','.join(OPTIONAL)})")
            continue
        if len(fields) != len(header):
            raise CalibrationError(f"{path}, line {lineno}: {len(fields)} fields, the header "
                                   f"has {len(header)}")
        rows.append(_parse_row(dict(zip(header, fields, strict=True)), card, path, lineno))
    if header is None:
        raise CalibrationError(f"{path}: empty file; expected the header {','.join(COLUMNS)}")
    if not rows:
        raise CalibrationError(f"{path}: no measurement rows after the header")
    return rows


def _parse_row(row: dict, card: ModelCard, path: Path, lineno: int) -> Measurement:
    def bad(column, message):
        return CalibrationError(f"{path}, line {lineno}, column {column!r}: {message} "
                                f"(got {row[column]!r})")

    block = row["block"]
    match = _ATTN.fullmatch(block)
    if match:
        k = int(match.group(1))
        if not 1 <= k <= card.n_heads:
            raise bad("block", f"head count must be in [1, {card.n_heads}] for {card.name}")
    elif block not in ("ffn", "ffn_w1", "ffn_w2", "lm_head"):
        raise bad("block", "must be attn_heads:<k>, ffn, ffn_w1, ffn_w2 or lm_head")
    if row["side"] not in ("edge", "cloud"):
        raise bad("side", "must be 'edge' or 'cloud'")
    try:
        tokens = int(row["tokens"])
    except ValueError:
        raise bad("tokens", "must be a positive integer") from None
    if tokens <= 0:
        raise bad("tokens", "must be a positive integer")
    try:
        bits = precision_bits(row["precision"])
    except ValueError:
        raise bad("precision", f"must be one of {sorted(PRECISION_BITS)} or a positive number "
                               "of bits") from None
    try:
        seconds = float(row["seconds"])
    except ValueError:
        raise bad("seconds", "must be a number") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise bad("seconds", "must be a finite number > 0")
    context = None
    if row.get("context"):
        try:
            context = float(row["context"])
        except ValueError:
            raise bad("context", "must be a number") from None
        if not (math.isfinite(context) and context >= 1):
            raise bad("context", "must be a finite number >= 1")
        if not match:
            raise bad("context", "only attention rows read a K/V cache")
    return Measurement(block, row["side"], tokens, row["precision"], seconds, bits, context,
                       lineno)


def predict(rows: list[Measurement], card: ModelCard, profile: DeviceProfile) -> np.ndarray:
    """float [N]: seconds the roofline of `profile` predicts for each row."""
    work = np.array([block_work(card, r.block, r.tokens, r.bits, profile.kv_bits, r.context)
                     for r in rows])
    return _roofline(work, profile.peak_tflops * 1e12 * profile.eff_compute,
                     profile.mem_bw_gbs * 1e9 * profile.eff_memory, profile.overhead_us * 1e-6)


def _roofline(work: np.ndarray, flops: float, bw: float, overhead_s: float) -> np.ndarray:
    return np.maximum(work[:, 0] / flops, work[:, 1] / bw) + overhead_s


@dataclasses.dataclass(frozen=True)
class RowFit:
    block: str
    side: str
    tokens: int
    precision: str
    measured_s: float
    predicted_s: float
    bound: str  # "compute" or "memory" at the fitted factors
    line: int
    context: float | None = None


@dataclasses.dataclass(frozen=True)
class FitReport:
    """Per-row predicted vs measured seconds and the fit error.

    rms_log_error: sqrt(mean((log t_pred - log t_meas)^2)); mape: mean |t_pred - t_meas| / t_meas
    in percent; identified: whether any row is bound by compute (eff_compute) or by memory
    (eff_memory) at the fit; a factor no row is bound by keeps the prior profile's value."""

    rows: tuple[RowFit, ...]
    rms_log_error: float
    mape: float
    eff_compute: float
    eff_memory: float
    overhead_us: float
    identified: dict
    source: str

    def table(self) -> str:
        lines = [f"{'line':>5} {'block':<14} {'side':<5} {'tokens':>6} {'ctx':>6} {'prec':<5} "
                 f"{'measured s':>11} {'predicted s':>11} {'err %':>7} bound"]
        for r in self.rows:
            err = 100.0 * (r.predicted_s - r.measured_s) / r.measured_s
            ctx = "" if r.context is None else f"{r.context:g}"
            lines.append(f"{r.line:>5} {r.block:<14} {r.side:<5} {r.tokens:>6} {ctx:>6} "
                         f"{r.precision:<5} {r.measured_s:>11.4g} {r.predicted_s:>11.4g} "
                         f"{err:>7.1f} {r.bound}")
        ident = ", ".join(f"{k} {'yes' if v else 'no (prior kept)'}"
                          for k, v in self.identified.items())
        lines.append(f"eff_compute {self.eff_compute:.4g}, eff_memory {self.eff_memory:.4g}, "
                     f"overhead {self.overhead_us:.4g} us; RMS log error "
                     f"{self.rms_log_error:.4f}, MAPE {self.mape:.2f} %; identified: {ident}")
        return "\n".join(lines)


def fit_profile(path: str | Path, card: ModelCard, profile: DeviceProfile,
                side: str | None = None) -> tuple[DeviceProfile, FitReport]:
    """Fit (eff_compute, eff_memory, overhead_us) of `profile` to the rows of `path` measured
    on `side` (default: the profile's role). Returns the fitted profile (its `sources` cite the
    file) and the report."""
    side = side or profile.role
    rows = [r for r in read_measurements(path, card) if r.side == side]
    if not rows:
        raise CalibrationError(f"{path}: no rows with side {side!r}")
    return fit_rows(rows, card, profile, origin=str(path))


def fit_rows(rows: list[Measurement], card: ModelCard, profile: DeviceProfile,
             origin: str = "<rows>") -> tuple[DeviceProfile, FitReport]:
    """`fit_profile` on already parsed rows."""
    work = np.array([block_work(card, r.block, r.tokens, r.bits, profile.kv_bits, r.context)
                     for r in rows])
    measured = np.array([r.seconds for r in rows])
    peak, bw = profile.peak_tflops * 1e12, profile.mem_bw_gbs * 1e9
    log_t = np.log(measured)

    def residuals(x):
        pred = _roofline(work, peak * math.exp(x[0]), bw * math.exp(x[1]), x[2] * 1e-6)
        return np.log(pred) - log_t

    lo = [math.log(EFF_MIN), math.log(EFF_MIN), 0.0]
    hi = [0.0, 0.0, max(1e6 * measured.max(), 1.0)]
    prior = [math.log(profile.eff_compute), math.log(profile.eff_memory), profile.overhead_us]
    starts = [prior]
    for ec in (1.0, 0.3, 0.03):
        for em in (1.0, 0.3, 0.03):
            starts.append([math.log(ec), math.log(em), 1e6 * 0.5 * measured.min()])
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lo, hi)
        res = least_squares(residuals, x0, bounds=(lo, hi), x_scale=[1.0, 1.0, 1.0 + x0[2]],
                            method="trf")
        if best is None or res.cost < best.cost * (1 - 1e-9) - 1e-15:
            best = res
    ec, em, ov = math.exp(best.x[0]), math.exp(best.x[1]), float(best.x[2])

    t_c = work[:, 0] / (peak * ec)
    t_m = work[:, 1] / (bw * em)
    compute_bound = t_c >= t_m
    identified = {"eff_compute": bool(compute_bound.any()),
                  "eff_memory": bool((~compute_bound).any())}
    # A factor no row is bound by does not change the fit: keep the prior if it leaves every
    # row in its regime, else the nearest value that does.
    if not identified["eff_compute"]:
        ec = max(profile.eff_compute, float(np.max(work[:, 0] / (peak * t_m))))
        ec = min(ec, 1.0)
    if not identified["eff_memory"]:
        em = min(max(profile.eff_memory, float(np.max(work[:, 1] / (bw * t_c)))), 1.0)
    pred = _roofline(work, peak * ec, bw * em, ov * 1e-6)
    log_err = np.log(pred) - log_t
    rms = float(np.sqrt(np.mean(log_err ** 2)))
    mape = float(100.0 * np.mean(np.abs(pred - measured) / measured))
    bound = np.where(work[:, 0] / (peak * ec) >= work[:, 1] / (bw * em), "compute", "memory")
    report = FitReport(
        rows=tuple(RowFit(r.block, r.side, r.tokens, r.precision, r.seconds, float(p), str(b),
                          r.line, r.context) for r, p, b in zip(rows, pred, bound, strict=True)),
        rms_log_error=rms, mape=mape, eff_compute=ec, eff_memory=em, overhead_us=ov,
        identified=identified, source=origin)
    note = f"fit: {origin} ({len(rows)} rows, RMS log error {rms:.3f}, MAPE {mape:.1f} %)"
    sources = dict(profile.sources, overhead_us=note)
    for field, ok in identified.items():
        if ok:
            sources[field] = note
    fitted = dataclasses.replace(profile, eff_compute=ec, eff_memory=em, overhead_us=ov,
                                 sources=sources)
    return fitted, report
