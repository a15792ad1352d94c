"""Exponential backoff with full jitter and a retry budget. Design: ``docs/design.md §5``.

The ``n``-th consecutive retry (``n = 0, 1, ...``) sleeps a delay drawn uniformly from
``[0, min(cap_s, base_s * factor**n)]`` ("full jitter", M. Brooker, "Exponential Backoff And
Jitter", AWS Architecture Blog, 2015); ``jitter="none"`` sleeps the ceiling itself. After
``max_retries`` consecutive failed attempts the budget is spent and ``next_delay`` returns
None: the caller gives up (the edge then finishes the request locally or fails it). A success
(``reset``) starts the exponent and the budget again.

Delays come from a ``random.Random`` that the caller seeds, so a run's schedule is
reproducible: ``expected_schedule(cfg, seed, attempts)`` replays the draws of a fresh
``Backoff`` on the same seed, and tests compare it with the delays a run observed.
"""

from __future__ import annotations

import dataclasses
import math
import random

from costmodel.retry import RetryConfig

_RETRY = RetryConfig()  # the runtime's defaults, one source for the runtime and the slot model


class BackoffConfigError(ValueError):
    """An invalid backoff configuration; the message names the field."""


@dataclasses.dataclass(frozen=True)
class BackoffConfig:
    """Retry policy of the edge client; the defaults are ``costmodel.retry.RetryConfig``'s
    (the slot model prices a request caught by an outage with the same schedule).

    base_s: ceiling of the first retry's delay, seconds (> 0).
    factor: growth of the ceiling per consecutive retry (>= 1).
    cap_s: largest ceiling, seconds (>= base_s).
    max_retries: retry budget: consecutive failed attempts before giving up (>= 0).
    jitter: "full" (uniform in [0, ceiling]) or "none" (the ceiling).
    """

    base_s: float = _RETRY.base_s
    factor: float = _RETRY.factor
    cap_s: float = _RETRY.cap_s
    max_retries: int = _RETRY.max_retries
    jitter: str = _RETRY.jitter

    @classmethod
    def from_retry(cls, retry: RetryConfig) -> BackoffConfig:
        """The schedule of a ``costmodel.retry.RetryConfig``."""
        return cls(retry.base_s, retry.factor, retry.cap_s, retry.max_retries, retry.jitter)

    def __post_init__(self):
        def number(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise BackoffConfigError(f"BackoffConfig.{name} must be a finite number, "
                                         f"got {v!r}")
            return float(v)

        if not number("base_s") > 0:
            raise BackoffConfigError(f"BackoffConfig.base_s must be > 0, got {self.base_s}")
        if not number("factor") >= 1:
            raise BackoffConfigError(f"BackoffConfig.factor must be >= 1, got {self.factor}")
        if not number("cap_s") >= self.base_s:
            raise BackoffConfigError(f"BackoffConfig.cap_s must be >= base_s ({self.base_s}), "
                                     f"got {self.cap_s}")
        m = self.max_retries
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise BackoffConfigError(f"BackoffConfig.max_retries must be an integer >= 0, "
                                     f"got {m!r}")
        if self.jitter not in ("full", "none"):
            raise BackoffConfigError(f"BackoffConfig.jitter must be 'full' or 'none', "
                                     f"got {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """``min(cap_s, base_s * factor**attempt)`` for the 0-based retry ``attempt``."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # factor**attempt overflows for huge attempts; the cap wins long before that.
        exp = math.log(self.cap_s / self.base_s) / math.log(self.factor) if self.factor > 1 \
            else math.inf
        return self.cap_s if attempt > exp else min(self.cap_s, self.base_s * self.factor**attempt)


@dataclasses.dataclass(frozen=True)
class Retry:
    """One retry the caller slept before: its 0-based attempt, ceiling and drawn delay."""

    attempt: int
    ceiling_s: float
    delay_s: float


class Backoff:
    """Stateful retry schedule over a shared, seeded ``random.Random``.

    ``next_delay()`` returns the next delay (and records it in ``history``) or None once
    ``max_retries`` consecutive retries have been handed out; ``reset()`` after a success.
    """

    def __init__(self, config: BackoffConfig, rng: random.Random):
        self.config = config
        self.rng = rng
        self.attempt = 0
        self.history: list[Retry] = []

    def next_delay(self) -> float | None:
        if self.attempt >= self.config.max_retries:
            return None
        ceil = self.config.ceiling(self.attempt)
        delay = self.rng.uniform(0.0, ceil) if self.config.jitter == "full" else ceil
        self.history.append(Retry(self.attempt, ceil, delay))
        self.attempt += 1
        return delay

    @property
    def exhausted(self) -> bool:
        return self.attempt >= self.config.max_retries

    def reset(self) -> None:
        self.attempt = 0


def expected_schedule(config: BackoffConfig, seed: int, attempts: list[int]) -> list[Retry]:
    """The retries a run would draw from ``random.Random(seed)`` for the given sequence of
    0-based attempt indices (all draws of a run share one generator, in order)."""
    rng = random.Random(seed)
    out = []
    for a in attempts:
        ceil = config.ceiling(a)
        out.append(Retry(a, ceil, rng.uniform(0.0, ceil) if config.jitter == "full" else ceil))
    return out
