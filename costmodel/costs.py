"""Per-request costs of a partition: latency, edge energy, cloud cost, accuracy drop, edge and
cloud memory, feasibility (docs/design.md §2). Pure JAX, written for one sample; vmap outward.

Conventions (see also proofs/cost-model.md):
- A pass over the layers processes `n` tokens: prefill n = S (mean causal context (S+1)/2),
  decode n = 1 at the mean context S + (T+1)/2, reading the KV cache. A request is one
  prefill pass and T decode passes, the partition fixed for the request.
- Each side runs a phase (its heads of a layer, or an FFN part) as one roofline block:
  time = max(flops / achieved FLOP/s, bytes / achieved B/s) / share + overhead; the cloud's
  speed is scaled by this client's `cloud_share`.
- Crossing the link with n bytes costs RTT/2 + n / B + msg_overhead (B = 0: an outage,
  infinite time); msg_overhead is the sender's plus the receiver's per-message software cost.
- The residual's side s is EDGE, CLOUD or BOTH (after a tp layer both sides hold it).
- Non-tp layer (f in edge/cloud/split), k heads on the edge: the attention output is summed on
  a = cloud if f == cloud else edge. If a == s, the other side (if it holds heads) gets the
  input and returns its partial sum: max(t_a, X + t_o + X). If a != s (s not BOTH), the input
  crosses once (heads on a need it; with no heads on a, the sum x + partial of s crosses
  instead) and partials of s cross after t_s: X + max(t_a, t_s). If s == BOTH, no input
  crosses: max(t_a, t_o + X) (the other side's partial, if it holds heads). A split FFN
  computes gate/up on the edge and sends the d_ff-wide activation with the residual (d_ff + d).
- tp layer (f == tp, phi = ffn_frac / TP_GRID of the FFN columns on the edge), any s: entering
  BOTH, the residual crosses from s to the other side if that side holds heads (otherwise it
  rides with the first exchange); each side runs its heads, then sends its partial sum
  (carrying the residual where the receiver has none) to the other side if it holds heads;
  each side runs its FFN columns; both send their FFN partial sums. Each side waits for what
  it receives; the two directions run concurrently; the layer ends at a barrier (the later
  side), which keeps the cost additive over layers (proofs/cost-model.md §2).
- Token ids cross as 4-byte integers: the prompt when the embedding is on the cloud, the sampled
  token from the LM head's side back to the embedding's side before each decode step, and the
  last token to the edge when the LM head is on the cloud (earlier tokens stream concurrently).
- Edge energy = P_active * edge compute time + P_tx * uplink transmit time + P_idle * the rest
  of each phase (clipped at 0 per phase: radio and compute overlap).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from costmodel.link import LinkState
from costmodel.partition import BOTH, CLOUD, EDGE, SPLIT, TP, TP_GRID, Partition
from costmodel.profiles import ProfileParams
from costmodel.spec import CostSpec

TOKEN_BYTES = 4.0


@struct.dataclass
class Terms:
    """Additive cost terms (any common shape). Times in s, bytes in bytes."""

    latency: jnp.ndarray
    busy: jnp.ndarray  # edge compute time
    tx: jnp.ndarray  # edge uplink transmit time (bytes / B_up)
    idle: jnp.ndarray  # edge waiting time
    up_bytes: jnp.ndarray
    down_bytes: jnp.ndarray
    gpu_s: jnp.ndarray  # cloud GPU-seconds charged to this client
    n_cross: jnp.ndarray  # activation crossings (quantized at the chosen precision)
    acc_w: jnp.ndarray  # importance weight of blocks at the edge weight precision
    mem: jnp.ndarray  # edge memory, bytes
    mem_cloud: jnp.ndarray  # cloud memory, bytes

    def __add__(self, other: Terms) -> Terms:
        return Terms(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(t: Terms):
    return (t.latency, t.busy, t.tx, t.idle, t.up_bytes, t.down_bytes, t.gpu_s, t.n_cross,
            t.acc_w, t.mem, t.mem_cloud)


@struct.dataclass
class RequestCosts:
    """Costs of one request. accuracy_drop is the relative perplexity increase in percent."""

    latency_s: jnp.ndarray
    energy_j: jnp.ndarray
    cloud_cost: jnp.ndarray  # USD
    accuracy_drop: jnp.ndarray
    edge_memory_gb: jnp.ndarray
    feasible: jnp.ndarray
    edge_compute_s: jnp.ndarray
    bytes_up: jnp.ndarray
    bytes_down: jnp.ndarray
    cloud_gpu_s: jnp.ndarray
    n_crossings: jnp.ndarray
    memory_ok: jnp.ndarray
    link_ok: jnp.ndarray
    privacy_ok: jnp.ndarray
    cloud_memory_gb: jnp.ndarray
    cloud_memory_ok: jnp.ndarray


def xfer_time(nbytes, bw_bytes_s):
    """n / B, with B = 0 (outage) giving +inf for n > 0 and 0 for n == 0."""
    safe = jnp.where(bw_bytes_s > 0, bw_bytes_s, 1.0)
    return jnp.where(nbytes > 0, jnp.where(bw_bytes_s > 0, nbytes / safe, jnp.inf), 0.0)


def roofline(flops, nbytes, prof: ProfileParams, share=1.0):
    """Time of one block on a device; 0 if it does no work."""
    t = jnp.maximum(flops / prof.flops, nbytes / prof.bw) / share + prof.overhead_s
    return jnp.where(flops > 0, t, 0.0)


def _bw(link: LinkState):
    return link.bw_up_mbps * 1e6 / 8.0, link.bw_down_mbps * 1e6 / 8.0


def _attn_work(spec: CostSpec, prof: ProfileParams, n_heads, n_groups, n, ctx, kv_read):
    d, dh = spec.d_model, spec.head_dim
    flops = n * (n_heads * (4.0 * d * dh + 4.0 * ctx * dh) + n_groups * 4.0 * d * dh)
    nbytes = (prof.weight_bytes * (n_heads + n_groups) * 2.0 * d * dh
              + kv_read * n_groups * 2.0 * dh * ctx * prof.kv_bytes)
    return flops, nbytes


def _ffn_work(spec: CostSpec, prof: ProfileParams, n_mats, n):
    """Work of `n_mats` (possibly fractional: a tp share) d x d_ff matrices over n tokens."""
    params = n_mats * spec.d_model * spec.d_ff
    return n * 2.0 * params, prof.weight_bytes * params


def _phase(latency, busy, tx, up_bytes, down_bytes, gpu_s, n_cross):
    idle = jnp.maximum(latency - busy - tx, 0.0)
    return latency, busy, tx, idle, up_bytes, down_bytes, gpu_s, n_cross


def _lat0(link: LinkState, spec: CostSpec):
    """Per-message latency of a crossing besides its bytes: RTT/2 + both sides' software cost."""
    return link.rtt_ms * 1e-3 / 2.0 + spec.msg_overhead_s


def pass_terms(s_in, k, f, q, link: LinkState, spec: CostSpec, n, ctx, kv_read, j=0) -> Terms:
    """Time-like terms of one layer in one pass over `n` tokens (broadcasts over s_in, k, f and
    j, the tp share in units of 1/TP_GRID)."""
    e, c, share = spec.edge, spec.cloud, link.cloud_share
    bw_up, bw_down = _bw(link)
    lat0 = _lat0(link, spec)
    k_c = spec.n_heads - k
    g_e = (k + spec.group - 1) // spec.group
    g_c = spec.n_kv - k // spec.group
    t_e = roofline(*_attn_work(spec, e, k, g_e, n, ctx, kv_read), e)
    t_c = roofline(*_attn_work(spec, c, k_c, g_c, n, ctx, kv_read), c, share)
    msg = n * spec.d_model * spec.act_bytes[q]
    x_up = lat0 + xfer_time(msg, bw_up)
    x_down = lat0 + xfer_time(msg, bw_down)
    has_e, has_c = k > 0, k_c > 0
    a_cloud = f == CLOUD
    s_cloud, s_edge, s_both = s_in == CLOUD, s_in == EDGE, s_in == BOTH
    # a == s: the other side's heads make a round trip.
    same_edge = jnp.maximum(t_e, jnp.where(has_c, x_up + t_c + x_down, 0.0))
    same_cloud = jnp.maximum(t_c, jnp.where(has_e, x_down + t_e + x_up, 0.0))
    round_trip = jnp.where(a_cloud, has_e, has_c)
    # a != s: one crossing s -> a of the input (or of x + partial), then partials of s.
    n_diff = has_e.astype(jnp.float32) + has_c
    diff_t = jnp.where(s_cloud, x_down, x_up) + jnp.maximum(t_e, t_c)
    # s == BOTH: only the other side's partial crosses to a.
    both_t = jnp.where(a_cloud, jnp.maximum(t_c, jnp.where(has_e, t_e + x_up, 0.0)),
                       jnp.maximum(t_e, jnp.where(has_c, t_c + x_down, 0.0)))
    same = a_cloud == s_cloud
    attn_t = jnp.select([s_both, same], [both_t, jnp.where(a_cloud, same_cloud, same_edge)],
                        diff_t)
    attn_cross = jnp.select([s_both, same], [round_trip, 2.0 * round_trip], n_diff)
    attn_up = jnp.select([s_both, same], [(a_cloud & has_e) * msg, round_trip * msg],
                         jnp.where(s_cloud, 0.0, n_diff * msg))
    attn_down = jnp.select([s_both, same], [(~a_cloud & has_c) * msg, round_trip * msg],
                           jnp.where(s_cloud, n_diff * msg, 0.0))
    attn = _phase(attn_t, t_e, xfer_time(attn_up, bw_up), attn_up, attn_down, t_c * share,
                  attn_cross)
    # FFN phase from side a.
    m = spec.n_ffn_mats
    full_e = roofline(*_ffn_work(spec, e, m, n), e)
    full_c = roofline(*_ffn_work(spec, c, m, n), c, share)
    w1_e = roofline(*_ffn_work(spec, e, m - 1, n), e)
    w2_c = roofline(*_ffn_work(spec, c, 1, n), c, share)
    split_msg = n * (spec.d_ff + spec.d_model) * spec.act_bytes[q]
    split_x = lat0 + xfer_time(split_msg, bw_up)
    is_split = f == SPLIT
    ffn_t = jnp.select([f == EDGE, f == CLOUD], [full_e, full_c], w1_e + split_x + w2_c)
    ffn_busy = jnp.select([f == EDGE, is_split], [full_e, w1_e], 0.0)
    ffn_up = jnp.where(is_split, split_msg, 0.0)
    ffn_gpu = jnp.select([f == CLOUD, is_split], [full_c, w2_c], 0.0) * share
    ffn = _phase(ffn_t, ffn_busy, xfer_time(ffn_up, bw_up), ffn_up, 0.0, ffn_gpu,
                 is_split.astype(jnp.float32))
    # Tensor-parallel layer: one phase from entering BOTH to the barrier after sync 2.
    phi = jnp.asarray(j, jnp.float32) / TP_GRID
    tf_e = roofline(*_ffn_work(spec, e, m * phi, n), e)
    tf_c = roofline(*_ffn_work(spec, c, m * (1.0 - phi), n), c, share)
    enter_up, enter_down = s_edge & has_c, s_cloud & has_e
    fin_e = jnp.where(enter_down, x_down, 0.0) + t_e
    fin_c = jnp.where(enter_up, x_up, 0.0) + t_c
    ready_e = jnp.where(has_c, jnp.maximum(fin_e, fin_c + x_down), fin_e)
    ready_c = jnp.where(has_e, jnp.maximum(fin_c, fin_e + x_up), fin_c)
    done_e, done_c = ready_e + tf_e, ready_c + tf_c
    tp_t = jnp.maximum(jnp.maximum(done_e, done_c + x_down), jnp.maximum(done_c, done_e + x_up))
    n_up = enter_up.astype(jnp.float32) + has_e + 1.0
    n_down = enter_down.astype(jnp.float32) + has_c + 1.0
    tp = _phase(tp_t, t_e + tf_e, xfer_time(n_up * msg, bw_up), n_up * msg, n_down * msg,
                (t_c + tf_c) * share, n_up + n_down)
    is_tp = f == TP
    zero = jnp.zeros_like(attn_t + ffn_t + tp_t)
    fields = [zero + jnp.where(is_tp, t, a + b) for a, b, t in zip(attn, ffn, tp, strict=True)]
    return Terms(*fields, acc_w=zero, mem=zero, mem_cloud=zero)


def _ffn_edge_share(f, j, m):
    """Fraction of the FFN's weights on the edge: 1, (m-1)/m for split, phi for tp, else 0."""
    phi = jnp.asarray(j, jnp.float32) / TP_GRID
    return jnp.select([f == EDGE, f == SPLIT, f == TP], [1.0, (m - 1.0) / m, phi], 0.0)


def structure_terms(k, f, spec: CostSpec, layer_head_cum, layer_ffn_w, j=0) -> tuple:
    """(acc_w, mem bytes) of a layer option: importance at edge precision and edge memory."""
    d, dh, m = spec.d_model, spec.head_dim, spec.n_ffn_mats
    g_e = (k + spec.group - 1) // spec.group
    ffn_frac = _ffn_edge_share(f, j, m)
    acc_w = layer_head_cum + ffn_frac * layer_ffn_w
    ctx_total = spec.prompt_tokens + spec.new_tokens
    mem = (spec.edge.weight_bytes * ((k + g_e) * 2.0 * d * dh + ffn_frac * m * d * spec.d_ff)
           + g_e * 2.0 * dh * ctx_total * spec.edge.kv_bytes)
    return acc_w, mem


def cloud_memory(k, f, spec: CostSpec, j=0):
    """Cloud memory (bytes) of a layer option: the cloud's heads and K/V heads and its share of
    the FFN at the cloud's weight precision, and its K/V cache for S + T tokens."""
    d, dh, m, c = spec.d_model, spec.head_dim, spec.n_ffn_mats, spec.cloud
    k_c = spec.n_heads - k
    g_c = spec.n_kv - k // spec.group
    ffn_frac = 1.0 - _ffn_edge_share(f, j, m)
    ctx_total = spec.prompt_tokens + spec.new_tokens
    return (c.weight_bytes * ((k_c + g_c) * 2.0 * d * dh + ffn_frac * m * d * spec.d_ff)
            + g_c * 2.0 * dh * ctx_total * c.kv_bytes)


def _passes(s_in, k, f, q, link, spec, j):
    """Prefill + T decode passes of one layer option, time-like terms combined."""
    s, t = spec.prompt_tokens, spec.new_tokens
    # Both passes through one traced pass_terms, batched over (tokens, context, K/V read):
    # half the ops to compile of two calls, the same arithmetic.
    n = jnp.stack(jnp.broadcast_arrays(*(jnp.asarray(x, jnp.float32) for x in (s, 1.0))))
    ctx = jnp.stack(jnp.broadcast_arrays(*(jnp.asarray(x, jnp.float32)
                                           for x in ((s + 1.0) / 2.0, s + (t + 1.0) / 2.0))))
    both = jax.vmap(lambda n, c, kv: pass_terms(s_in, k, f, q, link, spec, n, c, kv, j))(
        n, ctx, jnp.array([0.0, 1.0], jnp.float32))
    pre, dec = (jax.tree.map(lambda x, i=i: x[i], both) for i in (0, 1))
    fields = [a + t * b for a, b in zip(_fields(pre)[:7], _fields(dec)[:7], strict=True)]
    return fields + [pre.n_cross]


def layer_terms(s_in, k, f, q, link: LinkState, spec: CostSpec, head_cum_k, ffn_w,
                j=0) -> Terms:
    """All additive terms of one layer option over the whole request (broadcasts)."""
    acc_w, mem = structure_terms(k, f, spec, head_cum_k, ffn_w, j)
    mem_c = cloud_memory(k, f, spec, j)
    fields = _passes(s_in, k, f, q, link, spec, j)
    zero = jnp.zeros_like(fields[0] + acc_w + mem_c)
    return Terms(*(zero + x for x in fields), acc_w=zero + acc_w, mem=zero + mem,
                 mem_cloud=zero + mem_c)


def endpoint_terms(s0, s_last, link: LinkState, spec: CostSpec) -> Terms:
    """Embedding side s0, LM-head side s_last: prompt upload, LM head compute, token feedback
    before each decode step, final token delivery, embedding/LM-head memory (broadcasts).
    s_last == BOTH (the residual ends on both sides) runs the LM head on s0's side."""
    e, c, share = spec.edge, spec.cloud, link.cloud_share
    bw_up, bw_down = _bw(link)
    half_rtt = _lat0(link, spec)  # RTT/2 and the per-message software cost
    t = spec.new_tokens
    s_last = jnp.where(s_last == BOTH, s0, s_last)
    emb_params = spec.vocab * spec.d_model
    s0_cloud, sl_cloud = s0 == CLOUD, s_last == CLOUD
    prompt_bytes = spec.prompt_tokens * TOKEN_BYTES
    prompt_t = jnp.where(s0_cloud, half_rtt + xfer_time(prompt_bytes, bw_up), 0.0)
    lm_flops = 2.0 * emb_params
    lm_e = roofline(lm_flops, e.weight_bytes * emb_params, e)
    lm_c = roofline(lm_flops, c.weight_bytes * emb_params, c, share)
    lm_t = (t + 1.0) * jnp.where(sl_cloud, lm_c, lm_e)
    fb_up = s_last == EDGE  # feedback goes edge -> cloud when the LM head is on the edge
    fb_each = half_rtt + jnp.where(fb_up, xfer_time(TOKEN_BYTES, bw_up),
                                   xfer_time(TOKEN_BYTES, bw_down))
    differ = s0_cloud != sl_cloud
    fb_t = jnp.where(differ, t * fb_each, 0.0)
    last_t = jnp.where(sl_cloud, half_rtt + xfer_time(TOKEN_BYTES, bw_down), 0.0)
    latency = prompt_t + lm_t + fb_t + last_t
    up_bytes = jnp.where(s0_cloud, prompt_bytes, 0.0) + jnp.where(differ & fb_up,
                                                                   t * TOKEN_BYTES, 0.0)
    # Every generated token reaches the edge: the feedback tokens when the embedding is on the
    # edge, otherwise the T earlier tokens stream down (off the critical path), then the last.
    down_bytes = (jnp.where(differ & ~fb_up, t * TOKEN_BYTES, 0.0)
                  + jnp.where(s0_cloud & sl_cloud, t * TOKEN_BYTES, 0.0)
                  + jnp.where(sl_cloud, TOKEN_BYTES, 0.0))
    busy = jnp.where(sl_cloud, 0.0, lm_t)
    tx = xfer_time(up_bytes, bw_up)
    gpu = jnp.where(sl_cloud, lm_t, 0.0) * share
    n_emb = (~s0_cloud).astype(jnp.float32) + (~sl_cloud)
    n_emb_c = s0_cloud.astype(jnp.float32) + sl_cloud
    if spec.tied:
        n_emb = jnp.minimum(n_emb, 1.0)
        n_emb_c = jnp.minimum(n_emb_c, 1.0)
    mem = e.weight_bytes * emb_params * n_emb
    mem_c = c.weight_bytes * emb_params * n_emb_c
    idle = jnp.maximum(latency - busy - tx, 0.0)
    zero = jnp.zeros_like(latency)
    return Terms(latency, busy + zero, tx + zero, idle, up_bytes + zero, down_bytes + zero,
                 gpu + zero, zero, zero, mem + zero, mem_c + zero)


def sides(p: Partition):
    """int [L] residual side at each layer input, and the final side (EDGE, CLOUD or BOTH)."""
    s_out = jnp.select([p.ffn == EDGE, p.ffn == TP], [EDGE, BOTH], CLOUD)
    s0 = jnp.where(p.embed_edge, EDGE, CLOUD)
    s_in = jnp.concatenate([s0[None], s_out[:-1]])
    return s_in, s_out[-1]


def privacy_ok(p: Partition, spec: CostSpec):
    """Embedding and the first `privacy_layers` layers entirely on the edge."""
    floor = jnp.arange(spec.n_layers) < spec.privacy_layers
    on_edge = (p.edge_heads == spec.n_heads) & (p.ffn == EDGE)
    return jnp.all(on_edge | ~floor) & (p.embed_edge | (spec.privacy_layers == 0))


def total_terms(p: Partition, link: LinkState, spec: CostSpec) -> Terms:
    s_in, s_last = sides(p)
    head_cum_k = jnp.take_along_axis(spec.head_cum, p.edge_heads[:, None], axis=1)[:, 0]
    per_layer = layer_terms(s_in, p.edge_heads, p.ffn, p.act_prec, link, spec, head_cum_k,
                            spec.ffn_w, p.ffn_frac)
    summed = Terms(*(x.sum() for x in _fields(per_layer)))
    s0 = jnp.where(p.embed_edge, EDGE, CLOUD)
    return summed + endpoint_terms(s0, s_last, link, spec)


def costs_from_terms(tt: Terms, q, link: LinkState, spec: CostSpec, priv_ok) -> RequestCosts:
    e, c = spec.edge, spec.cloud
    energy = e.p_active * tt.busy + e.p_tx * tt.tx + e.p_idle * tt.idle
    cloud_cost = c.price_gpu_s * tt.gpu_s + c.price_byte * (tt.up_bytes + tt.down_bytes)
    accuracy = 100.0 * (spec.act_rel[q] * tt.n_cross + spec.weight_rel * tt.acc_w)
    memory_ok = tt.mem <= e.mem_budget
    cloud_ok = tt.mem_cloud <= c.mem_budget
    link_ok = jnp.isfinite(tt.latency)
    return RequestCosts(
        latency_s=tt.latency, energy_j=energy, cloud_cost=cloud_cost, accuracy_drop=accuracy,
        edge_memory_gb=tt.mem / 1e9, feasible=memory_ok & cloud_ok & link_ok & priv_ok,
        edge_compute_s=tt.busy, bytes_up=tt.up_bytes, bytes_down=tt.down_bytes,
        cloud_gpu_s=tt.gpu_s, n_crossings=tt.n_cross, memory_ok=memory_ok, link_ok=link_ok,
        privacy_ok=priv_ok, cloud_memory_gb=tt.mem_cloud / 1e9, cloud_memory_ok=cloud_ok)


def request_costs(p: Partition, link: LinkState, spec: CostSpec) -> RequestCosts:
    """Costs of one request under partition `p` (one sample; use jax.vmap for batches)."""
    return costs_from_terms(total_terms(p, link, spec), p.act_prec, link, spec,
                            privacy_ok(p, spec))


def _edge_only_pass(spec: CostSpec, n, ctx, kv_read):
    idle_link = LinkState(*(jnp.float32(x) for x in (1.0, 1.0, 0.0, 1.0)))  # unused: no crossing
    s_in, k, f = (jnp.int32(x) for x in (EDGE, spec.n_heads, EDGE))
    layer = pass_terms(s_in, k, f, 0, idle_link, spec, n, ctx, kv_read)
    emb_params = spec.vocab * spec.d_model
    lm = roofline(2.0 * emb_params, spec.edge.weight_bytes * emb_params, spec.edge)
    return spec.n_layers * layer.latency + lm


def decode_token_time(spec: CostSpec, context=None):
    """Seconds per generated token on the edge alone (edge-only partition): one decode pass over
    all layers at KV context `context` (default: the mean decode context S + (T+1)/2) plus one
    LM-head call. 1 / this is the decode rate in tokens/s."""
    ctx = spec.prompt_tokens + (spec.new_tokens + 1.0) / 2.0 if context is None else context
    return _edge_only_pass(spec, 1.0, ctx, 1.0)


def prefill_time(spec: CostSpec):
    """Seconds of the edge-only prefill pass over the S prompt tokens (all layers and one
    LM-head call); S / this is the prefill rate in tokens/s."""
    s = spec.prompt_tokens
    return _edge_only_pass(spec, s, (s + 1.0) / 2.0, 0.0)
