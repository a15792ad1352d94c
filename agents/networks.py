"""Flax NNX actor-critic: a shared observation encoder, the high-level actor, the low-level
actor conditioned on the high-level choice, and the critic (docs/design.md §4.5). The networks
see only the observation (§4.1).

Encoder. The input (`Features`) is a vector of scalars (normalized queues, arrival-rate estimate,
memory headroom, V, ...) and a short window of link history (bandwidth up/down, RTT, cloud
share, link up; oldest first). The window goes through a small causal 1-D convolution (two
VALID conv layers of kernel 3, then flattened) rather than a GRU: the window is short and fixed,
the conv sees trends and level changes in it at the cost of a few hundred parameters, it is
parallel (no sequential scan inside the network: fast to compile and to run on two cores), and
it keeps the policy a function of the current observation, so PPO minibatches can be shuffled
freely without storing recurrent states or truncated back-propagation through time.

Heads. All networks work on a leading batch axis; the masked sampling of `agents.actions` is
written for one sample and vmapped. The high-level head emits the logits of every global
choice (embedding side, G group modes, precision, and the L + 2 cuts of the layer-wise
baseline; a kind ignores what it does not use). The low-level head maps the encoding and the
one-hot high-level choice (embedding, modes, precision) to per-layer logits over the K x F
joint (head count, FFN option) options (F = 3, or 3 + the tp shares in a tensor-parallel
space) and the logits of the residual-side transitions; for the flat per-head ablation it sees
the encoding only.
Output layers start at 0.01 gain (near-uniform initial policy).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from agents.actions import (
    Action,
    ActionSpace,
    Factors,
    HighLogits,
    MaskContext,
    high_from_flat,
    high_level,
    high_onehot,
    low_level,
    n_high,
)


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Network sizes.

    hidden: width of the encoder MLP and of the critic.
    low_hidden: width of the low-level actor's hidden layer.
    conv_channels: channels of the two 1-D conv layers over the link history.
    kernel: kernel size of the conv layers (the window must be >= 2 * (kernel - 1) + 1).
    memory: the encoder sees the window of past slots (link, cloud share, outages, measured
      latency) through the conv layers, so the policy can learn the processes' dynamics and
      its own cost drift; False is the memoryless ablation: the current scalars only (the
      last measurement and the EWMA), no conv layers. Checkpoints record it; those written
      before it existed have the window (True).
    """

    hidden: int = 64
    low_hidden: int = 64
    conv_channels: int = 8
    kernel: int = 3
    memory: bool = True


@struct.dataclass
class Features:
    """What the networks see. scalars: float [..., F]; history: float [..., W, C]. The slot
    environment's: `agents.slot_env.observe_features`."""

    scalars: jnp.ndarray
    history: jnp.ndarray


_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def _dense(n_in, n_out, rngs, scale, layers):
    """A Linear layer with zero weights; `layers` collects it with its gain for
    :func:`_init_kernels`."""
    layer = nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.zeros_init(),
                       bias_init=nnx.initializers.zeros_init(), rngs=rngs)
    layers.append((layer, scale))
    return layer


def _init_kernels(layers, key) -> None:
    """Every kernel from one truncated-normal draw: variance scaling, a kernel of gain g gets
    variance g^2 / fan_in (the variance of an orthogonal init of that gain; the orthogonal init
    itself, a QR batched when seeds are vmapped, can deadlock XLA:CPU's thread pool), as
    flax's ``variance_scaling(g^2, "fan_in", "normal")``. One draw, not one per layer: every
    random draw is a threefry program for XLA to compile (the networks' init compiled in 5.5 s
    with one draw per layer, measured on 2 cores)."""
    sizes = [layer.kernel[...].size for layer, _ in layers]
    z = jax.random.truncated_normal(key, -2.0, 2.0, (sum(sizes),), jnp.float32)
    start = 0
    for (layer, gain), n in zip(layers, sizes, strict=True):
        shape = layer.kernel[...].shape
        fan_in = n // shape[-1]
        std = gain / fan_in**0.5 / _TRUNC_STD
        layer.kernel[...] = z[start:start + n].reshape(shape) * std
        start += n


class ActorCritic(nnx.Module):
    """Shared encoder + high-level actor + low-level actor + critic for one action space."""

    def __init__(self, space: ActionSpace, n_scalars: int, hist_len: int, hist_ch: int,
                 cfg: NetConfig, rngs: nnx.Rngs):
        self.space = space
        self.memory = bool(cfg.memory)
        k, ch = cfg.kernel, cfg.conv_channels
        layers = []  # (layer, gain): their kernels are drawn at the end
        if self.memory:
            out_len = hist_len - 2 * (k - 1)
            if out_len < 1:
                raise ValueError(f"history window {hist_len} too short for two convs of "
                                 f"kernel {k}")
            zeros = nnx.initializers.zeros_init()
            self.conv1 = nnx.Conv(hist_ch, ch, kernel_size=(k,), padding="VALID",
                                  kernel_init=zeros, rngs=rngs)
            self.conv2 = nnx.Conv(ch, ch, kernel_size=(k,), padding="VALID", kernel_init=zeros,
                                  rngs=rngs)
            layers += [(self.conv1, 1.0), (self.conv2, 1.0)]  # flax's default: LeCun normal
        else:
            out_len = 0
        self.torso1 = _dense(n_scalars + out_len * ch, cfg.hidden, rngs, 2**0.5, layers)
        self.torso2 = _dense(cfg.hidden, cfg.hidden, rngs, 2**0.5, layers)
        g, n_l = space.n_groups, space.n_layers
        self.n_high = n_high(space)
        self.high = _dense(cfg.hidden, self.n_high, rngs, 0.01, layers)
        n_cond = (2 + space.n_modes * g + 3) if space.kind == "hier" else 0
        if space.kind != "layerwise":
            self.low1 = _dense(cfg.hidden + n_cond, cfg.low_hidden, rngs, 2**0.5, layers)
            self.low2 = _dense(cfg.low_hidden, (n_l + space.n_states) * space.n_low, rngs,
                               0.01, layers)
        self.critic1 = _dense(cfg.hidden, cfg.hidden, rngs, 2**0.5, layers)
        self.critic2 = _dense(cfg.hidden, 1, rngs, 1.0, layers)
        _init_kernels(layers, rngs.params())

    def encode(self, x: Features):
        """float [B, hidden]."""
        if not self.memory:
            return jnp.tanh(self.torso2(jnp.tanh(self.torso1(x.scalars))))
        hist = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x.history))))
        z = jnp.concatenate([x.scalars, hist.reshape(hist.shape[0], -1)], axis=-1)
        return jnp.tanh(self.torso2(jnp.tanh(self.torso1(z))))

    def high_logits(self, h) -> HighLogits:
        return high_from_flat(self.high(h), self.space.n_groups, self.space.n_modes)

    def low_logits(self, h, cond):
        """(per-layer float [B, L, K*F], side transition float [B, S, K*F]); cond float
        [B, n_cond] (None for the flat per-head kind)."""
        z = jnp.concatenate([h, cond], axis=-1) if cond is not None else h
        out = self.low2(jnp.tanh(self.low1(z)))
        n_l = self.space.n_layers
        out = out.reshape(*out.shape[:-1], n_l + self.space.n_states, self.space.n_low)
        return out[..., :n_l, :], out[..., n_l:, :]

    def value(self, h):
        """float [B]."""
        return self.critic2(jnp.tanh(self.critic1(h)))[..., 0]


def _cond(space: ActionSpace, embed, modes, prec):
    if space.kind != "hier":
        return None
    return jax.vmap(lambda e, m, p: high_onehot(space, e, m, p))(embed, modes, prec)


def act(model: ActorCritic, x: Features, ctx: MaskContext, key):
    """Sample a batch of actions. Returns (Action [B], Factors [B], value float [B]).

    ctx: MaskContext with a leading batch axis [B].
    """
    space = model.space
    b = x.scalars.shape[0]
    k_high, k_low = jax.random.split(key)
    h = model.encode(x)
    hl = model.high_logits(h)
    # Gumbel noise for every choice of the batch in two PRNG calls (cheap to compile)
    nz_high = high_from_flat(jax.random.gumbel(k_high, (b, model.n_high)), space.n_groups,
                             space.n_modes)
    hi = jax.vmap(lambda c, lg, nz: high_level(space, c, lg, noise=nz))(ctx, hl, nz_high)
    embed, modes, prec, cut, logp_h, ent_h = hi
    if space.kind == "layerwise":
        low = jnp.zeros((b, space.n_layers), jnp.int32)
        logp_l = ent_l = jnp.zeros((b,))
    else:
        ll, tr = model.low_logits(h, _cond(space, embed, modes, prec))
        nz_low = jax.random.gumbel(k_low, ll.shape)
        ch = jax.vmap(lambda c, lg, t, e, m, nz: low_level(space, c, lg, e, m, noise=nz,
                                                           trans=t))(
            ctx, ll, tr, embed, modes, nz_low)
        low, logp_l, ent_l = ch.actions, ch.logp.sum(-1), ch.entropy.sum(-1)
    action = Action(embed, modes, prec, low, cut)
    return action, Factors(logp_h, logp_l, ent_h, ent_l), model.value(h)


def evaluate_actions(model: ActorCritic, x: Features, ctx: MaskContext, action: Action):
    """Log-probabilities, entropies and values of given actions (batched). Returns
    (Factors [B], value float [B]); replays the masks of `agents.actions` exactly."""
    space = model.space
    h = model.encode(x)
    hl = model.high_logits(h)
    _, _, _, _, logp_h, ent_h = jax.vmap(lambda c, lg, a: high_level(space, c, lg, action=a))(
        ctx, hl, action)
    if space.kind == "layerwise":
        logp_l = ent_l = jnp.zeros_like(logp_h)
    else:
        ll, tr = model.low_logits(h, _cond(space, action.embed, action.modes, action.prec))
        ch = jax.vmap(lambda c, lg, t, a: low_level(space, c, lg, a.embed, a.modes, low=a.low,
                                                    trans=t))(ctx, ll, tr, action)
        logp_l, ent_l = ch.logp.sum(-1), ch.entropy.sum(-1)
    return Factors(logp_h, logp_l, ent_h, ent_l), model.value(h)


def greedy(model: ActorCritic, x: Features, ctx: MaskContext) -> Action:
    """The most likely option at every step, in the sequential order (deterministic), batched."""
    space = model.space
    h = model.encode(x)
    hl = model.high_logits(h)
    embed, modes, prec, cut = jax.vmap(lambda c, lg: high_level(space, c, lg))(ctx, hl)[:4]
    if space.kind == "layerwise":
        low = jnp.zeros((embed.shape[0], space.n_layers), jnp.int32)
    else:
        ll, tr = model.low_logits(h, _cond(space, embed, modes, prec))
        low = jax.vmap(lambda c, lg, t, e, m: low_level(space, c, lg, e, m, trans=t).actions)(
            ctx, ll, tr, embed, modes)
    return Action(embed, modes, prec, low, cut)
