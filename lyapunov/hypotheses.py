"""Hypothesis strategies over the slot model (docs/design.md §3): cards, profiles, links, queue
states, scenarios and whole slot states, shared by the stability certificate
(``lyapunov.certify``'s search) and the public assertions of ``lyapunov.testing``.
hypothesis is a development extra; importing the ``lyapunov`` package does not import it.
"""

from __future__ import annotations

import dataclasses
import math

try:
    from hypothesis import strategies as st
except ImportError as err:  # pragma: no cover - exercised without the dev extra
    raise ImportError("lyapunov.hypotheses needs hypothesis, a development extra: "
                      "pip install 'splitwise[dev]' (or pip install hypothesis)") from err

import jax.numpy as jnp

from costmodel.cards import ModelCard
from costmodel.link import LinkState
from costmodel.profiles import DeviceProfile
from lyapunov import env as E
from lyapunov import processes as proc
from lyapunov.queues import Queues

# --- building blocks --------------------------------------------------------------------


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats spread evenly on a log scale in [lo, hi] (lo > 0)."""
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda x: float(10.0 ** x))


@st.composite
def cards(draw, max_layers: int = 4, max_heads: int = 4) -> ModelCard:
    """A tiny valid model card: 1..max_layers layers, 1..max_heads heads, MHA or GQA,
    GELU or SwiGLU, tied or not (fast enough for the exact oracle and brute force)."""
    n_layers = draw(st.integers(1, max_layers))
    n_heads = draw(st.integers(1, max_heads))
    n_kv = draw(st.sampled_from([k for k in range(1, n_heads + 1) if n_heads % k == 0]))
    head_dim = draw(st.sampled_from((16, 32, 64)))
    d_ff = draw(st.sampled_from((128, 256, 512, 1024)))
    vocab = draw(st.sampled_from((500, 1000, 4000)))
    ffn = draw(st.sampled_from(("gelu", "swiglu")))
    return ModelCard(f"tiny-{n_layers}x{n_heads}-{n_kv}", n_layers, n_heads, n_kv,
                     n_heads * head_dim, d_ff, vocab, ffn, draw(st.booleans()))


# The ranges the drawn profiles span: (low, high, log scale?) per DeviceProfile field, or the
# choices of a discrete field. Also used, with a NumPy generator, where a test needs seeded
# profiles outside hypothesis (``profile_from_rng``).
PROFILE_RANGES = {
    "peak_tflops": (0.01, 300.0, True), "mem_bw_gbs": (5.0, 3000.0, True),
    "eff_compute": (0.1, 1.0, False), "eff_memory": (0.1, 1.0, False),
    "overhead_us": (0.0, 1.0, 200.0), "msg_overhead_us": (0.0, 1.0, 500.0),
    "weight_bits": (4.0, 4.5, 8.0, 16.0), "kv_bits": (8.0, 16.0),
    "power_active_w": (1.0, 400.0, True), "power_idle_w": (0.1, 10.0, True),
    "power_tx_w": (0.1, 5.0, True), "mem_budget_gb": (0.5, 80.0, True),
    "rtt_ms": (0.5, 100.0, True), "price_per_gpu_s": (1e-5, 1e-2, True),
    "price_per_gb": (1e-3, 0.2, True),
}
# Fields with an "off" value: (0.0, lo, hi) is 0 or a log-uniform draw in [lo, hi].
_OPTIONAL = ("overhead_us", "msg_overhead_us")
_CHOICES = ("weight_bits", "kv_bits")


def _profile(role: str, name: str, value) -> DeviceProfile:
    return DeviceProfile(name, role, **{k: value(k, r) for k, r in PROFILE_RANGES.items()})


@st.composite
def profiles(draw, role: str = "edge") -> DeviceProfile:
    """A valid device profile with roofline, power, memory, message-overhead and price
    constants spread wide over ``PROFILE_RANGES`` (edge and cloud speeds sometimes comparable,
    where head- and FFN-level splits win)."""
    def value(k, r):
        if k in _CHOICES:
            return draw(st.sampled_from(r))
        if k in _OPTIONAL:
            return draw(st.one_of(st.just(0.0), log_uniform(r[1], r[2])))
        return draw(log_uniform(r[0], r[1]) if r[2] else st.floats(r[0], r[1]))

    return _profile(role, f"drawn-{role}", value)


def profile_from_rng(role: str, rng) -> DeviceProfile:
    """The same distribution as :func:`profiles`, drawn with a NumPy ``Generator`` (for seeded
    loops outside hypothesis)."""
    def value(k, r):
        if k in _CHOICES:
            return float(rng.choice(r))
        if k in _OPTIONAL:
            return 0.0 if rng.random() < 0.5 else float(
                10 ** rng.uniform(math.log10(r[1]), math.log10(r[2])))
        lo, hi, log = r
        return float(10 ** rng.uniform(math.log10(lo), math.log10(hi))) if log else float(
            rng.uniform(lo, hi))

    return _profile(role, f"random-{role}", value)


@st.composite
def links(draw, outage: bool = True) -> LinkState:
    """A cost-model link (Mbit/s, ms, share); with ``outage`` the bandwidth may be 0. The RTT
    is 0, a LAN's (0-2 ms, where tensor-parallel splits pay) or anything up to 300 ms."""
    bw = st.one_of(st.just(0.0), log_uniform(0.05, 5000.0)) if outage else log_uniform(
        0.05, 5000.0)
    up = draw(bw)
    down = up if draw(st.booleans()) else draw(bw)
    rtt = draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0), st.floats(0.0, 300.0)))
    share = draw(st.one_of(st.just(1.0), log_uniform(0.01, 1.0)))
    f = jnp.float32
    return LinkState(f(up), f(down), f(rtt), f(share))


@st.composite
def link_samples(draw, up_ratio: float = 1.0, outage: bool = True) -> proc.LinkSample:
    """One slot's link draw as the environment holds it (``up`` False: an outage, zero
    throughput)."""
    is_up = draw(st.booleans()) if outage else True
    bw = draw(log_uniform(0.05, 5000.0)) if is_up else 0.0
    rtt = draw(st.floats(0.0, 300.0))
    share = draw(st.one_of(st.just(1.0), log_uniform(0.01, 1.0)))
    f = jnp.float32
    return proc.LinkSample(f(bw * up_ratio), f(bw), f(rtt), f(share), jnp.bool_(is_up))


def queue_states(q_max: float = 1e3, z_max: float = 1e3, budgets=None) -> st.SearchStrategy:
    """:class:`lyapunov.queues.Queues` with Q in [0, q_max] and each Z in [0, z_max]; a Z
    whose budget (``lyapunov.queues.Budgets``) is infinite stays 0, as in the environment."""
    inf = [False, False, False] if budgets is None else [
        not math.isfinite(float(b)) for b in (budgets.e_bar, budgets.a_bar, budgets.c_bar)]

    def z(no):
        return st.just(0.0) if no else st.one_of(st.just(0.0), st.floats(0.0, z_max))

    f = jnp.float32
    return st.builds(lambda q, e, a, c: Queues(f(q), f(e), f(a), f(c)),
                     st.one_of(st.just(0.0), st.floats(0.0, q_max)), *(z(n) for n in inf))


@st.composite
def scenarios(draw, iid: bool = True, model: ModelCard | str | None = None,
              V: float | None = None) -> E.Scenario:
    """A small Scenario: a tiny card (or ``model``), a built-in edge and cloud, Poisson
    arrivals, and, with ``iid`` (the theorem's assumption A1), a bandwidth drawn afresh each
    slot from three levels (a Markov chain with identical rows) and a constant cloud share;
    otherwise an AR(1) bandwidth with a random correlation and possibly outages."""
    card = model if model is not None else draw(cards(max_layers=3, max_heads=3))
    device = draw(st.sampled_from(("rpi5", "orin-nx", "galaxy-s23")))
    cloud = draw(st.sampled_from(("datacenter", "mec")))
    if iid:
        levels = tuple(sorted(draw(st.lists(log_uniform(0.5, 200.0), min_size=3, max_size=3,
                                            unique=True))))
        p = draw(st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3))
        row = tuple(float(x / sum(p)) for x in p)
        bw = proc.BandwidthConfig(kind="markov", levels_mbps=levels, transition=(row,) * 3)
        link = proc.LinkConfig(bandwidth=bw, rtt_ms=draw(st.floats(1.0, 100.0)))
    else:
        bw = proc.BandwidthConfig(kind="ar1", mean_mbps=draw(log_uniform(0.5, 200.0)),
                                  rho=draw(st.floats(0.0, 0.99)))
        link = proc.LinkConfig(bandwidth=bw, rtt_ms=draw(st.floats(1.0, 100.0)),
                               outage_prob=draw(st.sampled_from((0.0, 0.05))))
    return E.Scenario(model=card, device=device, cloud=cloud,
                      prompt_tokens=draw(st.sampled_from((16, 64, 128))),
                      new_tokens=draw(st.sampled_from((4, 16, 32))),
                      tau_s=draw(st.sampled_from((1.0, 2.0, 5.0))),
                      V=V if V is not None else draw(log_uniform(0.1, 100.0)),
                      arrival=proc.ArrivalConfig(rate=draw(st.floats(0.05, 2.0))), link=link,
                      episode_slots=10**6)


# --- slot states of one scenario (what the certificate searches) -------------------------


@dataclasses.dataclass(frozen=True)
class SlotState:
    """One slot's state for a given scenario, as plain numbers (reproducible, printable).

    q, z_e, z_a, z_c: queues at the start of the slot.
    bw_mbps, rtt_ms, share, up: the slot's own link (downlink; ``up`` False: an outage).
    last_bw_mbps, last_rtt_ms, last_share, last_up: the last measured slot, which a causal
      controller observes (also its EWMA and history here).
    key: the PRNG seed of the slot's arrivals and of the policy's sampling.
    """

    q: float
    z_e: float
    z_a: float
    z_c: float
    bw_mbps: float
    rtt_ms: float
    share: float
    up: bool
    last_bw_mbps: float
    last_rtt_ms: float
    last_share: float
    last_up: bool
    key: int = 0


def _link_parts(bw_max: float):
    return st.tuples(st.one_of(st.just(10.0), log_uniform(0.05, bw_max)),
                     st.one_of(st.just(50.0), st.floats(0.0, 300.0)),
                     st.one_of(st.just(1.0), log_uniform(0.01, 1.0)), st.booleans())


def slot_states(params: E.EnvParams, q_max: float = 1e3, z_max: float | None = None,
                bw_max: float = 2000.0, outage: bool = True) -> st.SearchStrategy[SlotState]:
    """:class:`SlotState` draws for ``params``: queues in [0, q_max] (a Z only where its budget
    is finite; ``z_max`` defaults to ``q_max``), the slot's link and the last measured one
    drawn separately (equal with probability about one half: the estimate was right), an
    outage on either with ``outage``. Shrinks towards empty queues, 10 Mbit/s, 50 ms, full
    share, link up."""
    b = params.slot.budgets
    z_max = q_max if z_max is None else z_max
    qs = queue_states(q_max, z_max, b)

    @st.composite
    def draw_state(draw):
        q = draw(qs)
        now = draw(_link_parts(bw_max))
        last = now if draw(st.booleans()) else draw(_link_parts(bw_max))
        up_now = now[3] or not outage
        up_last = last[3] or not outage
        return SlotState(float(q.q), float(q.z_e), float(q.z_a), float(q.z_c),
                         float(now[0]), float(now[1]), float(now[2]), bool(up_now),
                         float(last[0]), float(last[1]), float(last[2]), bool(up_last),
                         draw(st.integers(0, 2**16)))

    return draw_state()


def _sample(bw, rtt, share, up, up_ratio) -> proc.LinkSample:
    f = jnp.float32
    down = f(bw if up else 0.0)
    return proc.LinkSample(f(down * up_ratio), down, f(rtt), f(share), jnp.bool_(up))


def env_state(s: SlotState, template: E.EnvState, up_ratio: float = 1.0) -> E.EnvState:
    """The EnvState of ``s`` (``template``: any state of the scenario, e.g. from ``reset``):
    the queues, the slot's link, and an observation whose last link, EWMA and history are the
    last measured link."""
    f = jnp.float32
    now = _sample(s.bw_mbps, s.rtt_ms, s.share, s.up, up_ratio)
    last = _sample(s.last_bw_mbps, s.last_rtt_ms, s.last_share, s.last_up, up_ratio)
    n = template.bw_hist.shape[-1]
    return template.replace(
        queues=Queues(f(s.q), f(s.z_e), f(s.z_a), f(s.z_c)), link_t=now, link_prev=last,
        link_ewma=E.cost_link(last), bw_hist=jnp.full((n,), last.bw_down_mbps, f),
        share_hist=jnp.full((n,), last.cloud_share, f),
        since_outage=jnp.int32(n if s.last_up else 0))


def describe(s: SlotState | None) -> dict | None:
    """A SlotState as a dict of its values (None stays None)."""
    return None if s is None else dataclasses.asdict(s)
