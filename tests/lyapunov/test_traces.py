"""Trace loaders and resampling: hand-worked files, shipped traces, malformed inputs."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lyapunov.traces import (
    NORWAY_TRACES,
    OUTAGE_TRACES,
    SHIPPED_TRACES,
    Trace,
    TraceFormatError,
    load_csv,
    load_mahimahi,
    load_pensieve,
    load_shipped,
    load_trace,
    resample,
    shipped_trace_path,
)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------
# Pensieve two-column format


def test_pensieve_hand_worked(tmp_path):
    p = _write(tmp_path, "t", "0.0 2.0\n1.0\t4.0\n\n3.0 1.0\n")
    tr = load_pensieve(p)
    np.testing.assert_array_equal(tr.time_s, [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(tr.mbps, [2.0, 4.0, 1.0])
    # last sample holds for the median gap median(1, 2) = 1.5 s -> duration 4.5 s
    assert tr.duration_s == pytest.approx(4.5)
    # time-weighted mean: (2*1 + 4*2 + 1*1.5) / 4.5 = 11.5 / 4.5
    assert tr.mean_mbps() == pytest.approx(11.5 / 4.5)
    assert tr.name == "t" and "pensieve" in tr.source


# (licence file, citation in the README, range of the sample mean in Mbit/s, zero fraction)
SHIPPED_FACTS = {
    **{n: ("LICENSE.pensieve-MIT", "Riiser", (0.7, 3.4), 0.0) for n in NORWAY_TRACES},
    "fivegophers_verizon_drive_2": ("LICENSE.5gophers-CC-BY-4.0", "Narayanan", (150, 250),
                                    11 / 120),
    "fcc_10730": ("LICENSE.pensieve-MIT", "Measuring Broadband America", (0.4, 0.6), 9 / 336),
}


def test_every_shipped_trace_has_its_facts():
    assert set(SHIPPED_FACTS) == set(SHIPPED_TRACES)
    assert set(OUTAGE_TRACES) == {n for n, f in SHIPPED_FACTS.items() if f[3] > 0}


@pytest.mark.parametrize("name", SHIPPED_TRACES)
def test_shipped_traces(name):
    licence, cite, (lo, hi), zeros = SHIPPED_FACTS[name]
    path = shipped_trace_path(name)
    assert (path.parent / licence).is_file()
    assert cite in (path.parent / "README.md").read_text()
    ref = np.loadtxt(path)
    assert np.mean(ref[:, 1] == 0) == pytest.approx(zeros)
    tr = load_shipped(name)
    assert load_trace(path).name == name
    np.testing.assert_array_equal(tr.time_s, ref[:, 0])
    np.testing.assert_array_equal(tr.mbps, ref[:, 1])
    assert tr.mbps.mean() == pytest.approx(ref[:, 1].mean(), rel=1e-12)
    assert lo <= tr.mbps.mean() <= hi
    # time-weighted mean from NumPy: zero-order hold, last sample held for the median gap
    gaps = np.diff(ref[:, 0])
    widths = np.append(gaps, np.median(gaps))
    tw_mean = (ref[:, 1] * widths).sum() / widths.sum()
    assert tr.mean_mbps() == pytest.approx(tw_mean, rel=1e-12)
    # resampling to whole slots over exactly one period preserves the time-weighted mean
    n = 7
    per_slot = resample(tr, tr.duration_s / n)
    assert per_slot.shape == (n,)
    assert per_slot.mean() == pytest.approx(tw_mean, rel=1e-9)
    assert np.all(per_slot >= 0)


# ------------------------------------------------------------------------------------------
# resample


def test_resample_hand_worked():
    # signal: 2 Mbit/s on [0,1), 4 on [1,3), 1 on [3,4); period 4 s
    tr = Trace("x", np.array([0.0, 1.0, 3.0]), np.array([2.0, 4.0, 1.0]), "test", duration_s=4.0)
    # 2 s slots: [0,2) -> (2+4)/2 = 3, [2,4) -> (4+1)/2 = 2.5
    np.testing.assert_allclose(resample(tr, 2.0), [3.0, 2.5])
    # 1.5 s slots, 4 of them (6 s > 4 s: wraps): [0,1.5) -> (2 + 0.5*4)/1.5 = 8/3,
    # [1.5,3) -> 4, [3,4.5) -> (1 + 0.5*2)/1.5 = 4/3 (wraps), [4.5,6) -> (0.5*2 + 4)/1.5 = 10/3
    np.testing.assert_allclose(resample(tr, 1.5, n_slots=4), [8 / 3, 4.0, 4 / 3, 10 / 3])
    # offset 3 s, 1 s slots: [3,4) -> 1, [4,5) -> 2 (wrapped), [5,6) -> 4
    np.testing.assert_allclose(resample(tr, 1.0, n_slots=3, offset_s=3.0), [1.0, 2.0, 4.0])
    # slot longer than the trace: one slot of 8 s is two periods -> the mean 11/4
    np.testing.assert_allclose(resample(tr, 8.0), [11.0 / 4.0])


def test_resample_rejects_bad_arguments():
    tr = Trace("x", np.array([0.0]), np.array([1.0]), "test")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="slot_s"):
            resample(tr, bad)
    with pytest.raises(ValueError, match="n_slots"):
        resample(tr, 1.0, n_slots=0)
    with pytest.raises(ValueError, match="offset_s"):
        resample(tr, 1.0, offset_s=-1.0)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(0.05, 5.0), min_size=1, max_size=30),
    data=st.data(),
    slot_s=st.floats(0.05, 10.0),
    periods=st.integers(1, 3),
)
def test_resample_conserves_volume(gaps, data, slot_s, periods):
    """Over whole periods, slot means times slot length integrate the trace exactly; the
    output is within [min, max] of the samples and wraps periodically."""
    n = len(gaps)
    mbps = np.array(data.draw(st.lists(st.floats(0.0, 1e3), min_size=n, max_size=n)))
    time_s = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    tr = Trace("h", time_s, mbps, "hypothesis", duration_s=float(np.sum(gaps)))
    volume = float(np.sum(mbps * np.asarray(gaps)))
    slot = tr.duration_s / data.draw(st.integers(1, 50))
    out = resample(tr, slot, n_slots=int(round(periods * tr.duration_s / slot)))
    assert out.sum() * slot == pytest.approx(periods * volume, rel=1e-7, abs=1e-7)
    out = resample(tr, slot_s, n_slots=40)
    assert np.all(out >= mbps.min() - 1e-9 * (1 + mbps.max()))
    assert np.all(out <= mbps.max() * (1 + 1e-9) + 1e-9)


# ------------------------------------------------------------------------------------------
# mahimahi


def test_mahimahi_hand_worked(tmp_path):
    # period 250 ms, 100 ms bins, right-closed: (0,100] (100,200] (200,250]
    # packets: bin0 = 2 (ms 5, 5), bin1 = 2 (ms 150, 200), bin2 = 2 (ms 250, and ms 0, which
    # is the same instant as 250 of the previous loop)
    p = _write(tmp_path, "mm.trace", "0\n5\n5\n150\n200\n250\n")
    tr = load_mahimahi(p, bin_ms=100)
    np.testing.assert_allclose(tr.time_s, [0.0, 0.1, 0.2])
    # 1500 B * 8 = 12000 bit a packet; 2 pkts / 0.1 s = 0.24 Mbit/s; 2 pkts / 0.05 s = 0.48
    np.testing.assert_allclose(tr.mbps, [0.24, 0.24, 0.48])
    assert tr.duration_s == pytest.approx(0.25)
    # total volume is conserved: 6 packets * 12000 bit = 0.072 Mbit
    assert tr.mean_mbps() * tr.duration_s == pytest.approx(0.072)
    assert load_trace(p).mbps.shape == (3,)  # auto-detects mahimahi, default 100 ms bins


@settings(max_examples=40, deadline=None)
@given(
    stamps=st.lists(st.integers(0, 5000), min_size=1, max_size=200).filter(lambda x: max(x) > 0),
    bin_ms=st.sampled_from([1.0, 7.5, 100.0, 1000.0, 10_000.0]),
)
def test_mahimahi_conserves_bytes(tmp_path_factory, stamps, bin_ms):
    stamps = sorted(stamps)
    p = tmp_path_factory.mktemp("mm") / "trace"
    p.write_text("\n".join(map(str, stamps)) + "\n")
    tr = load_mahimahi(p, bin_ms=bin_ms)
    assert tr.duration_s == pytest.approx(stamps[-1] / 1e3)
    # Mbit delivered = packets * 1500 B * 8 bit
    assert tr.mean_mbps() * tr.duration_s == pytest.approx(len(stamps) * 0.012, rel=1e-9)


def test_mahimahi_constant_rate(tmp_path):
    # one packet every ms for 1 s = 12 Mbit/s
    p = _write(tmp_path, "12mbps", "".join(f"{i}\n" for i in range(1, 1001)))
    tr = load_trace(p, fmt="mahimahi", bin_ms=250)
    np.testing.assert_allclose(tr.mbps, 12.0)
    np.testing.assert_allclose(resample(tr, 0.1, n_slots=25), 12.0)


# ------------------------------------------------------------------------------------------
# CSV


def test_csv_fivegophers_style(tmp_path):
    p = _write(
        tmp_path,
        "g.csv",
        "protocol,carrier,run_num,seq_num,throughput_mbps\n"
        "TCP,VERIZON,1,0,400.0\n"
        "TCP,SPRINT,1,0,80.0\n"
        "TCP,VERIZON,1,1,500.0\n",
    )
    tr = load_trace(p)  # auto: .csv, known column throughput_mbps in Mbit/s
    np.testing.assert_array_equal(tr.mbps, [400.0, 80.0, 500.0])
    np.testing.assert_array_equal(tr.time_s, [0.0, 1.0, 2.0])
    assert tr.duration_s == 3.0
    tr = load_csv(p, "throughput_mbps", filters={"carrier": "VERIZON"}, time_column="seq_num")
    np.testing.assert_array_equal(tr.mbps, [400.0, 500.0])
    np.testing.assert_array_equal(tr.time_s, [0.0, 1.0])


def test_csv_gnettrack_style(tmp_path):
    p = _write(
        tmp_path,
        "drive.txt",
        "Timestamp,Longitude,DL_bitrate,UL_bitrate\n"
        "t0,10.7,2000,500\n"
        "t1,10.7,3500,250\n",
    )
    tr = load_trace(p, fmt="csv")  # known column DL_bitrate in kbit/s
    np.testing.assert_allclose(tr.mbps, [2.0, 3.5])
    tr = load_trace(p, fmt="csv", column="UL_bitrate", unit="kbps", sample_period_s=0.5)
    np.testing.assert_allclose(tr.mbps, [0.5, 0.25])
    np.testing.assert_allclose(tr.time_s, [0.0, 0.5])
    tr = load_csv(p, "UL_bitrate", unit="bps")
    np.testing.assert_allclose(tr.mbps, [5e-4, 2.5e-4])


def test_shared_fivegophers_file_if_present():
    path = Path(__file__).resolve().parents[3] / (
        "shared/data/traces/fivegophers_5g_us/All-Carriers_01-Throughput_data.csv"
    )
    if not path.is_file():
        pytest.skip("shared/ traces not present")
    tr = load_trace(path, filters={"carrier": "VERIZON"})
    assert tr.mbps.size > 100 and np.all(tr.mbps >= 0)


# ------------------------------------------------------------------------------------------
# Malformed files: TraceFormatError with file, line and reason


@pytest.mark.parametrize(
    "fmt, text, line, reason",
    [
        ("pensieve", "", 0, "empty"),
        ("pensieve", "\n\n", 0, "empty"),
        ("pensieve", "0 1\n1 abc\n", 2, "not a number"),
        ("pensieve", "0 1\n1 nan\n", 2, "not finite"),
        ("pensieve", "0 1\n1 2\n2 -0.5\n", 3, "negative"),
        ("pensieve", "0 1\n2 1\n1 1\n", 3, "non-monotone"),
        ("pensieve", "0 1\n1 1\n1 1\n", 3, "non-monotone"),
        ("pensieve", "0 1\n1 2 3\n", 2, "2 columns"),
        ("mahimahi", "", 0, "empty"),
        ("mahimahi", "1\n2\nx\n", 3, "integer"),
        ("mahimahi", "1\n2.5\n", 2, "integer"),
        ("mahimahi", "-1\n", 1, "negative"),
        ("mahimahi", "5\n7\n6\n", 3, "non-monotone"),
        ("mahimahi", "0\n0\n", 2, "period"),
        ("csv", "", 0, "empty"),
        ("csv", "a,b\n1,2\n", 1, "no column 'throughput_mbps'"),
        ("csv", "throughput_mbps\n1\nfast\n", 3, "not a number"),
        ("csv", "throughput_mbps\n1\nNaN\n", 3, "not finite"),
        ("csv", "throughput_mbps\n1\n-2\n", 3, "negative"),
        ("csv", "throughput_mbps\n", 0, "empty trace"),
        ("csv", "throughput_mbps,b\n1,2\n3\n", 3, "expected 2 fields"),
    ],
)
def test_malformed_trace_raises_with_line(tmp_path, fmt, text, line, reason):
    p = _write(tmp_path, "bad", text)
    kw = {"column": "throughput_mbps"} if fmt == "csv" else {}
    with pytest.raises(TraceFormatError, match=reason) as exc:
        load_trace(p, fmt=fmt, **kw)
    assert exc.value.line == line
    assert exc.value.path == str(p)
    assert str(exc.value).startswith(f"{p}:{line}: ")


def test_csv_time_column_errors(tmp_path):
    p = _write(tmp_path, "t.csv", "time,throughput_mbps\n0,1\n1,2\n1,3\n")
    with pytest.raises(TraceFormatError, match="non-monotone") as exc:
        load_csv(p, "throughput_mbps", time_column="time")
    assert exc.value.line == 4
    with pytest.raises(TraceFormatError, match="no column 'clock'") as exc:
        load_csv(p, "throughput_mbps", time_column="clock")
    assert exc.value.line == 1
    with pytest.raises(TraceFormatError, match="no column 'mbps'"):
        load_trace(p, column="mbps")
    with pytest.raises(TraceFormatError, match="no data rows matching"):
        load_csv(p, "throughput_mbps", filters={"time": "9"})
    p2 = _write(tmp_path, "u.csv", "a,b\n1,2\n")
    with pytest.raises(TraceFormatError, match="no known throughput column") as exc:
        load_trace(p2)
    assert exc.value.line == 1


def test_undetectable_and_missing_files(tmp_path):
    with pytest.raises(TraceFormatError, match="cannot detect") as exc:
        load_trace(_write(tmp_path, "three", "\n1 2 3\n"))
    assert exc.value.line == 2
    with pytest.raises(TraceFormatError, match="cannot open"):
        load_trace(tmp_path / "missing", fmt="pensieve")
    bad = tmp_path / "binary"
    bad.write_bytes(b"0 1\n\xff\xfe 2\n")
    with pytest.raises(TraceFormatError, match="UTF-8") as exc:
        load_trace(bad, fmt="pensieve")
    assert exc.value.line == 2
    with pytest.raises(ValueError, match="fmt"):
        load_trace(tmp_path / "x", fmt="json")
    with pytest.raises(ValueError, match="unit"):
        load_csv(tmp_path / "x", "c", unit="MBps")
    with pytest.raises(ValueError, match="unknown shipped trace"):
        load_shipped("norway_tram_1")


def test_trace_constructor_validates():
    with pytest.raises(ValueError, match="strictly increasing"):
        Trace("x", np.array([0.0, 0.0]), np.array([1.0, 1.0]), "t")
    with pytest.raises(ValueError, match=">= 0"):
        Trace("x", np.array([0.0]), np.array([-1.0]), "t")
    with pytest.raises(ValueError, match="duration_s"):
        Trace("x", np.array([0.0, 2.0]), np.array([1.0, 1.0]), "t", duration_s=1.0)
    tr = Trace("x", [0.0], [1.0], "t")
    with pytest.raises(ValueError):
        tr.mbps[0] = 2.0  # read-only arrays: a Trace is immutable
