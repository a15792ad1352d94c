"""Loop-based NumPy/Python reference of `costmodel.costs.request_costs` (used by tests only).

Written from the conventions of the `costmodel.costs` module docstring, not from its code: the
request is walked pass by pass (one prefill pass over S tokens, then T identical decode passes)
and layer by layer, with the residual stream's side as the state, and each phase (attention of
a layer, FFN of a layer, the embedding/LM-head endpoints) is timed from the crossings and
roofline blocks it contains. Everything is float64 Python arithmetic on the card and profile
fields (no `CostSpec`, no JAX).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from costmodel.accuracy import AccuracyProfile
from costmodel.cards import ModelCard
from costmodel.profiles import DeviceProfile

EDGE, CLOUD, SPLIT, TP = 0, 1, 2, 3  # FFN modes
BOTH = 2  # residual side: held on both sides
TP_GRID = 16
ACT_BYTES = (2.0, 1.0, 0.5)  # fp16, int8, int4 bytes per crossing activation element
TOKEN_BYTES = 4.0


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A model on an edge device with a cloud, one request shape and a privacy floor."""

    card: ModelCard
    edge: DeviceProfile
    cloud: DeviceProfile
    acc: AccuracyProfile
    prompt_tokens: int
    new_tokens: int
    privacy_layers: int = 0


@dataclasses.dataclass(frozen=True)
class Link:
    up_mbps: float
    down_mbps: float
    rtt_ms: float
    share: float


@dataclasses.dataclass
class RefCosts:
    latency_s: float
    energy_j: float
    cloud_cost: float
    accuracy_drop: float
    edge_memory_gb: float
    feasible: bool
    edge_compute_s: float
    bytes_up: float
    bytes_down: float
    cloud_gpu_s: float
    n_crossings: float
    memory_ok: bool
    link_ok: bool
    privacy_ok: bool
    cloud_memory_gb: float
    cloud_memory_ok: bool


class _Device:
    """Roofline of one device: max(compute time, memory time) / share + a per-phase overhead."""

    def __init__(self, prof: DeviceProfile, share: float = 1.0):
        self.flop_rate = prof.peak_tflops * 1e12 * prof.eff_compute
        self.byte_rate = prof.mem_bw_gbs * 1e9 * prof.eff_memory
        self.overhead = prof.overhead_us * 1e-6
        self.w_bytes = prof.weight_bits / 8.0
        self.kv_bytes = prof.kv_bits / 8.0
        self.share = share

    def block(self, flops: float, nbytes: float) -> float:
        if flops <= 0:
            return 0.0
        return max(flops / self.flop_rate, nbytes / self.byte_rate) / self.share + self.overhead


def heads_work(card: ModelCard, dev: _Device, q_heads: int, n: float, ctx: float,
               read_cache: bool) -> tuple[float, float]:
    """FLOPs and bytes of `q_heads` query heads and the K/V heads they need, over n tokens.

    Per token and query head: Q projection (d x dh) and its W_O slice (dh x d), 2 FLOPs per
    weight, scores and weighted values over ctx keys (2 * 2 * ctx * dh). Per token and K/V
    head: K and V projections (2 * 2 * d * dh). Bytes: all these weights once per pass, and in
    decode the K/V cache of ctx tokens of each K/V head.
    """
    if q_heads == 0:
        return 0.0, 0.0
    d, dh = card.d_model, card.head_dim
    kv_heads = math.ceil(q_heads / card.group_size)
    per_q = 2 * (2 * d * dh) + 2 * (2 * ctx * dh)
    per_kv = 2 * (2 * d * dh)
    flops = n * (q_heads * per_q + kv_heads * per_kv)
    weights = q_heads * 2 * d * dh + kv_heads * 2 * d * dh
    cache = kv_heads * 2 * dh * ctx if read_cache else 0.0
    return flops, weights * dev.w_bytes + cache * dev.kv_bytes


def ffn_work(card: ModelCard, dev: _Device, mats: float, n: float) -> tuple[float, float]:
    params = mats * card.d_model * card.d_ff
    return 2.0 * n * params, params * dev.w_bytes


@dataclasses.dataclass
class _Acc:
    """Totals of one pass or of the endpoints."""

    latency: float = 0.0
    busy: float = 0.0
    tx: float = 0.0
    idle: float = 0.0
    up: float = 0.0
    down: float = 0.0
    gpu: float = 0.0
    crossings: int = 0

    def phase(self, latency, busy, up_bytes, down_bytes, gpu, crossings, bw_up):
        """Close one phase; the edge is idle for what it neither computes nor transmits."""
        tx = _send_time(up_bytes, bw_up)
        self.latency += latency
        self.busy += busy
        self.tx += tx
        self.idle += max(latency - busy - tx, 0.0) if math.isfinite(latency) else math.inf
        self.up += up_bytes
        self.down += down_bytes
        self.gpu += gpu
        self.crossings += crossings


def _send_time(nbytes: float, bw: float) -> float:
    if nbytes == 0:
        return 0.0
    return nbytes / bw if bw > 0 else math.inf


def edge_heads_set(acc: AccuracyProfile, card: ModelCard, layer: int, k: int) -> list[int]:
    """The k query heads of `layer` that run on the edge: whole K/V groups in ascending order
    of their summed importance, heads inside a group in ascending importance (stable ties)."""
    g = card.group_size
    w = list(acc.head_w[layer])
    groups = sorted(range(card.n_kv_heads), key=lambda j: (sum(w[j * g:(j + 1) * g]), j))
    order = []
    for j in groups:
        order += sorted(range(j * g, (j + 1) * g), key=lambda h: (w[h], h))
    return order[:k]


def importance_prefix(sc: Scenario) -> list[list[float]]:
    """prefix[l][k]: importance of the k heads of layer l that run on the edge for a count k
    (computed once per scenario)."""
    out = []
    for layer in range(sc.card.n_layers):
        heads = edge_heads_set(sc.acc, sc.card, layer, sc.card.n_heads)
        out.append([0.0] + list(np.cumsum([sc.acc.head_w[layer][h] for h in heads])))
    return out


def msg_latency(sc: Scenario, link: Link) -> float:
    """Per-message time besides the bytes: RTT/2 + sender's and receiver's software cost."""
    return link.rtt_ms * 1e-3 / 2 + (sc.edge.msg_overhead_us + sc.cloud.msg_overhead_us) * 1e-6


def one_pass(sc: Scenario, edge_heads, ffn, act_prec: int, s0: int, link: Link, n: float,
             ctx: float, read_cache: bool, ffn_frac=None) -> tuple[_Acc, int]:
    """Walk the layers once over n tokens; returns the totals and the final residual side."""
    card = sc.card
    e, c = _Device(sc.edge), _Device(sc.cloud, link.share)
    bw = {EDGE: link.up_mbps * 1e6 / 8, CLOUD: link.down_mbps * 1e6 / 8}  # keyed by sender
    lat0 = msg_latency(sc, link)
    ffn_frac = [0] * card.n_layers if ffn_frac is None else ffn_frac

    def cross(sender, nbytes):
        return lat0 + _send_time(nbytes, bw[sender])

    ab = ACT_BYTES[act_prec]
    x_bytes = n * card.d_model * ab
    tot = _Acc()
    side = s0
    for layer in range(card.n_layers):
        k, f = int(edge_heads[layer]), int(ffn[layer])
        heads = {EDGE: k, CLOUD: card.n_heads - k}
        t = {EDGE: e.block(*heads_work(card, e, heads[EDGE], n, ctx, read_cache)),
             CLOUD: c.block(*heads_work(card, c, heads[CLOUD], n, ctx, read_cache))}
        if f == TP:
            side = _tp_layer(tot, card, e, c, link, bw, cross, x_bytes, heads, t, side,
                             int(ffn_frac[layer]), n)
            continue
        # Heads compute concurrently; partial outputs are summed where the FFN starts.
        agg = CLOUD if f == CLOUD else EDGE
        other = 1 - agg
        sent = {EDGE: 0.0, CLOUD: 0.0}
        if side == BOTH:
            # Both sides hold the input: only the other side's partial sum moves to agg.
            if heads[other]:
                lat, n_x = max(t[agg], t[other] + cross(other, x_bytes)), 1
                sent[other] += x_bytes
            else:
                lat, n_x = t[agg], 0
        elif side == agg:
            if heads[other]:
                # The input goes to the other side and its partial sum comes back.
                lat = max(t[agg], cross(agg, x_bytes) + t[other] + cross(other, x_bytes))
                sent[agg] += x_bytes
                sent[other] += x_bytes
                n_x = 2
            else:
                lat, n_x = t[agg], 0
        else:
            # Everything moves from `side` to `agg`: the input (if agg has heads) right away,
            # the partial sum of `side`'s heads (with the residual if agg has none) afterwards.
            arrivals = []
            if heads[agg]:
                arrivals.append(cross(side, x_bytes) + t[agg])
            if heads[side]:
                arrivals.append(t[side] + cross(side, x_bytes))
            lat, n_x = max(arrivals), len(arrivals)
            sent[side] += n_x * x_bytes
        tot.phase(lat, t[EDGE], sent[EDGE], sent[CLOUD], t[CLOUD] * link.share, n_x, bw[EDGE])
        # FFN.
        m = card.n_ffn_mats
        if f == EDGE:
            t_e = e.block(*ffn_work(card, e, m, n))
            tot.phase(t_e, t_e, 0.0, 0.0, 0.0, 0, bw[EDGE])
            side = EDGE
        elif f == CLOUD:
            t_c = c.block(*ffn_work(card, c, m, n))
            tot.phase(t_c, 0.0, 0.0, 0.0, t_c * link.share, 0, bw[EDGE])
            side = CLOUD
        else:
            # Gate/up (or W1) on the edge; the d_ff-wide activation and the residual cross.
            t_e = e.block(*ffn_work(card, e, m - 1, n))
            t_c = c.block(*ffn_work(card, c, 1, n))
            msg = n * (card.d_ff + card.d_model) * ab
            tot.phase(t_e + cross(EDGE, msg) + t_c, t_e, msg, 0.0, t_c * link.share, 1,
                      bw[EDGE])
            side = CLOUD
    return tot, side


def _tp_layer(tot: _Acc, card, e: _Device, c: _Device, link: Link, bw, cross, x_bytes, heads,
              t, side: int, frac: int, n: float) -> int:
    """A tensor-parallel layer as an event timeline: entering both, attention on both sides,
    exchange of attention partial sums, FFN columns on both sides, exchange of FFN partial
    sums, barrier. Returns the new side (BOTH)."""
    start = {EDGE: 0.0, CLOUD: 0.0}
    sent = {EDGE: 0, CLOUD: 0}  # messages by sender
    # Entering: the side without the residual needs it before its heads start, if it has any.
    for holder in (EDGE, CLOUD):
        other = 1 - holder
        if side == holder and heads[other]:
            start[other] = cross(holder, x_bytes)
            sent[holder] += 1
    finish = {d: start[d] + t[d] for d in (EDGE, CLOUD)}
    # Exchange 1: a side with heads sends its partial (with the residual if the receiver
    # lacks it; a receiver lacks it only if it holds no heads, so the sender has heads).
    ready = dict(finish)
    for sender in (EDGE, CLOUD):
        if heads[sender]:
            recv = 1 - sender
            ready[recv] = max(ready[recv], finish[sender] + cross(sender, x_bytes))
            sent[sender] += 1
    # FFN columns: frac/16 of the d_ff columns (all m matrices' share) on the edge.
    m = card.n_ffn_mats
    phi = frac / TP_GRID
    t_f = {EDGE: e.block(*ffn_work(card, e, m * phi, n)),
           CLOUD: c.block(*ffn_work(card, c, m * (1 - phi), n))}
    done = {d: ready[d] + t_f[d] for d in (EDGE, CLOUD)}
    # Exchange 2: both send their FFN partial sums; then a barrier.
    final = {d: max(done[d], done[1 - d] + cross(1 - d, x_bytes)) for d in (EDGE, CLOUD)}
    sent[EDGE] += 1
    sent[CLOUD] += 1
    lat = max(final.values())
    tot.phase(lat, t[EDGE] + t_f[EDGE], sent[EDGE] * x_bytes, sent[CLOUD] * x_bytes,
              (t[CLOUD] + t_f[CLOUD]) * link.share, sent[EDGE] + sent[CLOUD], bw[EDGE])
    return BOTH


def request_costs_ref(sc: Scenario, edge_heads, ffn, act_prec: int, embed_edge: bool,
                      link: Link, prefix: list[list[float]] | None = None,
                      ffn_frac=None) -> RefCosts:
    """Costs of one request; `prefix` is importance_prefix(sc) if already computed; `ffn_frac`
    the tp shares (units of 1/16; zeros if None)."""
    card, T, S = sc.card, sc.new_tokens, sc.prompt_tokens
    prefix = prefix or importance_prefix(sc)
    ffn_frac = [0] * card.n_layers if ffn_frac is None else list(ffn_frac)
    s0 = EDGE if embed_edge else CLOUD
    pre, s_last = one_pass(sc, edge_heads, ffn, act_prec, s0, link, S, (S + 1) / 2, False,
                           ffn_frac)
    dec, _ = one_pass(sc, edge_heads, ffn, act_prec, s0, link, 1, S + (T + 1) / 2, True,
                      ffn_frac)
    if s_last == BOTH:
        s_last = s0  # both hold the final residual: the LM head runs on the embedding's side

    # Endpoints: prompt upload, T + 1 LM-head calls, token feedback before each decode step,
    # and delivery of the last token (earlier ones stream while decoding continues).
    e, c = _Device(sc.edge), _Device(sc.cloud, link.share)
    bw_up, bw_down = link.up_mbps * 1e6 / 8, link.down_mbps * 1e6 / 8
    half_rtt = msg_latency(sc, link)
    v, d = card.vocab, card.d_model
    lat = up = down = 0.0
    if s0 == CLOUD:
        lat += half_rtt + _send_time(S * TOKEN_BYTES, bw_up)
        up += S * TOKEN_BYTES
    lm_dev = e if s_last == EDGE else c
    lm = (T + 1) * lm_dev.block(2.0 * v * d, v * d * lm_dev.w_bytes)
    lat += lm
    if s0 != s_last:
        each_bw = bw_up if s_last == EDGE else bw_down
        lat += T * (half_rtt + _send_time(TOKEN_BYTES, each_bw))
        if s_last == EDGE:
            up += T * TOKEN_BYTES
        else:
            down += T * TOKEN_BYTES
    if s_last == CLOUD:
        lat += half_rtt + _send_time(TOKEN_BYTES, bw_down)
        down += TOKEN_BYTES
        if s0 == CLOUD:
            down += T * TOKEN_BYTES  # the streamed earlier tokens
    ends = _Acc()
    ends.phase(lat, lm if s_last == EDGE else 0.0, up, down,
               lm * link.share if s_last == CLOUD else 0.0, 0, bw_up)

    total = _Acc()
    for part, times in ((pre, 1), (dec, T), (ends, 1)):
        for f in ("latency", "busy", "tx", "idle", "up", "down", "gpu"):
            setattr(total, f, getattr(total, f) + times * getattr(part, f))

    # Energy, cloud operating cost.
    energy = (sc.edge.power_active_w * total.busy + sc.edge.power_tx_w * total.tx
              + sc.edge.power_idle_w * total.idle)
    cloud_cost = (sc.cloud.price_per_gpu_s * total.gpu
                  + sc.cloud.price_per_gb * (total.up + total.down) / 1e9)

    # Edge memory: weights of edge blocks at edge precision, the K/V cache of the edge K/V
    # heads for S + T tokens, and the embedding / LM head on the edge (one matrix if tied).
    wb, kvb = sc.edge.weight_bits / 8, sc.edge.kv_bits / 8
    cwb, ckvb = sc.cloud.weight_bits / 8, sc.cloud.kv_bits / 8
    dh, m = card.head_dim, card.n_ffn_mats
    mem = mem_c = 0.0
    weight_frac = 0.0  # importance of blocks at edge weight precision
    for layer in range(card.n_layers):
        k, f = int(edge_heads[layer]), int(ffn[layer])
        kv_heads = math.ceil(k / card.group_size)
        # The cloud holds every K/V head with at least one of its query heads on the cloud.
        kv_c = sum(1 for g in range(card.n_kv_heads)
                   if (g + 1) * card.group_size > k)
        mem += wb * (k * 2 * d * dh + kv_heads * 2 * d * dh)
        mem += kvb * kv_heads * 2 * dh * (S + T)
        mem_c += cwb * ((card.n_heads - k) * 2 * d * dh + kv_c * 2 * d * dh)
        mem_c += ckvb * kv_c * 2 * dh * (S + T)
        weight_frac += prefix[layer][k]
        mats = {EDGE: m, CLOUD: 0, SPLIT: m - 1, TP: m * ffn_frac[layer] / TP_GRID}[f]
        mem += wb * mats * d * card.d_ff
        mem_c += cwb * (m - mats) * d * card.d_ff
        weight_frac += sc.acc.ffn_w[layer] * mats / m
    emb_edge, lm_edge = s0 == EDGE, s_last == EDGE
    n_mats = (emb_edge or lm_edge) if card.tied_embeddings else (emb_edge + lm_edge)
    n_mats_c = ((not emb_edge) or (not lm_edge)) if card.tied_embeddings else (
        (not emb_edge) + (not lm_edge))
    mem += wb * v * d * n_mats
    mem_c += cwb * v * d * n_mats_c

    accuracy = 100.0 * (sc.acc.act_rel[act_prec] * pre.crossings
                        + sc.acc.weight_cost(sc.edge.weight_bits) * weight_frac)

    priv = all(int(edge_heads[i]) == card.n_heads and int(ffn[i]) == EDGE
               for i in range(sc.privacy_layers))
    priv = priv and (embed_edge or sc.privacy_layers == 0)
    memory_ok = mem <= sc.edge.mem_budget_gb * 1e9
    cloud_ok = mem_c <= sc.cloud.mem_budget_gb * 1e9
    link_ok = math.isfinite(total.latency)
    return RefCosts(
        latency_s=total.latency, energy_j=energy, cloud_cost=cloud_cost, accuracy_drop=accuracy,
        edge_memory_gb=mem / 1e9, feasible=memory_ok and cloud_ok and link_ok and priv,
        edge_compute_s=total.busy, bytes_up=total.up, bytes_down=total.down,
        cloud_gpu_s=total.gpu, n_crossings=float(pre.crossings), memory_ok=memory_ok,
        link_ok=link_ok, privacy_ok=priv, cloud_memory_gb=mem_c / 1e9,
        cloud_memory_ok=cloud_ok)


def request_costs_ref_batch(sc: Scenario, edge_heads, ffn, act_prec, embed_edge, links,
                            ffn_frac=None):
    """Loop over a batch: edge_heads, ffn, ffn_frac int [B, L]; act_prec int [B]; embed_edge
    bool [B]; links a sequence of B `Link`s. Returns a dict of float64 [B] arrays."""
    prefix = importance_prefix(sc)
    if ffn_frac is None:
        ffn_frac = np.zeros_like(np.asarray(ffn))
    rows = [request_costs_ref(sc, edge_heads[i], ffn[i], int(act_prec[i]), bool(embed_edge[i]),
                              links[i], prefix, ffn_frac[i]) for i in range(len(links))]
    return {f.name: np.array([getattr(r, f.name) for r in rows], dtype=float)
            for f in dataclasses.fields(RefCosts)}
