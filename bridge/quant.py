"""Fake quantization: activations crossing the link, and edge weights.
Design: ``docs/design.md §2.3``.

- ``cross(x, precision)``: what the receiving side sees after a tensor crosses the link.
  ``fp32`` is the identity, ``fp16`` a round trip through float16, ``int8`` / ``int4``
  group-wise symmetric absmax quantization (one scale per ``cross_group(width)`` consecutive
  channels of the last axis: 64 for SmolLM2's 576- and 1536-wide tensors, as tensor-parallel
  runtimes scale their sync buffers; levels ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, round half to
  even) followed by dequantization.
- ``fake_quant_weight(w, bits, group)``: group-wise symmetric absmax weight quantization along
  the input axis (the last axis of an ``[out, in]`` matrix), groups of ``group`` weights.

All functions are pure and return a new float tensor of the input's dtype and shape.
"""

from __future__ import annotations

import torch

from bridge.wire import cross_group

PRECISIONS = ("fp32", "fp16", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
# Bytes per element on the wire (scales not included; the cost model adds them).
BYTES_PER_ELEMENT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
def absmax_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric absmax quantize-dequantize with one scale per row (last axis).

    ``q = round(x / s)``, ``s = max|x_row| / (2^(bits-1) - 1)``; all-zero rows stay zero.
    """
    qmax = 2 ** (bits - 1) - 1
    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = amax / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(x / safe), -qmax, qmax)
    return torch.where(scale > 0, q * safe, torch.zeros_like(x))


def cross(x: torch.Tensor, precision: str) -> torch.Tensor:
    """The tensor as received after crossing the link at ``precision``.

    Group-wise scaling: ``x`` is ``[..., tokens, features]`` and each run of
    ``cross_group(features)`` channels of a token gets its own scale for int8 / int4.
    """
    if precision == "fp32":
        return x
    if precision == "fp16":
        return x.to(torch.float16).to(x.dtype)
    if precision in BITS:
        w = x.shape[-1] if x.dim() else 1
        g = cross_group(w)
        y = absmax_fake_quant(x.reshape(*x.shape[:-1], w // g, g), BITS[precision])
        return y.reshape(x.shape)
    raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")


def fake_quant_weight(w: torch.Tensor, bits: int, group: int = 32) -> torch.Tensor:
    """Group-wise symmetric absmax quantize-dequantize of a weight ``[out, in]``.

    The input axis is cut into consecutive groups of ``group`` weights (``in`` must be a
    multiple of ``group``); each group gets ``s = max|w_group| / (2^(bits-1) - 1)``.
    """
    out_dim, in_dim = w.shape
    if in_dim % group:
        raise ValueError(f"input width {in_dim} is not a multiple of the group size {group}")
    g = w.reshape(out_dim, in_dim // group, group)
    return absmax_fake_quant(g, bits).reshape(out_dim, in_dim)


def wire_bytes(n_elements: int, precision: str, row_width: int | None = None) -> float:
    """Bytes on the wire for ``n_elements`` at ``precision`` (+ one float32 scale per group of
    ``cross_group(row_width)`` channels, as ``bridge.wire`` sends them)."""
    payload = n_elements * BYTES_PER_ELEMENT[precision]
    if precision in BITS and row_width:
        payload += 4.0 * (n_elements // cross_group(row_width))
    return payload
