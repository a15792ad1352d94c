"""The edge's retry schedule (docs/design.md §2.7 and §5): the runtime's timeout and backoff
defaults, shared by the runtime (``bridge.backoff``) and the slot model's outage pricing
(``costmodel.outage``, which re-exports it). Plain Python (no JAX), so that an edge that runs
an exported policy imports no JAX.
"""

from __future__ import annotations

import dataclasses
import math


class RetryError(ValueError):
    """A bad retry setting; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """The edge's timeout and backoff schedule (the runtime's defaults; validated).

    The defaults outlast a cloud restart: the ceilings 1, 2, 4, 8, 16, 30, 30, 30, 30 s sum
    to 151 s, so with full jitter the sleeps before the edge gives up average 75.5 s and fall
    below 30 s (a SmolLM2 ``serve-cloud`` restart measured on a loaded 2-core machine: 27-30
    s; the toy model: 6 s) with probability about 0.4%.

    timeout_s: wait for an answer before an attempt counts as failed, s (> 0).
    base_s: ceiling of the first retry's delay, s (> 0).
    factor: growth of the ceiling per consecutive retry (>= 1).
    cap_s: largest ceiling, s (>= base_s).
    max_retries: retries after the first attempt before falling back to the edge (>= 0).
    jitter: "full" (delay uniform below the ceiling) or "none" (the ceiling).
    """

    timeout_s: float = 5.0
    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    max_retries: int = 9
    jitter: str = "full"

    def __post_init__(self):
        for name, lo, open_ in (("timeout_s", 0.0, True), ("base_s", 0.0, True),
                                ("factor", 1.0, False), ("cap_s", self.base_s, False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or (v <= lo if open_ else v < lo):
                raise RetryError(f"RetryConfig.{name} must be a finite number "
                                 f"{'>' if open_ else '>='} {lo}, got {v!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise RetryError(f"RetryConfig.max_retries must be an integer >= 0, "
                             f"got {self.max_retries!r}")
        if self.jitter not in ("full", "none"):
            raise RetryError(f"RetryConfig.jitter must be 'full' or 'none', got {self.jitter!r}")

    def attempt_starts(self) -> list[float]:
        """Mean start time of each attempt (the first send and every retry), s from the
        first send."""
        mean = 0.5 if self.jitter == "full" else 1.0
        out, t = [0.0], 0.0
        for c in self.ceilings():
            t += self.timeout_s + mean * c
            out.append(t)
        return out

    def recovery(self, outage_s: float) -> tuple[float, bool]:
        """(wait, resumes) of a request whose first send meets an outage that lasts
        ``outage_s`` more seconds: the start of the first attempt at or after the link is back
        (the request then resumes), or the whole budget ``expected_wait_s()`` (it falls back)."""
        if not (isinstance(outage_s, int | float) and math.isfinite(outage_s) and outage_s >= 0):
            raise RetryError(f"outage_s must be a finite number >= 0, got {outage_s!r}")
        for start in self.attempt_starts():
            if start >= outage_s:
                return start, True
        return self.expected_wait_s(), False

    def ceilings(self) -> list[float]:
        """The delay ceiling before each retry, s."""
        return [min(self.cap_s, self.base_s * self.factor ** n) for n in range(self.max_retries)]

    def expected_wait_s(self) -> float:
        """Mean time from the first send to giving up: every attempt's timeout plus the mean
        backoff delays, s."""
        mean = 0.5 if self.jitter == "full" else 1.0
        return (self.max_retries + 1) * self.timeout_s + mean * sum(self.ceilings())
