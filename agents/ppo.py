"""PPO for the partitioning policies, purejaxrl style, generic over the environment.

PPO talks to an environment only through an `EnvAdapter` (reset, step, the network features
of an observation, the outage flag of the action masks, the logged metrics); the slot
environment's adapter, features and rewards are `agents.slot_env`, and `agents.train` binds a
`TrainConfig` to them.

One update = a rollout of `num_steps` steps in `num_envs` vmapped environments (a `lax.scan`),
GAE (`agents.losses.gae`), then `update_epochs` epochs of `num_minibatches` shuffled
minibatches (nested `lax.scan`s), each an Adam step on the clipped surrogate of the joint
(high x low) log-probability, the value loss and the entropy bonus, with global-norm gradient
clipping. The whole update is one traced function of pytrees; `make_train(...)(key)` runs
`num_updates` of them in a `lax.scan` under one `jax.jit`, and seeds are `jax.vmap`ped over
keys. The networks cross the jit boundary as `nnx.split` state and are `nnx.merge`d inside.

For progress reporting without printing inside compiled code, `make_segments` returns
`init(keys)` and `segment(runner)`: the same update scanned `log_every` times under jit and
vmapped over seeds; the caller loops over segments and prints between them (`agents.train`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from agents.actions import (
    Action,
    ActionConfig,
    ActionSpace,
    Factors,
    MaskContext,
    make_space,
    mask_context,
    to_partition,
)
from agents.losses import LossTerms, gae, ppo_loss
from agents.networks import ActorCritic, Features, NetConfig, act, evaluate_actions


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters.

    num_envs: environments stepped in parallel (vmapped).
    num_steps: steps per environment per rollout.
    num_updates: rollout + optimization rounds.
    update_epochs: passes over each rollout.
    num_minibatches: minibatches per epoch (num_envs * num_steps must divide evenly).
    gamma: discount. 0 (default) makes PPO a contextual bandit on the per-step reward (for the
      slot environment: the per-slot drift-plus-penalty, docs/design.md §3); gamma > 0
      optimizes a discounted sum instead.
    gae_lambda: GAE parameter.
    clip_eps: PPO ratio clip.
    vf_coef: weight of the value loss.
    vf_clip: clip of the value update (None: unclipped).
    ent_coef: entropy bonus weight of the high level (and of the flat kinds).
    ent_coef_low: entropy bonus weight of the low level (None: ent_coef).
    max_grad_norm: global gradient-norm clip.
    lr: peak Adam learning rate.
    lr_schedule: "constant", "linear" (to 0) or "cosine" (to 0), over all optimizer steps.
    warmup_frac: fraction of optimizer steps of linear warm-up (0: none).
    reward_mode: "dpp": the environment's reward; "relative" (needs gamma = 0): the adapter's
      `relative_reward`, a per-step transform that keeps every state's best action (for the
      slot environment: `agents.slot_env.relative_reward`); "longrun" (gamma in [0, 1)): the
      long-run objective itself, r = -(1 - gamma) (p + backlog_weight Q') / reward_scale with
      the adapter's `longrun_cost` p + beta Q' (slot environment: the slot's penalty and the
      backlog it leaves, `agents.slot_env.longrun_cost`), so that a value is the discounted
      average of the per-slot cost (`train_reward`; docs/design.md §4.6).
    backlog_weight: beta of reward_mode "longrun", penalty units per request of backlog and
      slot (> 0); None: 1 / V of the scenario (the exchange rate of V p + Q in the DPP).
      Only with reward_mode "longrun".
    reward_scale: rewards are divided by this (after the environment's own scale).
    reward_clip: rewards below -reward_clip are clipped there, keeping the environment's large
      cost of an infeasible step (an unobserved outage) from swamping the advantage
      normalization. None: 10 for "relative" (in the slot environment: a slot 10 times worse
      than edge-only), no clip for "dpp".
    norm_adv: normalize advantages per minibatch.
    """

    num_envs: int = 16
    num_steps: int = 32
    num_updates: int = 100
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.0
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    vf_clip: float | None = None
    ent_coef: float = 0.01
    ent_coef_low: float | None = None
    max_grad_norm: float = 0.5
    lr: float = 1e-3
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_frac: float = 0.0
    reward_mode: Literal["dpp", "relative", "longrun"] = "relative"
    backlog_weight: float | None = None
    reward_scale: float = 1.0
    reward_clip: float | None = None
    norm_adv: bool = True

    def __post_init__(self):
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError("PPOConfig: num_envs * num_steps must be divisible by "
                             f"num_minibatches, got {self.num_envs} * {self.num_steps} and "
                             f"{self.num_minibatches}")
        if self.reward_mode not in ("dpp", "relative", "longrun"):
            raise ValueError(f"PPOConfig.reward_mode: unknown {self.reward_mode!r}")
        if self.backlog_weight is not None:
            if self.reward_mode != "longrun":
                raise ValueError("PPOConfig.backlog_weight: only reward_mode 'longrun' has a "
                                 f"backlog cost, got reward_mode {self.reward_mode!r}")
            if not (math.isfinite(self.backlog_weight) and self.backlog_weight > 0):
                raise ValueError("PPOConfig.backlog_weight: must be a finite number > 0 "
                                 f"(penalty units per request of backlog), got "
                                 f"{self.backlog_weight!r}")
        if self.reward_mode == "longrun" and not 0 <= self.gamma < 1:
            raise ValueError("PPOConfig.gamma: reward_mode 'longrun' needs gamma in [0, 1) "
                             f"(its reward carries the factor 1 - gamma), got {self.gamma!r}")
        if not self.reward_scale > 0:
            raise ValueError(f"PPOConfig.reward_scale: must be > 0, got {self.reward_scale!r}")
        if self.reward_mode == "relative" and self.gamma != 0:
            raise ValueError("PPOConfig: reward_mode 'relative' is a per-step (bandit) "
                             "transform and needs gamma = 0; use reward_mode 'dpp'")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"PPOConfig.lr_schedule: unknown {self.lr_schedule!r}")

    @property
    def clip(self) -> float | None:
        if self.reward_clip is None and self.reward_mode == "relative":
            return 10.0
        return self.reward_clip

    @property
    def minibatch_size(self) -> int:
        return self.num_envs * self.num_steps // self.num_minibatches

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps


@dataclasses.dataclass(frozen=True)
class EnvAdapter:
    """How PPO talks to an environment (all functions pure, for one environment).

    reset(key, params) -> (obs, state);
    step(key, state, partition, params) -> (obs, state, reward, done, info), resetting itself
      when done;
    features(obs, params) -> Features (the networks' input);
    outage(obs) -> bool [] (the link was down at the last step: the action masks prefer
      options without a link crossing);
    spec(params) -> CostSpec (the model the partitions are of);
    metrics(info) -> dict of float [], averaged and logged per update;
    precisions(params) -> the allowed activation precisions (static);
    relative_reward(obs, info, params) -> float [] (PPOConfig.reward_mode "relative"; obs is
      the observation the action was taken on);
    longrun_cost(info, params, backlog_weight) -> float [] (PPOConfig.reward_mode "longrun":
      the step's penalty plus backlog_weight (None: the adapter's default) times the backlog
      it leaves);
    tp(params) -> the scenario's option space (static bool; the action space follows it
      unless ActionConfig.tp forces one).
    The slot environment's adapter is `agents.slot_env.lyapunov_adapter`.
    """

    reset: Callable
    step: Callable
    features: Callable
    outage: Callable
    spec: Callable
    metrics: Callable
    precisions: Callable = lambda params: (0, 1, 2)
    relative_reward: Callable | None = None
    longrun_cost: Callable | None = None
    tp: Callable = lambda params: False


@struct.dataclass
class Transition:
    x: Features
    ctx: MaskContext
    action: Action
    logp: jnp.ndarray
    value: jnp.ndarray
    reward: jnp.ndarray
    done: jnp.ndarray


@struct.dataclass
class Runner:
    """Everything carried from update to update (one seed; vmap adds a leading axis)."""

    nets: Any  # nnx.State of (model, optimizer)
    env_state: Any
    obs: Any
    key: jnp.ndarray
    update: jnp.ndarray


def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    n_opt = cfg.num_updates * cfg.update_epochs * cfg.num_minibatches
    warm = int(cfg.warmup_frac * n_opt)
    if cfg.lr_schedule == "constant":
        sched = optax.constant_schedule(cfg.lr)
    elif cfg.lr_schedule == "linear":
        sched = optax.linear_schedule(cfg.lr, 0.0, max(n_opt - warm, 1))
    else:
        sched = optax.cosine_decay_schedule(cfg.lr, max(n_opt - warm, 1))
    if warm:
        sched = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), sched], [warm])
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                       optax.adam(sched, eps=1e-5))


def feature_shapes(env: EnvAdapter, env_params) -> tuple[int, int, int]:
    """(n_scalars, hist_len, hist_ch) of the adapter's features."""
    def f(key):
        obs, _ = env.reset(key, env_params)
        return env.features(obs, env_params)

    x = jax.eval_shape(f, jax.random.key(0))
    return x.scalars.shape[-1], x.history.shape[-2], x.history.shape[-1]


def build_model(space: ActionSpace, shapes, net: NetConfig, key) -> ActorCritic:
    return ActorCritic(space, *shapes, net, nnx.Rngs(key))


def policy_loss_fn(model: ActorCritic, batch: Transition, adv, target, cfg: PPOConfig):
    """PPO loss of one minibatch (batched Transition [N], advantages and targets [N])."""
    fac, v = evaluate_actions(model, batch.x, batch.ctx, batch.action)
    terms = ppo_loss(fac.logp, fac.ent_high, fac.ent_low, v, batch.logp, batch.value, adv,
                     target, clip_eps=cfg.clip_eps, vf_coef=cfg.vf_coef,
                     ent_coef=cfg.ent_coef, ent_coef_low=cfg.ent_coef_low, vf_clip=cfg.vf_clip,
                     norm_adv=cfg.norm_adv)
    return terms.total, terms


def train_reward(cfg: PPOConfig, env: EnvAdapter, env_params, obs, reward, info):
    """float []: the reward PPO trains on for one environment step (one sample; vmap
    outward), by `cfg.reward_mode`:

        "dpp":      r = reward                                  (the environment's own)
        "relative": r = env.relative_reward(obs, info, params)  (gamma = 0 only)
        "longrun":  r = -(1 - gamma) env.longrun_cost(info, params, backlog_weight)

    then clipped below at -cfg.clip (when set) and divided by cfg.reward_scale. `obs` is the
    observation the action was taken on, `reward` and `info` the step's. With the factor
    1 - gamma a "longrun" value is the discounted average of the per-step cost (for the slot
    environment p + beta Q', in units of reward_scale), on the scale of the time averages it
    estimates whatever gamma.
    """
    r = jnp.asarray(reward, jnp.float32)
    if cfg.reward_mode == "relative":
        r = env.relative_reward(obs, info, env_params)
    elif cfg.reward_mode == "longrun":
        r = -(1.0 - cfg.gamma) * env.longrun_cost(info, env_params, cfg.backlog_weight)
    if cfg.clip is not None:
        r = jnp.maximum(r, -cfg.clip)
    return r / cfg.reward_scale


def make_update(cfg: PPOConfig, env: EnvAdapter, env_params, space: ActionSpace, graphdef):
    """update(runner) -> (runner, metrics dict of float []): one rollout and its epochs."""
    spec = env.spec(env_params)
    for mode, fn in (("relative", env.relative_reward), ("longrun", env.longrun_cost)):
        if cfg.reward_mode == mode and fn is None:
            raise ValueError(f"PPOConfig.reward_mode {mode!r}: the environment adapter has no "
                             f"{'relative_reward' if mode == 'relative' else 'longrun_cost'}; "
                             "use reward_mode 'dpp'")

    def contexts(obs):
        return jax.vmap(lambda o: mask_context(spec, space, env.outage(o)))(obs)

    def features(obs):
        return jax.vmap(lambda o: env.features(o, env_params))(obs)

    def update(runner: Runner):
        model, opt = nnx.merge(graphdef, runner.nets)

        def env_step(carry, _):
            env_state, obs, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            x, ctx = features(obs), contexts(obs)
            action, fac, value = act(model, x, ctx, k_act)
            part = jax.vmap(lambda a: to_partition(a, space))(action)
            keys = jax.random.split(k_env, cfg.num_envs)
            obs2, env_state2, reward, done, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None))(keys, env_state, part, env_params)
            r = jax.vmap(lambda o, rw, i: train_reward(cfg, env, env_params, o, rw, i))(
                obs, reward, info)
            tr = Transition(x, ctx, action, fac.logp, value, r, done.astype(jnp.float32))
            logged = {k: jnp.mean(v) for k, v in env.metrics(info).items()}
            logged["reward"] = jnp.mean(reward)
            logged["train_reward"] = jnp.mean(r)
            logged["entropy"] = jnp.mean(fac.entropy)
            return (env_state2, obs2, key), (tr, logged)

        (env_state, obs, key), (traj, logged) = jax.lax.scan(
            env_step, (runner.env_state, runner.obs, runner.key), None, cfg.num_steps)
        v_last = model.value(model.encode(features(obs)))
        adv, target = gae(traj.reward, traj.value, traj.done, v_last, cfg.gamma,
                          cfg.gae_lambda)

        def epoch(carry, _):
            nets, key = carry
            key, k_perm = jax.random.split(key)
            n = cfg.steps_per_update
            perm = jax.random.permutation(k_perm, n)

            def shuffle(x):
                x = x.reshape((n,) + x.shape[2:])[perm]
                return x.reshape((cfg.num_minibatches, cfg.minibatch_size) + x.shape[1:])

            mbs = jax.tree.map(shuffle, (traj, adv, target))

            def minibatch(nets, mb):
                m, o = nnx.merge(graphdef, nets)
                batch, a, t = mb
                grad_fn = nnx.value_and_grad(policy_loss_fn, has_aux=True)
                (_, terms), grads = grad_fn(m, batch, a, t, cfg)
                o.update(m, grads)
                return nnx.state((m, o)), terms

            nets, terms = jax.lax.scan(minibatch, nets, mbs)
            return (nets, key), terms

        (nets, key), terms = jax.lax.scan(epoch, (runner.nets, key), None, cfg.update_epochs)
        stats = {k: v.mean() for k, v in logged.items()}
        stats.update({f"loss_{f.name}": getattr(terms, f.name).mean()
                      for f in dataclasses.fields(LossTerms)})
        del opt
        return Runner(nets, env_state, obs, key, runner.update + 1), stats

    return update


def make_init(cfg: PPOConfig, env: EnvAdapter, env_params, space: ActionSpace, net: NetConfig):
    """(init(key) -> Runner, graphdef) for one seed."""
    shapes = feature_shapes(env, env_params)
    tx = make_optimizer(cfg)

    def build(key):
        model = build_model(space, shapes, net, key)
        return nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))

    def _pair(split):
        return nnx.merge(*split)

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: _pair(build(jax.random.key(0)))))

    def init(key):
        k_net, k_env, k_run = jax.random.split(key, 3)
        _, nets = build(k_net)
        # lax.map, not vmap: init runs once, and the batched reset compiled 3x slower (4.2 s
        # against 1.3 s for the test card, measured on 2 cores)
        obs, env_state = jax.lax.map(lambda k: env.reset(k, env_params),
                                     jax.random.split(k_env, cfg.num_envs))
        return Runner(nets, env_state, obs, k_run, jnp.int32(0))

    return init, graphdef


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """The static pieces of a training run: the action space and the network graph."""

    space: ActionSpace
    graphdef: Any
    shapes: tuple[int, int, int]


def setup(cfg: PPOConfig, env: EnvAdapter, env_params, action: ActionConfig, net: NetConfig):
    space = make_space(env.spec(env_params), action, env.precisions(env_params),
                       tp=env.tp(env_params))
    init, graphdef = make_init(cfg, env, env_params, space, net)
    update = make_update(cfg, env, env_params, space, graphdef)
    return TrainSetup(space, graphdef, feature_shapes(env, env_params)), init, update


def make_train(cfg: PPOConfig, env: EnvAdapter, env_params, action: ActionConfig,
               net: NetConfig):
    """train(key) -> (Runner, metrics dict of float [num_updates]); jit it, vmap it over keys.

    The returned function carries `train.setup` (TrainSetup: action space, graphdef, feature
    shapes), what is needed to rebuild the networks from a runner's state, and `train.init`
    (key -> the initial Runner of that seed: fresh networks, reset environments).
    """
    ts, init, update = setup(cfg, env, env_params, action, net)

    def train(key):
        runner = init(key)
        return jax.lax.scan(lambda r, _: update(r), runner, None, cfg.num_updates)

    train.setup = ts
    train.init = init
    return train


def make_train_on(cfg: PPOConfig, env: EnvAdapter, env_params, action: ActionConfig,
                  net: NetConfig):
    """train(key, params) -> (Runner, metrics dict of float [num_updates]): `make_train` with
    the scenario as data. `env_params` fixes the static pieces (action space, network graph,
    shapes: `train.setup`); `params` is any EnvParams of the same structure (e.g. another V),
    so `jax.jit(jax.vmap(train))` trains a batch of scenarios with one compilation."""
    ts, _, _ = setup(cfg, env, env_params, action, net)

    def train(key, params):
        init, _ = make_init(cfg, env, params, ts.space, net)
        update = make_update(cfg, env, params, ts.space, ts.graphdef)
        return jax.lax.scan(lambda r, _: update(r), init(key), None, cfg.num_updates)

    train.setup = ts
    return train


def make_segments(cfg: PPOConfig, env: EnvAdapter, env_params, action: ActionConfig,
                  net: NetConfig, log_every: int):
    """(init(keys [S]) -> Runner [S], segment(Runner [S]) -> (Runner [S], metrics [S, n]),
    TrainSetup): the same updates, jitted in segments of n = log_every and vmapped over S
    seeds."""
    ts, init, update = setup(cfg, env, env_params, action, net)
    init_v = jax.jit(lambda keys: jax.lax.map(init, keys))  # one seed at a time: see init

    @jax.jit
    @jax.vmap
    def segment(runner):
        return jax.lax.scan(lambda r, _: update(r), runner, None, log_every)

    return init_v, segment, ts


def model_from_runner(ts: TrainSetup, nets) -> ActorCritic:
    """The trained ActorCritic of one seed's runner state."""
    model, _ = nnx.merge(ts.graphdef, nets)
    return model


def factors_of(model: ActorCritic, x: Features, ctx: MaskContext, action: Action) -> Factors:
    return evaluate_actions(model, x, ctx, action)[0]
