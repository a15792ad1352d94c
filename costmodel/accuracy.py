"""Accuracy-degradation terms of the cost model.

The accuracy drop of a request, in relative perplexity increase (percent), is
    100 * ( act_rel[q] * n_crossings + weight_rel[edge bits] * sum_{edge blocks} w_b ),
where `w_b` are block importance weights normalized to sum to 1 over all head and FFN blocks,
`act_rel[q]` is the measured relative cost of one activation crossing at precision q, and
`weight_rel[bits]` the relative cost of running every block at the edge weight precision.

Sources, in order of preference:
1. a measurement of the model itself by the torch bridge (`data/accuracy/<model>.json`);
2. for other cards: the SmolLM2-135M measurement transferred (per-crossing cost as measured;
   per-layer importance profile resampled to the card's depth; within-layer head importance
   spread by quantiles) with the weight-quantization cost from published llama.cpp tables
   (`data/accuracy/literature.json`);
3. without any measurement: uniform importance by parameter count and the stated priors.

The crossing term is linear in the number of crossings so that the per-request objective stays
additive over layers (the exact DP needs that). The bridge measured SmolLM2's perplexity as
(1 + c)^n - 1 in n crossings; we use its c per crossing, which is exact for one crossing and an
underestimate for many int4 crossings (int4 crossings are nearly unusable on SmolLM2 anyway:
+49% perplexity for one crossing, caused by a few huge residual activations).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from costmodel.cards import ModelCard, get_card
from costmodel.partition import ACT_PRECISIONS

DATA = Path(__file__).parent / "data" / "accuracy"


@dataclasses.dataclass(frozen=True)
class AccuracyProfile:
    """act_rel: float [3] per-crossing cost by ACT_PRECISIONS; weight_rel: {bits: cost};
    head_w: float [L, H] and ffn_w: float [L] importance weights (sum of all = 1);
    source: where the numbers come from."""

    act_rel: np.ndarray
    weight_rel: dict
    head_w: np.ndarray
    ffn_w: np.ndarray
    source: str

    def weight_cost(self, bits: float) -> float:
        """Relative cost of all blocks at `bits` per weight (>= 16 bits: no cost)."""
        if bits >= 16:
            return 0.0
        known = sorted((int(b), v) for b, v in self.weight_rel.items())
        usable = [v for b, v in known if b <= bits]
        if not usable:
            raise ValueError(f"no accuracy measurement for {bits}-bit edge weights; "
                             f"known: {[b for b, _ in known]}")
        return float(usable[-1])


def _load(name: str) -> dict | None:
    path = DATA / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _nonneg(values) -> np.ndarray:
    """Measured costs below zero are measurement noise (a quantizer cannot help on average)."""
    return np.maximum(np.asarray(values, float), 0.0)


def _normalize(head: np.ndarray, ffn: np.ndarray):
    head = np.clip(np.asarray(head, float), 1e-12, None)
    ffn = np.clip(np.asarray(ffn, float), 1e-12, None)
    total = head.sum() + ffn.sum()
    return head / total, ffn / total


def _resample_rows(x: np.ndarray, n: int) -> np.ndarray:
    src = np.linspace(0.0, 1.0, x.shape[0])
    dst = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(dst, src, x[:, j]) for j in range(x.shape[1])], axis=1)


def accuracy_profile(card: ModelCard) -> AccuracyProfile:
    """The best available accuracy terms for `card` (see module docstring)."""
    lit = json.loads((DATA / "literature.json").read_text())
    own = _load(card.name)
    if own is not None:
        head, ffn = _normalize(own["head_importance"], own["ffn_importance"])
        act = _nonneg([own["act_crossing_rel"][p] for p in ACT_PRECISIONS])
        weight_rel = {b: max(float(v), 0.0) for b, v in own["weight_rel"].items()}
        return AccuracyProfile(act, weight_rel, head, ffn,
                               f"measured on {card.name} by the torch bridge")
    smol = _load("smollm2-135m")
    weight_rel = lit["weight_rel"].get(card.name, lit["weight_rel"]["llama-7b"])
    if smol is not None:
        # Layer profile: mean head importance and FFN importance per layer, resampled in depth.
        h_imp = np.asarray(smol["head_importance"], float)
        f_imp = np.asarray(smol["ffn_importance"], float)
        per_layer = _resample_rows(np.stack([h_imp.mean(1), f_imp], 1), card.n_layers)
        # Within-layer spread of head importance: quantiles of the measured layers' heads,
        # relative to the layer mean.
        rel = np.sort(h_imp / h_imp.mean(1, keepdims=True), axis=1).mean(0)
        spread = np.interp(np.linspace(0, 1, card.n_heads), np.linspace(0, 1, rel.size), rel)
        # FFN-vs-head importance follows the FFN/head parameter ratio of the target card.
        smol_card = get_card("smollm2-135m")
        scale = _ffn_head_ratio(card) / _ffn_head_ratio(smol_card)
        head, ffn = _normalize(per_layer[:, :1] * spread[None, :], per_layer[:, 1] * scale)
        act = _nonneg([smol["act_crossing_rel"][p] for p in ACT_PRECISIONS])
        return AccuracyProfile(act, weight_rel, head, ffn,
                               "transferred from the SmolLM2-135M bridge measurement; weight "
                               "costs from llama.cpp perplexity tables")
    head = np.full((card.n_layers, card.n_heads),
                   card.head_params + card.kv_group_params / card.group_size)
    ffn = np.full(card.n_layers, float(card.ffn_params))
    head, ffn = _normalize(head, ffn)
    prior = lit["act_crossing_rel_prior"]
    act = np.array([prior[p] for p in ACT_PRECISIONS])
    return AccuracyProfile(act, weight_rel, head, ffn,
                           "priors: importance by parameter count; crossing costs assumed")



def _ffn_head_ratio(card: ModelCard) -> float:
    """Parameters of one FFN block over those of one head (with its K/V share)."""
    return card.ffn_params / (card.head_params + card.kv_group_params / card.group_size)
