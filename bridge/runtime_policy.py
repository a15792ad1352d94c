"""Runtime policies of ``splitwise run-edge``: what a policy sees at the start of a slot
(``Observation``) and the function that maps it to a ``costmodel`` partition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Observation:
    """What a policy sees at the start of slot ``slot``.

    bw_mbps: mean bandwidth measured over the previous slot (the current one's for slot 0).
    bw_now_mbps: the slot's own mean bandwidth (only the clairvoyant oracle may use it).
    rtt_ms: the link's RTT. queue: requests waiting (the one about to start included).
    arrivals: requests that arrived during the previous slot.
    """

    slot: int
    bw_mbps: float
    bw_now_mbps: float
    rtt_ms: float
    queue: int
    arrivals: int


Policy = Callable[[Observation], object]
POLICIES = ("checkpoint:DIR", "oracle", "best-cut", "cloud-only", "edge-only")
UNLIMITED_MBPS = 1e6


class PolicyError(ValueError):
    """An unknown or unusable ``--policy``."""


def make_policy(name: str, spec) -> Policy:
    """A function ``Observation -> costmodel.partition.Partition`` for ``--policy``.

    edge-only / cloud-only: fixed. best-cut: the Neurosurgeon-style best single layer cut for
    the last measured bandwidth. oracle: the exact latency-optimal head/FFN partition for the
    slot's actual bandwidth (clairvoyant; with a latency penalty and mu = tau / latency, the
    drift-plus-penalty slot objective is increasing in latency, so the latency minimizer is
    the slot optimum). checkpoint:DIR: a trained policy from ``agents.checkpoint.load_policy``.
    """
    from costmodel import partition as P
    from costmodel.link import make_link
    from costmodel.strategies import strategy_partition

    n_l, n_h = spec.n_layers, spec.n_heads

    def link(mbps: float, rtt: float):
        return make_link(min(mbps, UNLIMITED_MBPS), rtt)

    def or_edge(p):
        return P.edge_only(n_l, n_h) if p is None else p

    if name == "edge-only":
        return lambda obs: P.edge_only(n_l, n_h)
    if name == "cloud-only":
        return lambda obs: P.cloud_only(n_l)
    if name == "best-cut":
        return lambda obs: or_edge(strategy_partition("best-layer-cut",
                                                      link(obs.bw_mbps, obs.rtt_ms), spec)[0])
    if name == "oracle":
        return lambda obs: or_edge(strategy_partition("best-headwise",
                                                      link(obs.bw_now_mbps, obs.rtt_ms),
                                                      spec)[0])
    if name.startswith("checkpoint:"):
        directory = name.split(":", 1)[1]
        try:
            from agents.checkpoint import load_policy
        except ImportError as err:
            raise PolicyError(f"--policy {name}: trained policies are loaded with "
                              f"agents.checkpoint.load_policy, not available here ({err})") \
                from None
        return load_policy(directory, spec)
    raise PolicyError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
