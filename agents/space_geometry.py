"""The sizes and option tables of the learned policies' action spaces (docs/design.md §4.5),
in NumPy only.

Two classes describe an action space: ``agents.actions.ActionSpace`` (the JAX agents) and
``bridge.torch_policy.PolicyConfig`` (the exported torch/ONNX policy, which must run on an
edge without JAX). Both derive their sizes from ``SpaceGeometry`` here, so a change of the
option layout is written once. The FFN side codes repeat ``costmodel.partition``'s (that
module imports JAX); ``tests/agents/test_tp.py`` checks they are equal.
"""

from __future__ import annotations

import numpy as np

FFN_EDGE, FFN_CLOUD, FFN_TP = 0, 1, 3  # costmodel.partition.EDGE, CLOUD, TP


class SpaceGeometry:
    """Mixin over an action space with attributes ``tp`` (bool), ``phi_grid`` (the tp
    shares, tuple of int), ``head_counts`` (tuple of int), ``n_layers`` and ``n_groups``."""

    @property
    def n_bins(self) -> int:
        return len(self.head_counts)

    @property
    def n_ffn(self) -> int:
        """FFN options of a layer: edge, cloud, split, and with tp one per share of phi_grid."""
        return 3 + len(self.phi_grid) if self.tp else 3

    @property
    def n_modes(self) -> int:
        """Group modes of the high level: edge, cloud, split, and tp with tp."""
        return 4 if self.tp else 3

    @property
    def n_states(self) -> int:
        """Residual side states of the low level's chain: edge, cloud, and both with tp."""
        return 3 if self.tp else 2

    @property
    def n_low(self) -> int:
        """Joint per-layer options (head count bin x FFN option)."""
        return self.n_ffn * self.n_bins

    @property
    def n_cuts(self) -> int:
        return self.n_layers + 2

    @property
    def n_high(self) -> int:
        """Size of the flat high-level output: 2 + MG + 3 + (L + 2) + M^2 (M = n_modes)."""
        m = self.n_modes
        return 2 + m * self.n_groups + 3 + self.n_cuts + m * m

    @property
    def full_edge(self) -> int:
        """Joint index of (H heads, FFN edge)."""
        return self.n_ffn * (self.n_bins - 1) + FFN_EDGE

    @property
    def full_cloud(self) -> int:
        """Joint index of (0 heads, FFN cloud)."""
        return FFN_CLOUD

    def ffn_options(self):
        """(int [F] FFN side, int [F] tp share ffn_frac, bool [F] is tp) of the FFN options."""
        o = np.arange(self.n_ffn)
        grid = np.asarray((0,) + tuple(self.phi_grid), np.int32)
        is_tp = o >= 3
        return (np.where(is_tp, FFN_TP, o).astype(np.int32),
                np.where(is_tp, grid[np.maximum(o - 2, 0)], 0).astype(np.int32), is_tp)

    def low_options(self):
        """(int [n_low] FFN side, int [n_low] ffn_frac, bool [n_low] is tp) of the joint
        options b * F + o."""
        f, j, is_tp = self.ffn_options()
        return np.tile(f, self.n_bins), np.tile(j, self.n_bins), np.tile(is_tp, self.n_bins)
