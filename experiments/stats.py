"""Statistics of the figures and the claims: means with 95% t-intervals over seeds."""

from __future__ import annotations

import math

import numpy as np


def mean_ci(x, axis=None):
    """(mean, half-width of the 95% t-interval) of samples (NaN-free); the half-width is NaN
    with fewer than two samples."""
    from scipy import stats

    x = np.asarray(x, float)
    n = x.size if axis is None else x.shape[axis]
    m = np.mean(x, axis=axis)
    if n < 2:
        return m, np.zeros_like(m) * np.nan
    half = stats.t.ppf(0.975, n - 1) * np.std(x, axis=axis, ddof=1) / np.sqrt(n)
    return m, half


def finite_mean_ci(values) -> tuple[float, float, int]:
    """(mean, 95% half-width, n) over the finite entries of `values` (None and NaN dropped);
    (nan, nan, 0) when none is left."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if x.size == 0:
        return math.nan, math.nan, 0
    m, h = mean_ci(x)
    return float(m), float(h), int(x.size)
