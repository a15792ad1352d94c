"""The actor-critic's initial weights: variance scaling of each layer's gain (a kernel of gain
g has standard deviation g / sqrt(fan_in)), truncated at two standard deviations of the
underlying normal, zero biases, drawn from the key (one draw for all kernels)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from agents.actions import make_space
from agents.networks import _TRUNC_STD, ActorCritic, NetConfig
from tests.agents.small import CFG, SCENARIO

GAINS = {"torso1": 2**0.5, "torso2": 2**0.5, "high": 0.01, "low1": 2**0.5, "low2": 0.01,
         "critic1": 2**0.5, "critic2": 1.0, "conv1": 1.0, "conv2": 1.0}


def _model(seed: int) -> ActorCritic:
    params = SCENARIO.build()
    space = make_space(params.spec, CFG.action, params.precisions)
    net = NetConfig(hidden=128, low_hidden=128, conv_channels=16)
    return ActorCritic(space, 40, 12, 5, net, nnx.Rngs(seed))


def test_kernels_have_the_variance_of_their_gain_and_biases_are_zero():
    model = _model(0)
    for name, gain in GAINS.items():
        layer = getattr(model, name)
        w = np.asarray(layer.kernel[...])
        fan_in = w.size // w.shape[-1]
        std = gain / np.sqrt(fan_in)
        # truncated at +-2 standard deviations of the normal before scaling
        assert np.abs(w).max() <= 2.0 * std / _TRUNC_STD * (1 + 1e-6), name
        if w.size >= 1000:  # the sample standard deviation within 10% (n >= 1000 draws)
            assert abs(w.std() / std - 1.0) < 0.1, (name, w.std(), std)
        assert not np.any(np.asarray(layer.bias[...])), name


def test_layers_and_keys_draw_different_weights():
    a, b = _model(0), _model(1)
    wa = np.asarray(a.torso2.kernel[...])
    assert not np.allclose(wa, np.asarray(b.torso2.kernel[...]))
    # one draw sliced per layer: no two layers of one model share their leading values
    wc = np.asarray(a.critic1.kernel[...])
    assert not np.allclose(wa.ravel()[:100], wc.ravel()[:100])
    same = _model(0)
    np.testing.assert_array_equal(wa, np.asarray(same.torso2.kernel[...]))
