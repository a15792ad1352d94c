"""Backoff: hand-worked ceilings, full-jitter bounds and mean, budget, seeded replay."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.backoff import Backoff, BackoffConfig, BackoffConfigError, expected_schedule


def test_ceilings_hand_worked():
    cfg = BackoffConfig(base_s=0.1, factor=3.0, cap_s=2.0, max_retries=6)
    # 0.1, 0.3, 0.9, 2.7 -> capped at 2.0, then 2.0 ...
    assert [cfg.ceiling(n) for n in range(5)] == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0])
    assert cfg.ceiling(10_000) == 2.0  # no overflow
    flat = BackoffConfig(base_s=0.5, factor=1.0, cap_s=0.5)
    assert flat.ceiling(100) == 0.5


def test_no_jitter_is_the_ceiling_and_budget_ends():
    cfg = BackoffConfig(base_s=0.1, factor=2.0, cap_s=0.3, max_retries=3, jitter="none")
    b = Backoff(cfg, random.Random(0))
    assert [b.next_delay() for _ in range(4)] == pytest.approx([0.1, 0.2, 0.3, None])
    assert b.exhausted
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-3, 1.0), st.floats(1.0, 4.0), st.floats(1.0, 10.0), st.integers(0, 12),
       st.integers(0, 2**32 - 1))
def test_full_jitter_within_ceiling_and_replayable(base, factor, cap_mult, retries, seed):
    cfg = BackoffConfig(base_s=base, factor=factor, cap_s=base * cap_mult, max_retries=retries)
    b = Backoff(cfg, random.Random(seed))
    delays = []
    while (d := b.next_delay()) is not None:
        delays.append(d)
    assert len(delays) == retries
    for n, (d, r) in enumerate(zip(delays, b.history, strict=True)):
        assert 0.0 <= d <= r.ceiling_s == pytest.approx(min(cfg.cap_s, base * factor**n))
    assert b.history == expected_schedule(cfg, seed, [r.attempt for r in b.history])


def test_full_jitter_is_uniform():
    # Uniform on [0, c]: mean c / 2, variance c^2 / 12; 20000 draws -> standard error of the
    # mean c / sqrt(12 * 20000) ~ 0.002 c.
    cfg = BackoffConfig(base_s=1.0, factor=2.0, cap_s=4.0, max_retries=1)
    rng = random.Random(1)
    draws = []
    for _ in range(20000):
        b = Backoff(cfg, rng)
        draws.append(b.next_delay())
    mean = sum(draws) / len(draws)
    assert mean == pytest.approx(0.5, abs=0.01)
    assert min(draws) >= 0 and max(draws) <= 1.0


@pytest.mark.parametrize("kw, field", [
    ({"base_s": 0.0}, "base_s"), ({"factor": 0.5}, "factor"), ({"cap_s": 0.01}, "cap_s"),
    ({"max_retries": -1}, "max_retries"), ({"max_retries": 1.5}, "max_retries"),
    ({"jitter": "equal"}, "jitter"), ({"base_s": float("nan")}, "base_s"),
])
def test_config_validation_names_field(kw, field):
    with pytest.raises(BackoffConfigError, match=field):
        BackoffConfig(**kw)


def test_config_is_frozen():
    cfg = BackoffConfig()
    with pytest.raises(AttributeError):
        cfg.base_s = 1.0
