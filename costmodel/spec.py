"""CostSpec: everything the JAX cost functions need about one (model, edge, cloud, workload),
as a pytree whose array leaves can be vmapped (scenarios as data) and whose sizes are static.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from costmodel.accuracy import AccuracyProfile, accuracy_profile
from costmodel.cards import ModelCard, get_card
from costmodel.link import InputError, Workload
from costmodel.partition import ACT_BYTES
from costmodel.profiles import DeviceProfile, ProfileParams, get_profile


@struct.dataclass
class CostSpec:
    """Static sizes of the card and dynamic constants (profiles, workload, accuracy terms).

    head_cum: float [L, H+1]; head_cum[l, k] = importance weight of the k heads of layer l that
      go to the edge for a count k (least important first; for grouped-query attention the
      K/V groups are packed contiguously, least important group first, so that a count k
      spans ceil(k / group) groups on the edge).
    ffn_w: float [L] FFN importance weight; act_rel: float [3] per-crossing cost by precision;
    weight_rel: scalar cost of all blocks at the edge weight precision.
    """

    edge: ProfileParams
    cloud: ProfileParams
    head_cum: jnp.ndarray
    ffn_w: jnp.ndarray
    act_rel: jnp.ndarray
    weight_rel: jnp.ndarray
    act_bytes: jnp.ndarray
    prompt_tokens: jnp.ndarray
    new_tokens: jnp.ndarray
    n_layers: int = struct.field(pytree_node=False)
    n_heads: int = struct.field(pytree_node=False)
    n_kv: int = struct.field(pytree_node=False)
    d_model: int = struct.field(pytree_node=False)
    head_dim: int = struct.field(pytree_node=False)
    d_ff: int = struct.field(pytree_node=False)
    n_ffn_mats: int = struct.field(pytree_node=False)
    vocab: int = struct.field(pytree_node=False)
    tied: bool = struct.field(pytree_node=False)
    # int32 scalar, data rather than static: specs of one card with different floors share
    # every compiled program and stack into one batch
    privacy_layers: jnp.ndarray = 0

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv

    @property
    def msg_overhead_s(self):
        """Software cost of one message over the link: the sender's plus the receiver's."""
        return self.edge.msg_overhead_s + self.cloud.msg_overhead_s


def edge_head_order(head_w: np.ndarray, group: int) -> np.ndarray:
    """int [L, H]: the order in which heads move to the edge as the count grows.

    Groups of `group` query heads sharing a K/V head are kept contiguous (a count k then uses
    ceil(k/group) K/V heads on the edge); groups go least important first, heads inside a group
    least important first. With group == 1 this is the plain ascending importance order of the
    exchange argument (proofs/oracle.md).
    """
    n_layers, n_heads = head_w.shape
    order = np.empty((n_layers, n_heads), dtype=np.int64)
    for layer in range(n_layers):
        w = head_w[layer].reshape(n_heads // group, group)
        groups = np.argsort(w.sum(1), kind="stable")
        inner = np.argsort(w, axis=1, kind="stable")
        order[layer] = np.concatenate([g * group + inner[g] for g in groups])
    return order


def make_spec(model: str | ModelCard, device: str | DeviceProfile,
              cloud: str | DeviceProfile = "datacenter", workload: Workload | None = None,
              privacy_layers: int = 0, accuracy: AccuracyProfile | None = None) -> CostSpec:
    """Build the spec; names are looked up in the registries (unknown names list valid ones)."""
    card = get_card(model) if isinstance(model, str) else model
    edge = get_profile(device, "edge") if isinstance(device, str) else device
    cld = get_profile(cloud, "cloud") if isinstance(cloud, str) else cloud
    workload = workload or Workload()
    if isinstance(privacy_layers, bool) or not 0 <= privacy_layers <= card.n_layers:
        raise InputError(f"privacy_layers must be in [0, {card.n_layers}], got {privacy_layers}")
    acc = accuracy or accuracy_profile(card)
    order = edge_head_order(acc.head_w, card.group_size)
    sorted_w = np.take_along_axis(acc.head_w, order, axis=1)
    head_cum = np.concatenate([np.zeros((card.n_layers, 1)), np.cumsum(sorted_w, 1)], 1)
    f = jnp.float32
    return CostSpec(
        edge=edge.params(), cloud=cld.params(), head_cum=jnp.asarray(head_cum, f),
        ffn_w=jnp.asarray(acc.ffn_w, f), act_rel=jnp.asarray(acc.act_rel, f),
        weight_rel=f(acc.weight_cost(edge.weight_bits)), act_bytes=jnp.asarray(ACT_BYTES, f),
        prompt_tokens=f(workload.prompt_tokens), new_tokens=f(workload.new_tokens),
        n_layers=card.n_layers, n_heads=card.n_heads, n_kv=card.n_kv_heads,
        d_model=card.d_model, head_dim=card.head_dim, d_ff=card.d_ff,
        n_ffn_mats=card.n_ffn_mats, vocab=card.vocab, tied=card.tied_embeddings,
        privacy_layers=np.int32(privacy_layers))
