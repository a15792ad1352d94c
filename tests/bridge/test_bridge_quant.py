"""Quantizers of the link crossing and of the edge weights: hand-worked values and bounds."""

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bridge.quant import cross, fake_quant_weight, wire_bytes  # noqa: E402


def test_int8_hand_worked():
    # absmax 1.0 -> scale 1/127; x*127 = [127, -76.2, 31.75, 12.7] -> [127, -76, 32, 13]
    x = torch.tensor([[1.0, -0.6, 0.25, 0.1]])
    want = torch.tensor([[127.0, -76.0, 32.0, 13.0]]) / 127.0
    torch.testing.assert_close(cross(x, "int8"), want, rtol=0, atol=1e-7)


def test_int4_hand_worked():
    # absmax 1.0 -> scale 1/7; x*7 = [7, -4.2, 1.75, 0.7] -> [7, -4, 2, 1]
    x = torch.tensor([[1.0, -0.6, 0.25, 0.1]])
    want = torch.tensor([[7.0, -4.0, 2.0, 1.0]]) / 7.0
    torch.testing.assert_close(cross(x, "int4"), want, rtol=0, atol=1e-7)


def test_per_token_scales_are_independent():
    # row 0 absmax 2 (scale 2/7), row 1 absmax 0.07 (scale 0.01): each keeps its resolution
    x = torch.tensor([[2.0, 1.2], [0.07, 0.03]])
    want = torch.tensor([[2.0, 4 * 2 / 7], [0.07, 0.03]])  # 1.2*7/2 = 4.2 -> 4; 0.03/0.01 = 3
    torch.testing.assert_close(cross(x, "int4"), want, rtol=0, atol=1e-7)


def test_zero_row_and_fp_precisions():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.1, 1.0, -3.0]])
    assert torch.equal(cross(x, "int8")[0], torch.zeros(3))
    assert torch.equal(cross(x, "fp32"), x)
    # 0.1 in float16 is 0.0999755859375 (= 1638.4 rounded to 1638 over 2^14)
    assert cross(x, "fp16")[1, 0].item() == 0.0999755859375
    with pytest.raises(ValueError):
        cross(x, "int2")


def test_weight_groups_hand_worked():
    # group 4, 4 bits. Group 1 absmax 4 -> s = 4/7, w/s = [1.75, 3.85, 5.25, 7] -> [2, 4, 5, 7]
    # Group 2 absmax 0.5 -> s = 0.5/7, w/s = [7, 1.4, 0, -2.8] -> [7, 1, 0, -3]
    w = torch.tensor([[1.0, 2.2, 3.0, 4.0, 0.5, 0.1, 0.0, -0.2]])
    want = torch.tensor([[8 / 7, 16 / 7, 20 / 7, 4.0, 0.5, 0.5 / 7, 0.0, -1.5 / 7]])
    torch.testing.assert_close(fake_quant_weight(w, 4, group=4), want, rtol=0, atol=1e-7)
    with pytest.raises(ValueError):
        fake_quant_weight(w, 4, group=3)


def test_wire_bytes():
    # 576 int4 values = 288 bytes + one float32 scale per 64 channels (9 groups) = 324
    assert wire_bytes(576, "int4", 576) == 324.0
    assert wire_bytes(2 * 576, "int8", 576) == 2 * 576 + 2 * 9 * 4.0
    assert wire_bytes(576, "fp16", 576) == 1152.0


def test_group_wise_crossing_matches_the_wire_and_bounds_each_group():
    """int8 / int4 crossings scale every 64 channels on their own (SmolLM2's 576 and 1536;
    32 or the whole row for other widths): bit for bit what bridge.wire decodes, and a
    group's error is bounded by its own absmax, not the row's."""
    import numpy as np

    from bridge import wire
    from bridge.wire import cross_group

    assert [cross_group(w) for w in (576, 1536, 96, 32, 20)] == [64, 64, 32, 32, 20]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 576)).astype(np.float32)
    x[..., :64] *= 100.0  # one loud group
    for prec, qmax in (("int8", 127), ("int4", 7)):
        got = cross(torch.from_numpy(x), prec).numpy()
        np.testing.assert_array_equal(got, wire.fake_quantize(x, prec))
        quiet = np.abs(got[..., 64:] - x[..., 64:]).max()
        assert quiet <= np.abs(x[..., 64:]).max() / qmax / 2 + 1e-6


@settings(max_examples=50, deadline=None)
@given(
    # subnormal inputs excluded: an absmax below ~1e-36 underflows the scale (the element is
    # then sent as 0, an error far below the bound's 1e-30 slack, but not "kept exactly")
    st.lists(st.floats(-1e4, 1e4, width=32, allow_subnormal=False), min_size=1, max_size=16),
    st.sampled_from(["int8", "int4"]),
)
def test_error_at_most_half_a_step(values, precision):
    # |x - q(x)| <= s/2 with s = absmax / qmax, and q keeps the absmax element exactly
    x = torch.tensor([values])
    qmax = 127 if precision == "int8" else 7
    amax = x.abs().max()
    err = (cross(x, precision) - x).abs().max()
    assert err <= amax / qmax / 2 * (1 + 1e-5) + 1e-30
    i = x.abs().argmax()
    torch.testing.assert_close(cross(x, precision)[0, i], x[0, i], rtol=1e-6, atol=0)
