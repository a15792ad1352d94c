"""Block timing: CSV columns, one row per block and token count, positive times."""

import csv

import pytest

torch = pytest.importorskip("torch")

from bridge.gguf_loader import LlamaConfig  # noqa: E402
from bridge.model import random_model  # noqa: E402
from bridge.timing import CSV_COLUMNS, median_seconds, time_blocks, write_csv  # noqa: E402

TINY = LlamaConfig(
    n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_model=32, d_ff=64, vocab_size=100
)


def test_csv_columns_and_positive_times(tmp_path):
    threads_before = torch.get_num_threads()
    rows = time_blocks(random_model(TINY), token_counts=(1, 8), warmup=1, repeats=3, threads=1)
    path = write_csv(rows, tmp_path / "t.csv")
    with path.open() as f:
        reader = csv.DictReader(f)
        assert (
            tuple(reader.fieldnames)
            == CSV_COLUMNS
            == ("block", "side", "tokens", "precision", "seconds")
        )
        got = list(reader)
    blocks = {f"attn_k{k}" for k in range(1, 5)} | {
        "ffn_w1",
        "ffn_w2",
        "ffn",
        "lm_head",
        "embedding",
    }
    assert len(got) == 2 * len(blocks)
    assert {r["block"] for r in got} == blocks
    assert {int(r["tokens"]) for r in got} == {1, 8}
    assert {r["side"] for r in got} == {"edge"} and {r["precision"] for r in got} == {"fp32"}
    assert all(float(r["seconds"]) > 0 for r in got)
    assert torch.get_num_threads() == threads_before  # the thread setting is restored


def test_median_of_repeats():
    calls = []
    assert median_seconds(lambda: calls.append(1), warmup=2, repeats=3) >= 0
    assert len(calls) == 5  # 2 warm-up + 3 timed
