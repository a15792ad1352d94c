"""The three named cloud conditions every experiment uses (docs/design.md §2).

One set of numbers, for the request-level figures (1, 2, 6, 7, 8, 11: one static link at the
median share) and the slot-level ones (3, 4, 10 and the trained agents: the share follows an
AR(1) on its logit around that median):

    name           cloud        RTT (jitter)    cloud share: median, logit sd, AR(1) rho
    dc-idle        datacenter   40 ms (5 ms)    0.99, 0,   0.95   idle GPU: cloud-only wins
    dc-contended   datacenter   40 ms (5 ms)    0.02, 1.5, 0.95   a congested GPU
    mec-contended  mec           2 ms (0.5 ms)  0.1,  1.5, 0.95   a busy MEC server on a LAN

At the median share the contended conditions are where splitting can pay: a datacenter GPU at
2% of its throughput runs LLaMA-7B in about 15 s, slower than every edge device but the Pi 5,
and a MEC server at 10% in about 10 s; a logit sd of 1.5 moves the share over about a decade
either way, so that the best partition changes from slot to slot.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Condition:
    """A cloud and the link to it.

    name: key in file names, tables and configs. cloud: cloud profile ("datacenter", "mec").
    rtt_ms, rtt_jitter_ms: RTT base and mean jitter (ms; the request level uses the base).
    share_median: the client's fraction of the cloud GPU (the request level's static share).
    share_logit_std, share_rho: spread and autocorrelation of the slot level's AR(1) on the
      share's logit (0: constant at the median).
    label: legend text.
    """

    name: str
    cloud: str
    rtt_ms: float
    rtt_jitter_ms: float
    share_median: float
    share_logit_std: float
    share_rho: float = 0.95
    label: str = ""

    def describe(self, slot_level: bool = False) -> str:
        """The label with its numbers: the static share, or (slot_level) the share process."""
        share = (f"share median {self.share_median:g}, logit sd {self.share_logit_std:g}"
                 if slot_level and self.share_logit_std else f"share {self.share_median:g}")
        return f"{self.label} (RTT {self.rtt_ms:g} ms, {share})"


CONDITIONS = {c.name: c for c in (
    Condition("dc-idle", "datacenter", 40.0, 5.0, 0.99, 0.0, 0.95, "datacenter, idle GPU"),
    Condition("dc-contended", "datacenter", 40.0, 5.0, 0.02, 1.5, 0.95,
              "datacenter, contended GPU"),
    Condition("mec-contended", "mec", 2.0, 0.5, 0.1, 1.5, 0.95, "MEC server, contended"),
)}
NAMES = tuple(CONDITIONS)


def condition(name: str) -> Condition:
    """The condition of `name`; ValueError listing the valid names otherwise."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; valid: {', '.join(CONDITIONS)}")
    return CONDITIONS[name]
