"""The one partition enumerator of the tests: every partition of a tiny card, for brute force."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from costmodel.partition import TP, Partition


def all_partitions(n_layers: int, n_heads: int, precisions=(0, 1, 2),
                   tp_shares=()) -> Partition:
    """Every (edge_heads [L], ffn [L], act_prec, embed_edge, ffn_frac [L]) of a card with
    ``n_layers`` layers of ``n_heads`` heads, stacked: (H+1)^L * (3 + len(tp_shares))^L
    head/FFN choices x precisions x 2 embedding sides, where ``tp_shares`` lists the tp shares
    (sixteenths of d_ff on the edge) to include. Order: layer options (lexicographic), then
    precision, then embedding (edge first)."""
    ffn_opts = [(f, 0) for f in range(3)] + [(TP, j) for j in tp_shares]
    opts = [(k, f, j) for k in range(n_heads + 1) for f, j in ffn_opts]
    rows = [(layers, q, emb) for layers in itertools.product(opts, repeat=n_layers)
            for q in precisions for emb in (True, False)]
    heads = np.array([[o[0] for o in layers] for layers, _, _ in rows], np.int32)
    ffn = np.array([[o[1] for o in layers] for layers, _, _ in rows], np.int32)
    frac = np.array([[o[2] for o in layers] for layers, _, _ in rows], np.int32)
    return Partition(jnp.asarray(heads), jnp.asarray(ffn),
                     jnp.asarray([q for _, q, _ in rows], jnp.int32),
                     jnp.asarray([e for _, _, e in rows]), jnp.asarray(frac))
