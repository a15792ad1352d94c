"""Small model cards and specs shared by the agent tests."""

from __future__ import annotations

import dataclasses

from costmodel.cards import ModelCard
from costmodel.costs import total_terms
from costmodel.link import make_link
from costmodel.profiles import get_profile
from costmodel.spec import make_spec
from tests.partitions import all_partitions  # noqa: F401  (re-exported for the agent tests)

TINY = ModelCard("tiny-3x2", 3, 2, 2, 256, 1024, 500, "gelu", False)


def full_edge_mem(spec) -> float:
    from costmodel.partition import edge_only

    p = edge_only(spec.n_layers, spec.n_heads)
    return float(total_terms(p, make_link(10.0, 10.0), spec).mem)


def tight_spec(card=TINY, frac=0.45, privacy_layers=0, device="rpi5", tied=None):
    """A spec whose edge memory budget is `frac` of the edge-only memory of `card`."""
    if tied is not None:
        card = dataclasses.replace(card, tied_embeddings=tied)
    base = make_spec(card, device)
    budget_gb = frac * full_edge_mem(base) / 1e9
    prof = dataclasses.replace(get_profile(device), name="tight", mem_budget_gb=budget_gb)
    return make_spec(card, prof, privacy_layers=privacy_layers)
