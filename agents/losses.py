"""PPO estimators and losses as top-level functions (written for arrays, no closures); the
training of docs/design.md §4.5.

- GAE: Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", ICLR 2016, eq. (16), computed backwards with `lax.scan(reverse=True)`.
- Clipped surrogate: Schulman et al., "Proximal Policy Optimization Algorithms", 2017, eq. (7).
- Clipped value loss: the PPO2 baseline implementation (optional).

The hierarchical policy's log-probability is the sum of its two levels' factors
(`agents.actions.Factors.logp`), so the ratio below is the joint ratio of both levels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


def gae(r_t, v_t, done_t, v_last, gamma, lambda_):
    """Generalized advantage estimates and value targets.

        delta_t = r_t + gamma (1 - done_t) v_{t+1} - v_t
        A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1}
        target_t = A_t + v_t

    where v_{T} = v_last and done_t = 1 marks that the episode ended after step t (nothing is
    bootstrapped across it).

    Args:
      r_t: float [T, ...] rewards.
      v_t: float [T, ...] values of the states the actions were taken in.
      done_t: float or bool [T, ...] episode ended after step t.
      v_last: float [...] value of the state after the last step.
      gamma, lambda_: discount and GAE parameter.

    Returns:
      (advantages float [T, ...], targets float [T, ...]).
    """
    not_done = 1.0 - jnp.asarray(done_t, jnp.float32)
    v_tp1 = jnp.concatenate([v_t[1:], v_last[None]], axis=0)

    def body(a_tp1, x):
        r, v, v_next, nd = x
        delta = r + gamma * nd * v_next - v
        a = delta + gamma * lambda_ * nd * a_tp1
        return a, a

    _, adv = jax.lax.scan(body, jnp.zeros_like(v_last), (r_t, v_t, v_tp1, not_done),
                          reverse=True)
    return adv, adv + v_t


def clipped_surrogate(logp, logp_old, adv, clip_eps):
    """PPO clipped policy loss (to minimize), mean over the batch.

        ratio = exp(logp - logp_old)
        L = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))

    Args: float [N] each (logp of the current policy, logp stored at rollout, advantages).
    Returns: (loss float [], clip fraction float [], approximate KL float []).
    """
    log_ratio = logp - logp_old
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss = -jnp.mean(jnp.minimum(unclipped, clipped))
    clip_frac = jnp.mean(jnp.abs(ratio - 1.0) > clip_eps)
    approx_kl = jnp.mean((ratio - 1.0) - log_ratio)  # Schulman's k3 estimator, >= 0
    return loss, clip_frac, approx_kl


def value_loss(v, v_old, target, clip_eps=None):
    """0.5 * mean((v - target)^2); with clip_eps, the PPO2 clipped form
    0.5 * mean(max((v - target)^2, (v_old + clip(v - v_old, -eps, eps) - target)^2))."""
    err = (v - target) ** 2
    if clip_eps is not None:
        v_clip = v_old + jnp.clip(v - v_old, -clip_eps, clip_eps)
        err = jnp.maximum(err, (v_clip - target) ** 2)
    return 0.5 * jnp.mean(err)


def normalize(x, eps=1e-8):
    return (x - x.mean()) / (x.std() + eps)


@struct.dataclass
class LossTerms:
    total: jnp.ndarray
    policy: jnp.ndarray
    value: jnp.ndarray
    entropy: jnp.ndarray
    entropy_high: jnp.ndarray
    entropy_low: jnp.ndarray
    clip_frac: jnp.ndarray
    approx_kl: jnp.ndarray


def ppo_loss(logp, ent_high, ent_low, v, logp_old, v_old, adv, target, *, clip_eps, vf_coef,
             ent_coef, ent_coef_low=None, vf_clip=None, norm_adv=True) -> LossTerms:
    """Total PPO loss = surrogate + vf_coef * value loss - entropy bonus.

    The bonus is ent_coef * H_high + ent_coef_low * H_low (ent_coef_low defaults to
    ent_coef): the low level sums its entropy over up to L layers, so it may want a smaller
    weight. All inputs float [N].
    """
    if norm_adv:
        adv = normalize(adv)
    pg, clip_frac, kl = clipped_surrogate(logp, logp_old, adv, clip_eps)
    vl = value_loss(v, v_old, target, vf_clip)
    ent_coef_low = ent_coef if ent_coef_low is None else ent_coef_low
    h_high, h_low = ent_high.mean(), ent_low.mean()
    total = pg + vf_coef * vl - ent_coef * h_high - ent_coef_low * h_low
    return LossTerms(total, pg, vl, h_high + h_low, h_high, h_low, clip_frac, kl)
