"""Random processes: stationary moments against theory, ranges, jit/vmap, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lyapunov import processes as P
from lyapunov.traces import Trace, TraceFormatError, load_shipped, resample, shipped_trace_path

# One jitted function per entry point, called with few distinct shapes, keeps compiles down.
sample_path = jax.jit(P.sample_path, static_argnums=2)
sample_link_path = jax.jit(P.sample_link_path, static_argnums=2)
batched_path = jax.jit(jax.vmap(P.sample_path, in_axes=(0, None, None)), static_argnums=2)
batched_link_path = jax.jit(jax.vmap(P.sample_link_path, in_axes=(0, None, None)),
                            static_argnums=2)

KEY = jax.random.key(20260101)
N_KEYS, N_SLOTS = 16, 20_000  # 320k slots per statistical check
N_LINK = 256  # slots of every link path in this file


def _paths(params, n_keys=N_KEYS, n_slots=N_SLOTS, key=KEY):
    """[n_keys, n_slots] float64 paths, one per key."""
    keys = jax.random.split(key, n_keys)
    return np.asarray(batched_path(keys, params, n_slots), dtype=np.float64)


def _lag1(x):
    """Lag-1 autocorrelation pooled over rows of x [B, T]."""
    x = x - x.mean()
    return float((x[:, 1:] * x[:, :-1]).mean() / (x * x).mean())


def _run_lengths(mask):
    """Lengths of the runs of True in each row of a bool [B, T] (runs cut at row ends)."""
    lengths = []
    for row in mask:
        padded = np.concatenate([[False], row, [False]]).astype(np.int8)
        d = np.diff(padded)
        lengths.extend(np.flatnonzero(d == -1) - np.flatnonzero(d == 1))
    return np.asarray(lengths)


MARKOV_P = [[0.90, 0.10, 0.00], [0.05, 0.90, 0.05], [0.00, 0.10, 0.90]]


def _all_process_params():
    return {
        "poisson": P.make_poisson(3.0),
        "mmpp": P.make_mmpp(0.5, 5.0, 0.05, 0.2),
        "ar1_log_bw": P.make_ar1_bandwidth(10.0, 5.0, 0.9),
        "ar1_lin_bw": P.make_ar1_bandwidth(10.0, 8.0, 0.8, log_domain=False),
        "markov_bw": P.make_markov_bandwidth([1.0, 5.0, 20.0], MARKOV_P),
        "replay_bw": P.make_replay_bandwidth([1.0, 2.0, 3.0, 4.0, 5.0]),
        "ar1_share": P.make_ar1_share(0.3, 2.0, 0.9),
        "markov_share": P.make_markov_share([1.0, 0.5, 0.1], MARKOV_P),
        "replay_share": P.make_replay_share([0.0, 0.5, 0.99], min_share=0.05),
        "rtt": P.make_rtt(40.0, 5.0),
        "outage": P.make_outage(0.1, 5.0),
    }


# ------------------------------------------------------------------------------------------
# Stationary moments against theory


def test_poisson_mean_and_variance():
    x = _paths(P.make_poisson(3.0))
    se = math.sqrt(3.0 / x.size)
    assert abs(x.mean() - 3.0) < 5 * se
    assert x.var() == pytest.approx(3.0, rel=0.02)
    assert np.all(x == np.round(x)) and x.min() >= 0


def test_mmpp_stationary_mean_and_burstiness():
    params = P.make_mmpp(0.5, 5.0, 0.05, 0.2)
    # pi_hi = 0.05 / (0.05 + 0.2) = 0.2 -> mean = 0.8 * 0.5 + 0.2 * 5 = 1.4
    assert float(P.arrival_mean_rate(params)) == pytest.approx(1.4)
    assert float(P.arrival_mean_rate(P.make_poisson(2.5))) == pytest.approx(2.5)
    x = _paths(params, n_keys=8)
    assert x.mean() == pytest.approx(1.4, rel=0.04)
    # Markov modulation makes counts over-dispersed (variance > mean) and correlated in time
    assert x.var() > 1.5 * x.mean()
    assert _lag1(x) > 0.2


def test_ar1_log_bandwidth_moments():
    params = P.make_ar1_bandwidth(10.0, 5.0, 0.9)
    # log-normal moment match: s^2 = log(1 + 0.25), m = log(10) - s^2 / 2
    s2 = math.log(1.25)
    assert float(params.mean) == pytest.approx(math.log(10.0) - s2 / 2, rel=1e-6)
    assert float(params.std) == pytest.approx(math.sqrt(s2), rel=1e-6)
    bw = _paths(params)
    assert np.all(bw > 0)
    x = np.log(bw)
    # effective sample size of an AR(1) mean: n (1 - rho) / (1 + rho)
    se = float(params.std) * math.sqrt((1 + 0.9) / (1 - 0.9) / x.size)
    assert abs(x.mean() - float(params.mean)) < 5 * se
    assert x.std() == pytest.approx(float(params.std), rel=0.03)
    assert _lag1(x) == pytest.approx(0.9, abs=0.01)
    assert bw.mean() == pytest.approx(10.0, rel=0.03)
    assert bw.std() == pytest.approx(5.0, rel=0.06)


def test_ar1_linear_bandwidth_clipped_at_zero():
    params = P.make_ar1_bandwidth(10.0, 2.0, 0.7, log_domain=False)
    bw = _paths(params)
    assert bw.mean() == pytest.approx(10.0, rel=0.01)
    assert bw.std() == pytest.approx(2.0, rel=0.03)
    assert _lag1(bw) == pytest.approx(0.7, abs=0.01)
    clipped = _paths(P.make_ar1_bandwidth(1.0, 3.0, 0.5, log_domain=False), n_keys=2)
    assert clipped.min() == 0.0 and np.mean(clipped == 0.0) > 0.2


@pytest.mark.parametrize(
    "transition",
    [
        MARKOV_P,
        [[0.5, 0.5], [0.1, 0.9]],
        [[0.0, 1.0, 0.0, 0.0], [0.3, 0.0, 0.7, 0.0], [0.0, 0.2, 0.6, 0.2], [0.5, 0.0, 0.0, 0.5]],
    ],
)
def test_markov_occupancy_matches_stationary_law(transition):
    k = len(transition)
    params = P.make_markov_bandwidth(np.arange(k, dtype=float), transition)
    pi = P.markov_stationary(transition)
    np.testing.assert_allclose(pi @ np.asarray(transition), pi, atol=1e-12)
    states = _paths(params).astype(int)
    occupancy = np.bincount(states.ravel(), minlength=k) / states.size
    np.testing.assert_allclose(occupancy, pi, atol=0.01)
    # empirical transition frequencies match the matrix
    counts = np.zeros((k, k))
    np.add.at(counts, (states[:, :-1].ravel(), states[:, 1:].ravel()), 1)
    np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), transition, atol=0.01)


def test_markov_stationary_hand_worked():
    # detailed balance: pi0 * 0.1 = pi1 * 0.05, pi1 * 0.05 = pi2 * 0.1 -> pi = (1, 2, 1) / 4
    np.testing.assert_allclose(P.markov_stationary(MARKOV_P), [0.25, 0.5, 0.25], atol=1e-12)
    params = P.make_markov_bandwidth([1.0, 5.0, 20.0], MARKOV_P, init_state=2)
    np.testing.assert_array_equal(np.asarray(params.init_probs), [0.0, 0.0, 1.0])
    assert np.all(_paths(params, n_keys=3, n_slots=40)[:, 0] == 20.0)


def test_outage_fraction_and_mean_length():
    params = P.make_outage(0.1, 5.0)
    # p_recover = 1/5 = 0.2, p_fail = 0.2 * 0.1 / 0.9 = 0.0222...
    assert float(params.p_recover) == pytest.approx(0.2)
    assert float(params.p_fail) == pytest.approx(0.2 / 9, rel=1e-6)
    assert float(P.outage_fraction(params)) == pytest.approx(0.1, rel=1e-6)
    down = _paths(params) == 0.0  # value is `up`
    assert down.mean() == pytest.approx(0.1, abs=0.01)
    assert _run_lengths(down).mean() == pytest.approx(5.0, rel=0.05)


def test_rtt_constant_plus_exponential_jitter():
    x = _paths(P.make_rtt(40.0, 5.0), n_keys=4)
    assert x.min() >= 40.0
    assert x.mean() == pytest.approx(45.0, rel=0.005)
    assert (x - 40.0).std() == pytest.approx(5.0, rel=0.02)  # Exp: std = mean
    np.testing.assert_array_equal(_paths(P.make_rtt(25.0), n_keys=2, n_slots=100), 25.0)


def test_ar1_share_moments_and_range():
    params = P.make_ar1_share(0.3, 1.0, 0.8, min_share=1e-3)
    share = _paths(params)
    assert np.all((share > 0) & (share <= 1))
    logit = np.log(share / (1 - share))
    assert np.median(share) == pytest.approx(0.3, abs=0.01)
    assert logit.std() == pytest.approx(1.0, rel=0.03)
    assert _lag1(logit) == pytest.approx(0.8, abs=0.01)


def test_replay_fixed_and_random_offset():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    x = _paths(P.make_replay_bandwidth(values, offset=3), n_keys=2, n_slots=12)
    np.testing.assert_array_equal(x[0], values[(3 + np.arange(12)) % 5])  # wraps
    np.testing.assert_array_equal(x[0], x[1])  # a fixed offset ignores the key
    x = _paths(P.make_replay_bandwidth(values), n_keys=64, n_slots=5)
    starts = x[:, 0]
    for row in x:  # each path is a rotation of the series
        np.testing.assert_array_equal(row, values[(int(row[0]) - 1 + np.arange(5)) % 5])
    assert len(set(starts)) == 5  # 64 keys reach all 5 start offsets


def test_replay_pads_to_a_bucket_and_replays_the_same_path():
    """Series of different lengths share one padded shape (one compiled program); the path is
    that of the unpadded series (wrapping at N, never reading the padding)."""
    a, b = P.make_replay_bandwidth(np.arange(1.0, 6.0)), P.make_replay_bandwidth(np.ones(700))
    assert a.values.shape == b.values.shape == (P.REPLAY_MIN_BUCKET,)
    assert P.make_replay_bandwidth(np.ones(1025)).values.shape == (2048,)
    assert (int(a.length), int(b.length)) == (5, 700)
    unpadded = P.ReplayParams(jnp.asarray(np.arange(1.0, 6.0), jnp.float32), a.offset)
    np.testing.assert_array_equal(_paths(a, n_keys=16, n_slots=23),
                                  _paths(unpadded, n_keys=16, n_slots=23))


def test_replay_of_a_trace_and_of_utilization():
    tr = Trace("t", np.array([0.0, 1.0]), np.array([2.0, 6.0]), "test", duration_s=2.0)
    params = P.make_replay_bandwidth(tr, slot_s=0.5, offset=0)
    np.testing.assert_array_equal(params.series(), [2.0, 2.0, 6.0, 6.0])
    params = P.make_replay_share([0.0, 0.25, 1.0], min_share=0.1, offset=0)
    np.testing.assert_allclose(_paths(params, n_keys=1, n_slots=3)[0], [1.0, 0.75, 0.1])


# ------------------------------------------------------------------------------------------
# Ranges under random parameters


@settings(max_examples=25, deadline=None)
@given(
    median=st.floats(1e-4, 1 - 1e-4),
    logit_std=st.floats(0.0, 20.0),
    rho=st.floats(-0.99, 1.0),
    floor_frac=st.floats(1e-6, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_ar1_share_always_in_unit_interval(median, logit_std, rho, floor_frac, seed):
    min_share = floor_frac * median  # a floor above the median is rejected (named field)
    params = P.make_ar1_share(median, logit_std, rho, min_share)
    x = np.asarray(sample_path(jax.random.key(seed), params, 256))
    assert np.all(x > 0) and np.all(x <= 1) and np.all(x >= np.float32(min_share))


@settings(max_examples=25, deadline=None)
@given(
    mean=st.floats(1e-3, 1e4),
    cv=st.floats(0.0, 10.0),
    rho=st.floats(-0.99, 1.0),
    log_domain=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_ar1_bandwidth_never_negative(mean, cv, rho, log_domain, seed):
    params = P.make_ar1_bandwidth(mean, cv * mean, rho, log_domain=log_domain)
    x = np.asarray(sample_path(jax.random.key(seed), params, 256))
    assert np.all(np.isfinite(x)) and np.all(x >= 0)


def test_outage_probability_bound_is_reachable():
    """``q = L / (L + 1)`` (outages as long as the gaps between them) is the largest reachable
    outage probability: it gives p_fail = 1 (its float64 image was a few ulps above 1 for L =
    2.5, which hypothesis found), and anything above it is refused, naming the field."""
    for length in (1.0, 2.5, 3.0, 7.3, 50.0):
        o = P.make_outage(length / (length + 1), length)
        assert float(o.p_fail) == 1.0 and float(o.p_recover) == np.float32(1.0 / length)
        with pytest.raises(P.ProcessConfigError, match="outage_prob"):
            P.make_outage(length / (length + 1) + 1e-6, length)


@settings(max_examples=25, deadline=None)
@given(
    outage_prob=st.floats(0.0, 0.8),
    length=st.floats(1.0, 50.0),
    up_ratio=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_link_bandwidth_exactly_zero_in_outage(outage_prob, length, up_ratio, seed):
    outage_prob = min(outage_prob, length / (length + 1))
    params = P.make_link_params(
        P.make_ar1_bandwidth(20.0, 10.0, 0.9),
        P.make_rtt(30.0, 2.0),
        P.make_ar1_share(0.5, 1.0, 0.9),
        P.make_outage(outage_prob, length),
        up_ratio=up_ratio,
    )
    s = sample_link_path(jax.random.key(seed), params, N_LINK)
    up = np.asarray(s.up)
    down_bw, up_bw = np.asarray(s.bw_down_mbps), np.asarray(s.bw_up_mbps)
    assert np.all(down_bw[~up] == 0.0) and np.all(up_bw[~up] == 0.0)
    assert np.all(down_bw[up] > 0.0)
    np.testing.assert_allclose(up_bw, down_bw * np.float32(up_ratio), rtol=1e-6)
    share = np.asarray(s.cloud_share)
    assert np.all((share > 0) & (share <= 1))
    assert np.all(np.asarray(s.rtt_ms) >= 30.0)


def test_link_outage_switch_keeps_common_random_numbers():
    """Switching outages on only zeroes slots: the bandwidth, RTT and share draws of a key do
    not change (each component has its own sub-key)."""
    base = P.make_link(P.LinkConfig(share=P.ShareConfig(kind="ar1"), rtt_jitter_ms=3.0))
    with_outage = base.replace(outage=P.make_outage(0.2, 4.0))
    a = sample_link_path(KEY, base, N_LINK)
    b = sample_link_path(KEY, with_outage, N_LINK)
    up = np.asarray(b.up)
    assert np.all(np.asarray(a.up)) and 0 < up.mean() < 1
    np.testing.assert_array_equal(np.asarray(b.bw_down_mbps)[up], np.asarray(a.bw_down_mbps)[up])
    np.testing.assert_array_equal(np.asarray(b.bw_down_mbps)[~up], 0.0)
    np.testing.assert_array_equal(np.asarray(b.rtt_ms), np.asarray(a.rtt_ms))
    np.testing.assert_array_equal(np.asarray(b.cloud_share), np.asarray(a.cloud_share))


def test_link_from_config_with_shipped_trace():
    cfg = P.LinkConfig(
        bandwidth=P.BandwidthConfig(
            kind="trace", trace_path=str(shipped_trace_path("norway_bus_1")), trace_offset=0
        ),
        up_ratio=0.5,
        rtt_ms=60.0,
        share=P.ShareConfig(kind="markov"),
    )
    params = P.make_link(cfg, slot_s=1.0)
    s = sample_link_path(KEY, params, N_LINK)
    # 155 whole 1-s slots in the trace, replayed from slot 0 and wrapping after slot 154
    per_slot = resample(load_shipped("norway_bus_1"), 1.0)
    assert per_slot.shape == (155,)
    expected = per_slot[np.arange(N_LINK) % 155]
    np.testing.assert_allclose(np.asarray(s.bw_down_mbps), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.bw_up_mbps), expected * 0.5, rtol=1e-6)
    assert set(np.unique(np.asarray(s.cloud_share))) <= {np.float32(v) for v in (1.0, 0.5, 0.1)}
    assert np.all(np.asarray(s.up)) and np.all(np.asarray(s.rtt_ms) == 60.0)


# ------------------------------------------------------------------------------------------
# jit, vmap, common random numbers, no recompilation


# one case per kernel (ar1_lin_bw, markov_share and replay_share share theirs with the bandwidth)
@pytest.mark.parametrize(
    "name", [n for n in _all_process_params() if n not in ("ar1_lin_bw", "markov_share",
                                                             "replay_share")]
)
def test_jit_equals_no_jit_and_same_key_same_path(name):
    params = _all_process_params()[name]
    keys = jnp.stack([KEY, KEY, jax.random.key(7)])
    batch = np.asarray(batched_path(keys, params, 40))  # jit of vmap
    with jax.disable_jit():
        eager = np.asarray(P.sample_path(KEY, params, 10))  # unbatched, op by op
    np.testing.assert_allclose(batch[0, :10], eager, rtol=1e-5)
    np.testing.assert_array_equal(batch[0], batch[1])  # common random numbers
    assert not np.array_equal(batch[0], batch[2]), "different keys gave the same path"


def test_link_jit_equals_no_jit_and_vmap_over_keys():
    params = P.make_link(
        P.LinkConfig(outage_prob=0.2, rtt_jitter_ms=4.0, share=P.ShareConfig(kind="ar1"))
    )
    jitted = sample_link_path(KEY, params, N_LINK)
    with jax.disable_jit():
        eager = P.sample_link_path(KEY, params, 10)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[:10], b, rtol=1e-5), jitted, eager)
    keys = jnp.stack([KEY, KEY, jax.random.key(3)])
    batch = batched_link_path(keys, params, N_LINK)
    assert batch.bw_down_mbps.shape == (3, N_LINK) and batch.up.dtype == jnp.bool_
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5), batch, jitted)
    np.testing.assert_array_equal(batch.bw_down_mbps[0], batch.bw_down_mbps[1])
    assert not np.array_equal(batch.bw_down_mbps[0], batch.bw_down_mbps[2])


def test_vmap_over_stacked_scenarios():
    """Parameters are data: stack two Poisson scenarios and vmap over them."""
    rates = jax.tree.map(lambda *a: jnp.stack(a), P.make_poisson(1.0), P.make_poisson(8.0))
    paths = jax.vmap(P.sample_path, in_axes=(None, 0, None))(KEY, rates, 5000)
    np.testing.assert_allclose(np.asarray(paths.mean(axis=1)), [1.0, 8.0], rtol=0.05)


def test_no_recompilation_for_new_parameter_values():
    traces = []

    @jax.jit
    def f(key, params):
        traces.append(1)
        return P.sample_path(key, params, 100)

    for mean, std, rho in [(5.0, 1.0, 0.5), (50.0, 30.0, 0.99), (0.1, 0.0, 0.0)]:
        f(KEY, P.make_ar1_bandwidth(mean, std, rho))
    for util in ([0.1, 0.2, 0.3], [0.9, 0.0, 1.0]):
        f(KEY, P.make_replay_share(util))
    assert len(traces) == 2  # one trace per process kind, none per value


# ------------------------------------------------------------------------------------------
# Validation: bad values raise ProcessConfigError naming the field

NAN = float("nan")


@pytest.mark.parametrize(
    "make, kwargs, field",
    [
        (P.make_poisson, {"rate": -1.0}, "rate"),
        (P.make_poisson, {"rate": NAN}, "rate"),
        (P.make_poisson, {"rate": "fast"}, "rate"),
        (P.make_mmpp, {"rate_lo": 1, "rate_hi": -2, "p_lo_to_hi": 0.1, "p_hi_to_lo": 0.1},
         "rate_hi"),
        (P.make_mmpp, {"rate_lo": 1, "rate_hi": 2, "p_lo_to_hi": 1.5, "p_hi_to_lo": 0.1},
         "p_lo_to_hi"),
        (P.make_mmpp, {"rate_lo": 1, "rate_hi": 2, "p_lo_to_hi": 0.1, "p_hi_to_lo": NAN},
         "p_hi_to_lo"),
        (P.make_mmpp, {"rate_lo": 1, "rate_hi": 2, "p_lo_to_hi": 0.0, "p_hi_to_lo": 0.0},
         "p_lo_to_hi"),
        (P.make_ar1_bandwidth, {"mean_mbps": 0.0, "std_mbps": 1.0, "rho": 0.5}, "mean_mbps"),
        (P.make_ar1_bandwidth, {"mean_mbps": 5.0, "std_mbps": -1.0, "rho": 0.5}, "std_mbps"),
        (P.make_ar1_bandwidth, {"mean_mbps": 5.0, "std_mbps": 1.0, "rho": 1.5}, "rho"),
        (P.make_ar1_bandwidth, {"mean_mbps": 5.0, "std_mbps": 1.0, "rho": -1.0}, "rho"),
        (P.make_ar1_bandwidth, {"mean_mbps": 5.0, "std_mbps": math.inf, "rho": 0.5}, "std_mbps"),
        (P.make_ar1_share, {"median_share": 1.0, "logit_std": 1.0, "rho": 0.5}, "median_share"),
        (P.make_ar1_share, {"median_share": 0.5, "logit_std": 1.0, "rho": 0.5, "min_share": 0.0},
         "min_share"),
        (P.make_ar1_share, {"median_share": 0.5, "logit_std": NAN, "rho": 0.5}, "logit_std"),
        (P.make_ar1_share, {"median_share": 0.01, "logit_std": 1.0, "rho": 0.5,
                            "min_share": 0.05}, "min_share"),
        (P.make_markov_bandwidth, {"levels_mbps": [1.0, -2.0], "transition": [[1, 0], [0, 1]]},
         "levels_mbps"),
        (P.make_markov_bandwidth, {"levels_mbps": [1.0, NAN], "transition": [[1, 0], [0, 1]]},
         "levels_mbps"),
        (P.make_markov_bandwidth, {"levels_mbps": [], "transition": []}, "levels_mbps"),
        (P.make_markov_bandwidth,
         {"levels_mbps": [1.0, 2.0], "transition": [[0.5, 0.4], [0, 1]]}, "transition"),
        (P.make_markov_bandwidth,
         {"levels_mbps": [1.0, 2.0], "transition": [[1.5, -0.5], [0, 1]]}, "transition"),
        (P.make_markov_bandwidth,
         {"levels_mbps": [1.0, 2.0], "transition": [[NAN, 1], [0, 1]]}, "transition"),
        (P.make_markov_bandwidth, {"levels_mbps": [1.0, 2.0], "transition": [[1.0]]},
         "transition"),
        (P.make_markov_bandwidth,
         {"levels_mbps": [1.0, 2.0], "transition": [[1, 0], [0, 1]], "init_state": 2},
         "init_state"),
        (P.make_markov_share, {"levels": [1.0, 0.0], "transition": [[1, 0], [0, 1]]}, "levels"),
        (P.make_markov_share, {"levels": [1.2], "transition": [[1]]}, "levels"),
        (P.make_constant_share, {"share": 0.0}, "share"),
        (P.make_constant_bandwidth, {"mbps": -3.0}, "mbps"),
        (P.make_replay_bandwidth, {"values_mbps": [1.0, -1.0]}, "values_mbps"),
        (P.make_replay_bandwidth, {"values_mbps": [1.0, 2.0], "offset": 2}, "offset"),
        (P.make_replay_bandwidth, {"values_mbps": [[1.0, 2.0]]}, "values_mbps"),
        (P.make_replay_share, {"utilization": [0.5, 1.2]}, "utilization"),
        (P.make_replay_share, {"utilization": [0.5], "min_share": 2.0}, "min_share"),
        (P.make_rtt, {"base_ms": -1.0}, "base_ms"),
        (P.make_rtt, {"base_ms": 10.0, "jitter_ms": NAN}, "jitter_ms"),
        (P.make_outage, {"outage_prob": 1.0, "mean_outage_slots": 5}, "outage_prob"),
        (P.make_outage, {"outage_prob": 0.9, "mean_outage_slots": 2}, "outage_prob"),
        (P.make_outage, {"outage_prob": 0.1, "mean_outage_slots": 0.5}, "mean_outage_slots"),
    ],
)
def test_bad_parameters_name_the_field(make, kwargs, field):
    with pytest.raises(P.ProcessConfigError, match=field) as exc:
        make(**kwargs)
    assert exc.value.field == field


@settings(max_examples=50, deadline=None)
@given(p=st.one_of(st.floats(allow_nan=True).filter(lambda v: not 0 <= v <= 1), st.just(NAN)))
def test_probability_outside_unit_interval_rejected(p):
    for make, field in (
        (lambda: P.make_mmpp(1.0, 2.0, p, 0.1), "p_lo_to_hi"),
        (lambda: P.make_mmpp(1.0, 2.0, 0.1, p), "p_hi_to_lo"),
        (lambda: P.make_outage(p, 3.0), "outage_prob"),
    ):
        with pytest.raises(P.ProcessConfigError) as exc:
            make()
        assert exc.value.field == field


@settings(max_examples=50, deadline=None)
@given(rate=st.one_of(st.floats(max_value=-1e-300), st.just(NAN), st.just(math.inf)))
def test_bad_rate_rejected(rate):
    with pytest.raises(P.ProcessConfigError, match="rate"):
        P.make_poisson(rate)


@pytest.mark.parametrize(
    "cfg, field",
    [
        (P.LinkConfig(bandwidth=P.BandwidthConfig(rho=2.0)), "LinkConfig.bandwidth.rho"),
        (P.LinkConfig(bandwidth=P.BandwidthConfig(kind="markov", levels_mbps=(1.0, -1.0))),
         "LinkConfig.bandwidth.levels_mbps"),
        (P.LinkConfig(bandwidth=P.BandwidthConfig(kind="trace")),
         "LinkConfig.bandwidth.trace_path"),
        (P.LinkConfig(bandwidth=P.BandwidthConfig(kind="5g")), "LinkConfig.bandwidth.kind"),
        (P.LinkConfig(share=P.ShareConfig(share=1.5)), "LinkConfig.share.share"),
        (P.LinkConfig(share=P.ShareConfig(kind="ar1", min_share=0.0)),
         "LinkConfig.share.min_share"),
        (P.LinkConfig(share=P.ShareConfig(kind="replay")), "LinkConfig.share.utilization"),
        (P.LinkConfig(rtt_ms=NAN), "LinkConfig.rtt_ms"),
        (P.LinkConfig(rtt_jitter_ms=-1.0), "LinkConfig.rtt_jitter_ms"),
        (P.LinkConfig(up_ratio=0.0), "LinkConfig.up_ratio"),
        (P.LinkConfig(outage_prob=-0.1), "LinkConfig.outage_prob"),
        (P.LinkConfig(mean_outage_slots=0.0), "LinkConfig.mean_outage_slots"),
    ],
)
def test_link_config_errors_name_the_field(cfg, field):
    with pytest.raises(P.ProcessConfigError) as exc:
        P.make_link(cfg, slot_s=1.0)
    assert exc.value.field == field
    assert str(exc.value).startswith(field + ":")


def test_arrival_config():
    assert isinstance(P.make_arrivals(P.ArrivalConfig(rate=2.0)), P.PoissonParams)
    mmpp = P.make_arrivals(P.ArrivalConfig(kind="mmpp"))
    assert float(P.arrival_mean_rate(mmpp)) == pytest.approx((0.2 * 0.5 + 0.05 * 4.0) / 0.25)
    with pytest.raises(P.ProcessConfigError) as exc:
        P.make_arrivals(P.ArrivalConfig(rate=-1.0))
    assert exc.value.field == "ArrivalConfig.rate"
    with pytest.raises(P.ProcessConfigError) as exc:
        P.make_arrivals(P.ArrivalConfig(kind="mmpp", p_hi_to_lo=1.01))
    assert exc.value.field == "ArrivalConfig.p_hi_to_lo"


def test_trace_errors_pass_through_link_config(tmp_path):
    bad = tmp_path / "bad_trace"
    bad.write_text("0 1\n1 -3\n")
    cfg = P.LinkConfig(bandwidth=P.BandwidthConfig(kind="trace", trace_path=str(bad)))
    with pytest.raises(TraceFormatError) as exc:
        P.make_link(cfg, slot_s=1.0)
    assert exc.value.line == 2
    with pytest.raises(P.ProcessConfigError, match="slot_s"):
        P.make_link(P.LinkConfig(bandwidth=P.BandwidthConfig(
            kind="trace", trace_path=str(shipped_trace_path("norway_car_1")))))


def test_link_params_type_checks_and_dispatch():
    with pytest.raises(P.ProcessConfigError) as exc:
        P.make_link_params(P.make_poisson(1.0), P.make_rtt(10.0))
    assert exc.value.field == "bandwidth"
    with pytest.raises(TypeError, match="no random process"):
        P.sample_path(KEY, {"rate": 1.0}, 10)
    with pytest.raises(TypeError, match="not an arrival process"):
        P.arrival_mean_rate(P.make_rtt(10.0))
