"""Shared pieces of the costmodel tests: small cards, random accuracy terms, hypothesis
strategies, the jitted cost functions (compiled once per process and spec shape), and the
JAX-vs-reference comparison."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from costmodel_reference import Link, Scenario, request_costs_ref_batch
from hypothesis import strategies as st

from costmodel.accuracy import AccuracyProfile
from costmodel.cards import ModelCard, get_card
from costmodel.costs import request_costs
from costmodel.link import LinkState, Workload
from costmodel.partition import Partition
from costmodel.profiles import DeviceProfile, get_profile
from costmodel.spec import make_spec
from lyapunov import hypotheses as hyp
from lyapunov.hypotheses import log_uniform  # noqa: F401 - the tests' import of it
from tests.partitions import all_partitions as _enumerate

# Two tiny cards: grouped-query attention (4 query heads on 2 K/V heads, SwiGLU, untied) and
# plain multi-head attention (3 heads, GELU, tied embeddings).
TINY_GQA = ModelCard("tiny-gqa", 2, 4, 2, 256, 640, 1000, "swiglu", False)
TINY_MHA = ModelCard("tiny-mha", 3, 3, 3, 192, 512, 800, "gelu", True)
EDGES = ("rpi5", "orin-nx", "galaxy-s23")
CLOUDS = ("datacenter", "mec", "orin-peer", "pi5-peer", "rtx4090-lan")

costs_jit = jax.jit(request_costs)
costs_batch = jax.jit(jax.vmap(request_costs, in_axes=(0, 0, None)))


def random_accuracy(card: ModelCard, seed: int) -> AccuracyProfile:
    """Random positive importances (sum 1), crossing costs and weight-precision costs."""
    rng = np.random.default_rng(seed)
    head = rng.uniform(0.05, 1.0, (card.n_layers, card.n_heads))
    ffn = rng.uniform(0.05, 3.0, card.n_layers)
    total = head.sum() + ffn.sum()
    act = np.concatenate([[rng.uniform(0, 1e-3)], np.sort(rng.uniform(1e-3, 0.05, 2))])
    weight_rel = {"8": float(rng.uniform(0, 1e-3)), "4": float(rng.uniform(1e-3, 0.1))}
    return AccuracyProfile(act, weight_rel, head / total, ffn / total, f"random seed {seed}")


def case(card: ModelCard | str, edge="rpi5", cloud="datacenter", prompt=128, new=32,
         privacy=0, acc_seed=0, edge_profile=None, cloud_profile=None):
    """(CostSpec, reference Scenario) of one model/device/cloud/workload."""
    card = get_card(card) if isinstance(card, str) else card
    acc = random_accuracy(card, acc_seed)
    e = edge_profile or get_profile(edge)
    c = cloud_profile or get_profile(cloud)
    spec = make_spec(card, e, c, Workload(prompt, new), privacy, acc)
    return spec, Scenario(card, e, c, acc, prompt, new, privacy)


def links(outage=True):
    """Reference links (up Mbit/s, down Mbit/s, RTT ms, cloud share) of the project's link
    strategy (``lyapunov.hypotheses.links``: bandwidth 0 is an outage, LAN RTTs favoured)."""
    return hyp.links(outage).map(lambda lk: Link(*(float(x) for x in (
        lk.bw_up_mbps, lk.bw_down_mbps, lk.rtt_ms, lk.cloud_share))))


@st.composite
def partitions(draw, n_layers: int, n_heads: int, tp: bool = True):
    """(edge_heads [L], ffn [L], act_prec, embed_edge, ffn_frac [L]) as plain Python values;
    with ``tp`` the FFN modes include tp (shares 1..15 sixteenths, ends of the grid favoured)."""
    heads = draw(st.lists(st.integers(0, n_heads), min_size=n_layers, max_size=n_layers))
    ffn = draw(st.lists(st.integers(0, 3 if tp else 2), min_size=n_layers, max_size=n_layers))
    share = st.one_of(st.sampled_from([1, 8, 15]), st.integers(1, 15))
    frac = [draw(share) if f == 3 else 0 for f in ffn]
    return heads, ffn, draw(st.integers(0, 2)), draw(st.booleans()), frac


def link_state(links_: list[Link]) -> LinkState:
    """Stack reference links into a batched LinkState."""
    f = jnp.float32
    return LinkState(*(jnp.asarray([getattr(x, a) for x in links_], f)
                       for a in ("up_mbps", "down_mbps", "rtt_ms", "share")))


def one_link(x: Link) -> LinkState:
    return LinkState(*(jnp.float32(getattr(x, a)) for a in ("up_mbps", "down_mbps", "rtt_ms",
                                                            "share")))


def _frac(part):
    return part[4] if len(part) > 4 else [0] * len(part[1])


def partition_batch(parts) -> Partition:
    heads, ffn, q, emb = (list(x) for x in zip(*(p[:4] for p in parts), strict=True))
    return Partition(jnp.asarray(heads, jnp.int32), jnp.asarray(ffn, jnp.int32),
                     jnp.asarray(q, jnp.int32), jnp.asarray(emb, bool),
                     jnp.asarray([_frac(p) for p in parts], jnp.int32))


def one_partition(part) -> Partition:
    heads, ffn, q, emb = part[:4]
    return Partition(jnp.asarray(heads, jnp.int32), jnp.asarray(ffn, jnp.int32),
                     jnp.asarray(q, jnp.int32), jnp.asarray(emb, bool),
                     jnp.asarray(_frac(part), jnp.int32))


# Absolute tolerances under rtol 1e-4 (float32 JAX vs float64 reference).
ATOL = {"latency_s": 1e-9, "energy_j": 1e-8, "cloud_cost": 1e-15, "accuracy_drop": 1e-7,
        "edge_memory_gb": 1e-12, "edge_compute_s": 1e-9, "bytes_up": 1e-3, "bytes_down": 1e-3,
        "cloud_gpu_s": 1e-12, "n_crossings": 0.0, "cloud_memory_gb": 1e-12}
FLAGS = ("feasible", "memory_ok", "link_ok", "privacy_ok", "cloud_memory_ok")


def assert_matches_reference(got, ref: dict, rtol=1e-4):
    """Compare a batched RequestCosts with the reference's dict of [B] arrays. Energy (and the
    infinite latency) are only compared where the link is up: in an outage the JAX idle time
    is inf - inf."""
    got = {f.name: np.asarray(getattr(got, f.name), float) for f in dataclasses.fields(got)}
    for flag in FLAGS:
        np.testing.assert_array_equal(got[flag].astype(bool), ref[flag].astype(bool),
                                      err_msg=flag)
    up = ref["link_ok"].astype(bool)
    np.testing.assert_array_equal(np.isinf(got["latency_s"]), ~up, err_msg="latency inf")
    for name, atol in ATOL.items():
        a, b = got[name], ref[name]
        if name in ("latency_s", "energy_j"):
            a, b = a[up], b[up]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


def reference_batch(sc: Scenario, parts, links_: list[Link]) -> dict:
    heads, ffn, q, emb = zip(*(p[:4] for p in parts), strict=True)
    return request_costs_ref_batch(sc, np.asarray(heads), np.asarray(ffn), np.asarray(q),
                                   np.asarray(emb), links_,
                                   np.asarray([_frac(p) for p in parts]))


def profile_with(name: str, **changes):
    return dataclasses.replace(get_profile(name), **changes)


costs_many = jax.jit(jax.vmap(request_costs, in_axes=(0, None, None)))


def all_partitions(card: ModelCard, tp_shares=()) -> Partition:
    """Every partition of a (tiny) card, stacked (``tests/partitions.py``); with tp FFNs at the
    given shares (sixteenths) if ``tp_shares``."""
    return _enumerate(card.n_layers, card.n_heads, tp_shares=tp_shares)


@st.composite
def weights(draw):
    """Objective weights of costmodel.dp.Weights, each 0 or spread over its natural scale."""

    def w(lo, hi):
        return draw(st.one_of(st.just(0.0), log_uniform(lo, hi)))

    return dict(latency=w(0.01, 10.0), energy=w(1e-3, 1.0), cloud_cost=w(1.0, 1e4),
                accuracy=w(1e-3, 1.0), memory=w(1e-2, 100.0))


def objective(c, w: dict, memory: bool = False) -> np.ndarray:
    """Weighted objective of (batched) RequestCosts; +inf where infeasible (link, privacy, and
    the memory budget if `memory`)."""
    with np.errstate(invalid="ignore"):  # 0 * inf where the link is down; masked below
        val = _weighted(c, w)
    ok = np.asarray(c.link_ok) & np.asarray(c.privacy_ok)
    if memory:
        ok = ok & np.asarray(c.memory_ok)
    return np.where(ok, val, np.inf)


def _weighted(c, w: dict) -> np.ndarray:
    return (w["latency"] * np.asarray(c.latency_s, float)
            + w["energy"] * np.asarray(c.energy_j, float)
            + w["cloud_cost"] * np.asarray(c.cloud_cost, float)
            + w["accuracy"] * np.asarray(c.accuracy_drop, float)
            + w["memory"] * np.asarray(c.edge_memory_gb, float))


def random_profile(role: str, seed: int) -> DeviceProfile:
    """A valid profile with random roofline, power, memory and price constants, spread so that
    edge and cloud speeds are sometimes comparable (where head- and FFN-level splits win):
    ``lyapunov.hypotheses.profiles``' distribution, seeded."""
    return hyp.profile_from_rng(role, np.random.default_rng(seed))
