"""Perplexity measurement: text source, NLL arithmetic, fits, and measure() on a tiny model."""

import math

import pytest

torch = pytest.importorskip("torch")

from bridge.gguf_loader import LlamaConfig  # noqa: E402
from bridge.model import ActQuantPlan, random_model  # noqa: E402
from bridge.perplexity import (  # noqa: E402
    STDLIB_MODULES,
    crossing_layers,
    fit_per_crossing,
    fit_per_crossing_linear,
    layer_inputs,
    measure,
    perplexity_from_hidden,
    stdlib_docstring_text,
    sum_nll,
    token_windows,
)

TINY = LlamaConfig(
    n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8, d_model=32, d_ff=64, vocab_size=50
)


def test_text_is_deterministic_english_from_the_stdlib():
    text = stdlib_docstring_text()
    assert text == stdlib_docstring_text()
    assert text.startswith(__import__(STDLIB_MODULES[0]).__doc__.strip()[:40])
    assert len(text.split()) > 2000  # enough for 1024-2048 tokens
    assert " the " in text and " of " in text


def test_token_windows_shape_and_shortage():
    w = token_windows(list(range(10)), 2, 4)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError):
        token_windows(list(range(7)), 2, 4)


def test_sum_nll_uniform_logits():
    # uniform logits over V = 8: each of the 2 x 3 predictions costs log 8
    logits = torch.zeros(2, 4, 8)
    tokens = torch.randint(0, 8, (2, 4))
    assert sum_nll(logits, tokens) == pytest.approx(6 * math.log(8))


def test_crossing_layers_spread_evenly():
    assert crossing_layers(1, 30) == [15]
    assert crossing_layers(2, 30) == [7, 22]
    assert crossing_layers(16, 30) == sorted(set(crossing_layers(16, 30)))  # distinct


def test_fits_hand_worked():
    # additive: rel = 0.01 n exactly -> slope 0.01
    assert fit_per_crossing_linear([(1, 0.01), (2, 0.02), (4, 0.04)]) == pytest.approx(0.01)
    # multiplicative: ppl ratio 1.5^n -> c = 0.5 exactly
    curve = [(n, 1.5**n - 1) for n in (1, 2, 4, 8)]
    assert fit_per_crossing(curve) == pytest.approx(0.5)
    # for small costs the two fits agree
    small = [(n, 1e-4 * n) for n in (1, 2, 4)]
    assert fit_per_crossing(small) == pytest.approx(fit_per_crossing_linear(small), rel=1e-3)


def test_prefix_cache_gives_the_same_perplexity():
    torch.set_num_threads(1)
    m = random_model(TINY, seed=1)
    tokens = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    hidden = layer_inputs(m, tokens)
    plan = ActQuantPlan(head_output={(2, 1): "int4"})
    full = perplexity_from_hidden(m, tokens, hidden[0], 0, plan)
    assert perplexity_from_hidden(m, tokens, hidden[2], 2, plan) == pytest.approx(full, rel=1e-5)
    logits = m.forward(tokens)
    want = math.exp(sum_nll(logits, tokens) / (2 * 11))
    assert perplexity_from_hidden(m, tokens, hidden[0]) == pytest.approx(want, rel=1e-5)


def test_measure_schema_and_interpolation():
    m = random_model(TINY, seed=2)
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    res = measure(m, tokens, head_layers=[0, 3])
    assert set(res["act_crossing_rel"]) == {"fp16", "int8", "int4"}
    assert [n for n, _ in res["act_crossing_curve"]["int8"]] == [1, 2, 4]  # n <= L only
    assert set(res["weight_rel"]) == {"8", "4"}
    heads = res["head_importance"]
    assert len(heads) == 4 and all(len(r) == 4 for r in heads)
    # layers 1, 2 interpolated linearly between measured layers 0 and 3
    for h in range(4):
        assert heads[1][h] == pytest.approx(heads[0][h] + (heads[3][h] - heads[0][h]) / 3)
    assert len(res["ffn_importance"]) == 4
    assert res["baseline_ppl"] > 1
