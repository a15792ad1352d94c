"""Inputs and outputs of the exported policy (``bridge.torch_policy.TorchPolicy``, its ONNX
graph from ``bridge.export``), batch first, in argument order. Torch-free, so that the
exporter, the torch module and their callers share the names without importing each other.
Design: ``docs/design.md §4.5``.

Inputs: the observation features (``agents.networks.Features``: ``scalars``, ``history``) and
the mask context (``agents.actions.MaskContext``: ``layer_mem``, ``emb_mem``, ``budget``,
``outage``). Outputs: the raw network outputs (high-level logits, the low-level logits under
the greedy high-level choice, the transition logits, the value) and the greedy action's fields
(``agents.networks.greedy``).
"""

INPUT_NAMES = ("scalars", "history", "layer_mem", "emb_mem", "budget", "outage")
OUTPUT_NAMES = ("high_logits", "low_logits", "trans_logits", "value", "embed", "modes", "prec",
                "low", "cut")
FLOAT_OUTPUTS = OUTPUT_NAMES[:4]
ACTION_OUTPUTS = OUTPUT_NAMES[4:]
