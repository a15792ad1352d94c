"""Link and workload state: what the network and the request look like in one slot."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from flax import struct


class InputError(ValueError):
    """A bad link or workload value; the message names the field."""


@struct.dataclass
class LinkState:
    """One slot's link and cloud state (a JAX pytree; batch it by giving arrays).

    bw_up_mbps: edge -> cloud bandwidth, Mbit/s (0 = outage).
    bw_down_mbps: cloud -> edge bandwidth, Mbit/s (0 = outage).
    rtt_ms: round-trip time, ms.
    cloud_share: fraction of the cloud GPU this client gets, in (0, 1] (1 = idle cloud).
    """

    bw_up_mbps: jnp.ndarray
    bw_down_mbps: jnp.ndarray
    rtt_ms: jnp.ndarray
    cloud_share: jnp.ndarray


def _check_number(field: str, value, lo: float, lo_open: bool, hi: float | None = None):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{field} must be a number, got {value!r}") from None
    if math.isnan(v):
        raise InputError(f"{field} is NaN")
    if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi) or math.isinf(v):
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}"
        rng += "]" if hi is not None else ")"
        raise InputError(f"{field} must be in {rng}, got {v!r}")
    return v


def make_link(bw_up_mbps: float, rtt_ms: float, bw_down_mbps: float | None = None,
              cloud_share: float = 1.0) -> LinkState:
    """Validated LinkState from concrete numbers; downlink defaults to the uplink."""
    up = _check_number("bandwidth (bw_up_mbps)", bw_up_mbps, 0.0, False)
    down = up if bw_down_mbps is None else _check_number("bandwidth (bw_down_mbps)",
                                                         bw_down_mbps, 0.0, False)
    rtt = _check_number("rtt_ms", rtt_ms, 0.0, False)
    share = _check_number("cloud_share", cloud_share, 0.0, True, 1.0)
    f = jnp.float32
    return LinkState(f(up), f(down), f(rtt), f(share))


@dataclasses.dataclass(frozen=True)
class Workload:
    """One request: `prompt_tokens` prefilled, then `new_tokens` decode steps."""

    prompt_tokens: int = 128
    new_tokens: int = 32

    def __post_init__(self):
        for field in ("prompt_tokens", "new_tokens"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{field} must be a positive integer, got {v!r}")
