"""The three named cloud conditions every experiment uses (docs/design.md §2), and the LAN ones.

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

Beside them, LAN conditions (`LAN_CONDITIONS`, docs/design.md §2.6, §2.8) for the trace-level
runs of the tensor-parallel space: the "cloud" is a second device on the user's own LAN and the
bandwidth is a process of the condition (no cellular trace):

    name        cloud      RTT (jitter)     bandwidth (log AR(1))       share        space
    lan-peer    orin-peer  0.5 ms (0.1 ms)  mean 400, sd 250 Mbit/s,    0.9, 1, 0.95  tp
                                            rho 0.9

A Wi-Fi 6 link between two Orin NX boards: the log-normal bandwidth has its 5-95% range at
about 130-870 Mbit/s (assumed: in-home Wi-Fi 6 throughput between two clients, below the
Gigabit Ethernet line rate of the peer profiles); the peer serves its own user too, so the
client gets a median 90% of it (logit sd 1: about 64-98%). There the two-device split
decides: above a couple of hundred Mbit/s a tensor-parallel partition beats both sides alone
(LLaMA-7B, 2.9 s against 3.65 s at 1 Gbit/s), below it the edge alone wins, so the oracle's
partition is interior (neither all-edge nor all-cloud) on most slots and changes with the link.
They stay out of `CONDITIONS`/`NAMES`, which the paper-space figures iterate.
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


@dataclasses.dataclass(frozen=True)
class LanCondition(Condition):
    """A LAN condition: a Condition whose bandwidth is its own log-domain AR(1) process.

    bw_mean_mbps, bw_std_mbps, bw_rho: stationary mean, sd (Mbit/s) and lag-1 correlation of
      the bandwidth. tp: the scenario's option space (`lyapunov.env.Scenario.tp`).
    precisions: the activation precisions of the exchanges (indices of
      `costmodel.partition.ACT_PRECISIONS`). fp16 and int8 only: a tensor-parallel layer
      exchanges twice, and the measured int4 crossing cost (+11 % perplexity per crossing
      group-wise, docs/design.md §2.5) makes an int4 tp partition of 32 layers unusable, which a
      latency-only penalty would not see.
    """

    bw_mean_mbps: float = 400.0
    bw_std_mbps: float = 250.0
    bw_rho: float = 0.9
    tp: bool = True
    precisions: tuple[int, ...] = (0, 1)

    def bandwidth(self):
        """The condition's `lyapunov.processes.BandwidthConfig`."""
        from lyapunov import processes as proc

        return proc.BandwidthConfig(kind="ar1", mean_mbps=self.bw_mean_mbps,
                                    std_mbps=self.bw_std_mbps, rho=self.bw_rho,
                                    log_domain=True)

    def describe(self, slot_level: bool = False) -> str:
        return (f"{super().describe(slot_level)[:-1]}, bandwidth {self.bw_mean_mbps:g} "
                f"+- {self.bw_std_mbps:g} Mbit/s{', tp' if self.tp else ''})")


CONDITIONS = {c.name: c for c in (
    Condition("dc-idle", "datacenter", 40.0, 5.0, 0.99, 0.0, 0.95, "datacenter, idle GPU"),
    Condition("dc-contended", "datacenter", 40.0, 5.0, 0.02, 1.5, 0.95,
              "datacenter, contended GPU"),
    Condition("mec-contended", "mec", 2.0, 0.5, 0.1, 1.5, 0.95, "MEC server, contended"),
)}
NAMES = tuple(CONDITIONS)
LAN_CONDITIONS = {c.name: c for c in (
    LanCondition("lan-peer", "orin-peer", 0.5, 0.1, 0.9, 1.0, 0.95,
                 "Orin NX peer on Wi-Fi 6", 400.0, 250.0, 0.9, True),
    # Wired Gigabit Ethernet between two boards: TCP goodput of 1000BASE-T at a 1500-byte MTU
    # is 941 Mbit/s (1460 payload bytes of 1538 on the wire); +-60 Mbit/s for cross traffic;
    # 0.2 ms RTT through one switch. With fp16/int8 exchanges the oracle's choice is tensor
    # parallel on every slot here, and on ~4% of Wi-Fi 6's slots (tests/experiments/
    # test_lan_condition.py).
    LanCondition("lan-peer-gbe", "orin-peer", 0.2, 0.05, 0.9, 1.0, 0.95,
                 "Orin NX peer on Gigabit Ethernet", 941.0, 60.0, 0.9, True),
)}


def condition(name: str) -> Condition:
    """The condition of `name`; ValueError listing the valid names otherwise."""
    known = {**CONDITIONS, **LAN_CONDITIONS}
    if name not in known:
        raise ValueError(f"unknown condition {name!r}; valid: {', '.join(known)}")
    return known[name]
