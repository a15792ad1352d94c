"""The committed SmolLM2-135M accuracy measurement has the schema the cost model reads.

Needs neither torch nor the model: it only reads costmodel/data/accuracy/smollm2-135m.json.
"""

import json
import math
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "costmodel/data/accuracy/smollm2-135m.json"
L, H = 30, 9


def test_accuracy_json_schema():
    d = json.loads(PATH.read_text())
    for key in (
        "model", "text_source", "tokens", "baseline_ppl", "act_crossing_rel",
        "act_crossing_curve", "weight_rel", "head_importance", "ffn_importance", "method",
    ):  # fmt: skip
        assert key in d, key
    assert d["model"] == "smollm2-135m"
    assert 1024 <= d["tokens"] <= 2048
    assert 1.0 < d["baseline_ppl"] < 100.0
    assert set(d["act_crossing_rel"]) == {"fp16", "int8", "int4"}
    assert set(d["weight_rel"]) == {"8", "4"}
    for prec, curve in d["act_crossing_curve"].items():
        assert [n for n, _ in curve] == [1, 2, 4, 8, 16], prec
    assert len(d["head_importance"]) == L and all(len(r) == H for r in d["head_importance"])
    assert len(d["ffn_importance"]) == L
    values = [v for r in d["head_importance"] for v in r] + d["ffn_importance"]
    assert all(math.isfinite(v) and v > -0.1 for v in values)


def test_accuracy_json_orders_precisions():
    # int4 crossings cost far more than fp16 ones; 4-bit weights more than 8-bit weights
    d = json.loads(PATH.read_text())
    rel = d["act_crossing_rel"]
    assert rel["int4"] > 0.01 > abs(rel["fp16"])
    assert d["weight_rel"]["4"] > d["weight_rel"]["8"]
