"""costmodel.calibration: recovery of known efficiency factors from synthetic measurements made
by the model itself (with and without noise), consistency with the cost model's roofline, and
clear errors for malformed CSV files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from costmodel import costs
from costmodel.calibration import (
    COLUMNS,
    CalibrationError,
    Measurement,
    block_work,
    fit_profile,
    precision_bits,
    predict,
)
from costmodel.cards import get_card
from costmodel.link import Workload
from costmodel.profiles import get_profile
from costmodel.spec import make_spec

SMOL = get_card("smollm2-135m")
PRIOR = get_profile("rpi5")  # eff_compute 0.17, eff_memory 0.62, overhead 40 us
TRUTH = dataclasses.replace(PRIOR, eff_compute=0.23, eff_memory=0.55, overhead_us=35.0)
HEADER = ",".join(COLUMNS) + ",context"


def synthetic_rows(profile, noise=0.0, seed=0, tokens=(1, 4, 16, 64, 256, 1024),
                   precisions=("fp32", "q4_0")):
    """Rows of every block kind, token count and precision, timed by the model itself (times a
    log-normal noise factor); a few decode-style attention rows with a K/V context."""
    blocks = [f"attn_heads:{k}" for k in (1, 3, 4, 9)] + ["ffn", "ffn_w1", "ffn_w2", "lm_head"]
    rows = [Measurement(b, "edge", n, p, 1.0, precision_bits(p))
            for b in blocks for n in tokens for p in precisions]
    rows += [Measurement(f"attn_heads:{k}", "edge", 1, "fp16", 1.0, 16.0, context=c)
             for k in (3, 9) for c in (128.0, 2048.0)]
    t = predict(rows, SMOL, profile)
    t = t * np.exp(np.random.default_rng(seed).normal(0.0, noise, t.shape))
    return [dataclasses.replace(r, seconds=float(s)) for r, s in zip(rows, t, strict=True)]


def write_csv(path, rows, extra_lines=()):
    lines = [HEADER] + [f"{r.block},{r.side},{r.tokens},{r.precision},{r.seconds!r},"
                        f"{'' if r.context is None else r.context}" for r in rows]
    path.write_text("\n".join(list(lines) + list(extra_lines)) + "\n")
    return path


def test_recovers_factors_without_noise(tmp_path):
    path = write_csv(tmp_path / "m.csv", synthetic_rows(TRUTH))
    fitted, report = fit_profile(path, SMOL, PRIOR)
    assert fitted.eff_compute == pytest.approx(0.23, rel=1e-4)
    assert fitted.eff_memory == pytest.approx(0.55, rel=1e-4)
    assert fitted.overhead_us == pytest.approx(35.0, rel=1e-3)
    assert report.rms_log_error < 1e-4 and report.mape < 1e-2
    assert report.identified == {"eff_compute": True, "eff_memory": True}
    assert "m.csv" in fitted.sources["eff_compute"]
    assert fitted.peak_tflops == PRIOR.peak_tflops and fitted.name == PRIOR.name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_factors_with_noise(tmp_path, seed):
    # 5 % log-normal timing noise on 72 rows: factors within 5 %, overhead within 15 %.
    rows = synthetic_rows(TRUTH, noise=0.05, seed=seed)
    fitted, report = fit_profile(write_csv(tmp_path / "m.csv", rows), SMOL, PRIOR)
    assert fitted.eff_compute == pytest.approx(0.23, rel=0.05)
    assert fitted.eff_memory == pytest.approx(0.55, rel=0.05)
    assert fitted.overhead_us == pytest.approx(35.0, rel=0.15)
    assert 0.03 < report.rms_log_error < 0.07  # the noise level
    # The report's predictions are the fitted profile's, row by row (lines 2, 3, ...).
    np.testing.assert_allclose([r.predicted_s for r in report.rows], predict(rows, SMOL, fitted),
                               rtol=1e-9)
    assert [r.line for r in report.rows] == list(range(2, len(rows) + 2))
    assert "RMS log error" in report.table()


def test_unidentified_factor_keeps_prior(tmp_path):
    # Only single-token rows at fp32: every row is memory-bound, eff_compute is not identified.
    rows = synthetic_rows(TRUTH, tokens=(1,), precisions=("fp32",))
    rows = [r for r in rows if r.context is None]
    fitted, report = fit_profile(write_csv(tmp_path / "m.csv", rows), SMOL, PRIOR)
    assert report.identified == {"eff_compute": False, "eff_memory": True}
    assert fitted.eff_compute == PRIOR.eff_compute
    assert fitted.sources["eff_compute"] == PRIOR.sources["eff_compute"]
    assert all(r.bound == "memory" for r in report.rows)
    assert report.rms_log_error < 1e-4


def test_rows_of_the_other_side_are_ignored(tmp_path):
    rows = synthetic_rows(TRUTH)
    cloud_rows = [dataclasses.replace(r, side="cloud", seconds=r.seconds * 100) for r in rows]
    fitted, _ = fit_profile(write_csv(tmp_path / "m.csv", rows + cloud_rows), SMOL, PRIOR)
    assert fitted.eff_memory == pytest.approx(0.55, rel=1e-4)
    with pytest.raises(CalibrationError, match="no rows with side 'cloud'"):
        fit_profile(write_csv(tmp_path / "e.csv", rows), SMOL, get_profile("datacenter"))


def test_block_work_matches_the_cost_model():
    # An FFN call over n tokens and an edge-only decode pass's attention are timed exactly as
    # costmodel.costs times them.
    spec = make_spec(SMOL, PRIOR, workload=Workload(64, 8))
    for n in (1, 64):
        row = Measurement("ffn", "edge", n, "q4_0", 1.0, PRIOR.weight_bits)
        jax_t = costs.roofline(*costs._ffn_work(spec, spec.edge, SMOL.n_ffn_mats, float(n)),
                               spec.edge)
        np.testing.assert_allclose(predict([row], SMOL, PRIOR)[0], float(jax_t), rtol=1e-5)
    # attn_heads:4 with group 3 brings ceil(4/3) = 2 K/V heads.
    f, b = block_work(SMOL, "attn_heads:4", 10, 8.0, 16.0)
    d, dh = SMOL.d_model, SMOL.head_dim
    assert f == 10 * (4 * (4 * d * dh + 4 * 5.5 * dh) + 2 * 4 * d * dh)
    assert b == (4 + 2) * 2 * d * dh
    f, b = block_work(SMOL, "attn_heads:4", 1, 8.0, 16.0, context=100.0)
    assert b == (4 + 2) * 2 * d * dh + 2 * 2 * dh * 100 * 2
    assert block_work(SMOL, "lm_head", 3, 16.0, 16.0) == (6.0 * SMOL.vocab * d,
                                                          2.0 * SMOL.vocab * d)


GOOD = "attn_heads:3,edge,16,fp32,0.01,"


@pytest.mark.parametrize("lines, match", [
    (["block,side,tokens,seconds", "ffn,edge,1,0.1"],
     r"line 1: header: missing column\(s\) \['precision'\]"),
    ([HEADER + ",warmup", GOOD + ",1"], r"line 1: header: unknown column\(s\) \['warmup'\]"),
    ([HEADER, GOOD, "attn,edge,16,fp32,0.01,"], r"line 3, column 'block'"),
    ([HEADER, "attn_heads:10,edge,16,fp32,0.01,"], r"line 2, column 'block': head count"),
    ([HEADER, "attn_heads:0,edge,16,fp32,0.01,"], r"line 2, column 'block'"),
    ([HEADER, "ffn,phone,16,fp32,0.01,"], r"line 2, column 'side'"),
    ([HEADER, "ffn,edge,0,fp32,0.01,"], r"line 2, column 'tokens'"),
    ([HEADER, "ffn,edge,1.5,fp32,0.01,"], r"line 2, column 'tokens'"),
    ([HEADER, "ffn,edge,16,fp12,0.01,"], r"line 2, column 'precision'"),
    ([HEADER, "ffn,edge,16,-4,0.01,"], r"line 2, column 'precision'"),
    ([HEADER, "ffn,edge,16,fp32,-0.01,"], r"line 2, column 'seconds'"),
    ([HEADER, "ffn,edge,16,fp32,nan,"], r"line 2, column 'seconds'"),
    ([HEADER, "ffn,edge,16,fp32,fast,"], r"line 2, column 'seconds'"),
    ([HEADER, "ffn,edge,1,fp32,0.01,128"], r"line 2, column 'context': only attention"),
    ([HEADER, "attn_heads:1,edge,1,fp32,0.01,0"], r"line 2, column 'context'"),
    ([HEADER, "# a comment", "", "ffn,edge,16,fp32"], r"line 4: 4 fields, the header has 6"),
    ([], r"empty file"),
    ([HEADER], r"no measurement rows"),
])
def test_malformed_csv(tmp_path, lines, match):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CalibrationError, match=match) as err:
        fit_profile(path, SMOL, PRIOR)
    assert "bad.csv" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CalibrationError, match="cannot read"):
        fit_profile(tmp_path / "nope.csv", SMOL, PRIOR)
