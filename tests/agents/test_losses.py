"""GAE and the PPO losses: hand-worked values, scan vs a Python loop, jit vs no jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.losses import clipped_surrogate, gae, ppo_loss, value_loss


def test_gae_hand_worked():
    # T = 3, gamma = 0.9, lambda = 0.8 (gamma * lambda = 0.72), v_last = 2.0
    # delta_2 = 3 + 0.9 * 2.0 - 1.5 = 3.3
    # delta_1 = 2 + 0.9 * 1.5 - 1.0 = 2.35
    # delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4
    # A_2 = 3.3; A_1 = 2.35 + 0.72 * 3.3 = 4.726; A_0 = 1.4 + 0.72 * 4.726 = 4.80272
    r = jnp.array([1.0, 2.0, 3.0])
    v = jnp.array([0.5, 1.0, 1.5])
    adv, target = gae(r, v, jnp.zeros(3), jnp.float32(2.0), 0.9, 0.8)
    np.testing.assert_allclose(adv, [4.80272, 4.726, 3.3], rtol=1e-6)
    np.testing.assert_allclose(target, [5.30272, 5.726, 4.8], rtol=1e-6)
    # The episode ends after step 1: nothing is bootstrapped across it.
    # delta_1 = 2 - 1.0 = 1.0, A_1 = 1.0; A_0 = 1.4 + 0.72 * 1.0 = 2.12; A_2 unchanged 3.3
    adv, _ = gae(r, v, jnp.array([0.0, 1.0, 0.0]), jnp.float32(2.0), 0.9, 0.8)
    np.testing.assert_allclose(adv, [2.12, 1.0, 3.3], rtol=1e-6)
    # gamma = 0: the advantage is r - v (the contextual-bandit case PPO uses by default)
    adv, target = gae(r, v, jnp.zeros(3), jnp.float32(2.0), 0.0, 0.95)
    np.testing.assert_allclose(adv, r - v)
    np.testing.assert_allclose(target, r)


def _gae_loop(r, v, done, v_last, gamma, lam):
    """Plain NumPy reference: the textbook backward loop."""
    t_len = r.shape[0]
    adv = np.zeros_like(r)
    last = np.zeros_like(v_last)
    for t in reversed(range(t_len)):
        v_next = v_last if t == t_len - 1 else v[t + 1]
        nd = 1.0 - done[t]
        delta = r[t] + gamma * v_next * nd - v[t]
        last = delta + gamma * lam * nd * last
        adv[t] = last
    return adv, adv + v


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.5, 1.0), (0.0, 0.9)])
def test_gae_scan_equals_loop(gamma, lam):
    rng = np.random.default_rng(0)
    t_len, b = 17, 5
    r = rng.normal(size=(t_len, b)).astype(np.float32)
    v = rng.normal(size=(t_len, b)).astype(np.float32)
    done = (rng.random((t_len, b)) < 0.15).astype(np.float32)
    v_last = rng.normal(size=b).astype(np.float32)
    ref_a, ref_t = _gae_loop(r, v, done, v_last, gamma, lam)
    for fn in (gae, jax.jit(gae, static_argnums=(4, 5))):
        a, t = fn(r, v, done, v_last, gamma, lam)
        np.testing.assert_allclose(a, ref_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(t, ref_t, rtol=1e-5, atol=1e-5)


def test_clipped_surrogate_hand_worked():
    # ratio = exp(logp - logp_old) = [1.5, 0.5, 1.1, 0.7], A = [1, 1, -1, -1], eps = 0.2
    # min(r A, clip(r) A) = [min(1.5, 1.2), min(0.5, 0.8), min(-1.1, -1.1), min(-0.7, -0.8)]
    #                     = [1.2, 0.5, -1.1, -0.8];  loss = -mean = -(-0.2 / 4) = 0.05
    # clipped |r - 1| > 0.2: [yes, yes, no, yes] -> 0.75
    ratio = jnp.array([1.5, 0.5, 1.1, 0.7])
    adv = jnp.array([1.0, 1.0, -1.0, -1.0])
    logp_old = jnp.zeros(4)
    loss, clip_frac, kl = clipped_surrogate(jnp.log(ratio), logp_old, adv, 0.2)
    np.testing.assert_allclose(loss, 0.05, rtol=1e-5)
    np.testing.assert_allclose(clip_frac, 0.75)
    # k3 KL = mean(r - 1 - log r) >= 0
    np.testing.assert_allclose(kl, np.mean(ratio - 1 - np.log(ratio)), rtol=1e-5)
    # Gradient wrt logp: only the unclipped terms move: -r A / 4 for samples 1 and 2
    # = [0, -0.5 / 4, 1.1 / 4, 0] = [0, -0.125, 0.275, 0]
    g = jax.grad(lambda lp: clipped_surrogate(lp, logp_old, adv, 0.2)[0])(jnp.log(ratio))
    np.testing.assert_allclose(g, [0.0, -0.125, 0.275, 0.0], rtol=1e-5, atol=1e-7)


def test_value_loss_hand_worked():
    # v = [1, 2], target = [1.1, 1.9]: 0.5 * mean(0.01, 0.01) = 0.005
    v, target, v_old = jnp.array([1.0, 2.0]), jnp.array([1.1, 1.9]), jnp.array([0.0, 4.0])
    np.testing.assert_allclose(value_loss(v, v_old, target), 0.005, rtol=1e-4)
    # clipped (eps 0.2): v_clip = [0.2, 3.8], errors [0.81, 3.61] dominate: 0.5 * 4.42 / 2
    np.testing.assert_allclose(value_loss(v, v_old, target, 0.2), 1.105, rtol=1e-5)


def test_ppo_loss_combines_terms():
    # total = surrogate + vf_coef * value loss - ent_coef * H_high - ent_coef_low * H_low
    ratio = jnp.array([1.5, 0.5, 1.1, 0.7])
    adv = jnp.array([1.0, 1.0, -1.0, -1.0])
    v, target = jnp.array([1.0, 2.0, 0.0, 0.0]), jnp.array([1.1, 1.9, 0.0, 0.0])
    terms = ppo_loss(jnp.log(ratio), jnp.full(4, 2.0), jnp.full(4, 3.0), v, jnp.zeros(4), v,
                     adv, target, clip_eps=0.2, vf_coef=0.5, ent_coef=0.1, ent_coef_low=0.01,
                     norm_adv=False)
    # surrogate 0.05 (above); value 0.5 * mean(0.01, 0.01, 0, 0) = 0.0025
    # total = 0.05 + 0.5 * 0.0025 - 0.1 * 2 - 0.01 * 3 = -0.17875
    np.testing.assert_allclose(terms.value, 0.0025, rtol=1e-4)
    np.testing.assert_allclose(terms.total, -0.17875, rtol=1e-4)
    np.testing.assert_allclose(terms.entropy, 5.0)
