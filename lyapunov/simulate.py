"""Run a policy in the slot environment for N slots and summarize (what the CLI calls).

Common random numbers: the seed fixes the reset key, the per-slot environment keys (arrivals
and link) and, separately, the per-slot policy keys, and the environment's draws do not depend
on the action, so every policy sees the same arrival and link paths for a given seed.

:func:`rollout` is the whole run as one pure ``lax.scan`` (jit- and vmappable, for callers that
compose it); :func:`batched_rollout`, which ``simulate`` and the experiments run, steps the
same body from the host so that the environment's programs are compiled once for every
policy (the cvx policy, not jittable, is called from the same loop, with a progress log).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lyapunov import env as E
from lyapunov import registry
from lyapunov.policies import Policy
from lyapunov.queues import backlog_growth_rate, is_rate_stable
from lyapunov.stored_programs import PACKAGES, stored_jit

log = logging.getLogger(__name__)

CHUNK = 8  # members per compiled program of a batched rollout (batched_rollout)

# XLA:CPU's elemental emitters instead of its MLIR fusion emitters, which pay a fixed cost per
# kernel (docs/design.md §4.3). The environment's programs (reset, step) always compile with
# them: LLaMA-7B on a Pi 5, the step's compile 1.9 -> 1.4 s and the reset's 0.58 -> 0.40 s,
# the step's run unchanged (0.5-0.6 ms; 2 cores). A policy's act only in the paper's option
# space where memory cannot bind (``EnvParams.memory_can_bind``): there every jittable
# policy's decision ran as fast as with XLA's default and compiled in half the time (the slot
# oracle on LLaMA-7B 1.6-2.0 -> 0.8-0.9 s, dp-bayes 3.8 -> 1.8 s, the hierarchical policy 0.9
# -> 0.55 s); elsewhere the slot oracle's decision ran 5-35 % slower without them where memory
# binds, and 55 % slower in the tp space (LLaMA-7B 1.07 -> 1.64 ms).
NO_FUSION_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


def _compiler_options(name: str, cheap_act: bool) -> dict | None:
    """The compiler options of program ``name``; ``cheap_act``: an act in the paper's space
    where memory cannot bind (``_cheap_act``)."""
    if jax.default_backend() != "cpu" or (name == "act" and not cheap_act):
        return None
    return NO_FUSION_EMITTERS


def _cheap_act(params) -> bool:
    return not params.tp and not params.memory_can_bind


def _keys(key: jax.Array, n_slots: int):
    k_reset, k_env, k_pol = jax.random.split(key, 3)
    return k_reset, jax.random.split(k_env, n_slots), jax.random.split(k_pol, n_slots)


def rollout(policy: Policy, params: E.EnvParams, n_slots: int, key: jax.Array):
    """``(info [n_slots], actions [n_slots], final state)`` of a jittable policy (pure; jit
    with ``n_slots`` static, vmap over ``key``)."""
    k_reset, env_keys, pol_keys = _keys(key, n_slots)
    obs, state = E.reset(k_reset, params)

    def body(carry, keys):
        obs, state = carry
        k_env, k_pol = keys
        action = policy.act(k_pol, state if policy.clairvoyant else obs, params)
        obs, state, _, _, info = E.step(k_env, state, action, params)
        return (obs, state), (info, action)

    (_, state), (info, actions) = jax.lax.scan(body, (obs, state), (env_keys, pol_keys))
    return info, actions, state


def _program_fn(name: str, pol: Policy | None, mode: str):
    """Program ``name`` of a stepped rollout: "reset", "step" (the environment's, the same for
    every policy) or "act" (``pol``'s), for one member (``mode`` "one") or vmapped over a batch
    with stacked ("batch") or shared ("shared") params."""
    fn = {"reset": E.reset, "step": E.step}.get(name) or pol.act
    if mode == "one":
        return fn
    ax = None if mode == "shared" else 0
    if name == "reset":
        # Member by member (lax.map), not vmapped: a reset runs once per rollout, and batched
        # it compiled about 3x slower (4.2 s against 1.3 s for the test card, 2 cores).
        return lambda keys, params: jax.lax.map(
            lambda kp: E.reset(kp[0], params if ax is None else kp[1]),
            (keys, None if ax is None else params))
    return jax.vmap(fn, in_axes={"reset": (0, ax), "step": (0, 0, 0, ax)}.get(name, (0, 0, ax)))


@functools.lru_cache(maxsize=256)
def _jit_program(name: str, pol: Policy | None, mode: str, cheap_act: bool):
    return jax.jit(_program_fn(name, pol, mode),
                   compiler_options=_compiler_options(name, cheap_act))


def _program(name: str, pol: Policy, mode: str, stored, *args):
    """The compiled program ``name`` (``_program_fn``): one per (name, policy, mode) in this
    process, the environment's shared by every policy; through ``stored_jit`` (for arguments
    shaped like ``args``) when ``stored`` is the policy's static key."""
    own = pol if name == "act" else None
    cheap = name == "act" and _cheap_act(args[-1])  # args end with the params
    if stored is None:
        return _jit_program(name, own, mode, cheap)
    static = (stored if name == "act" else "env", mode)
    return stored_jit(name, _program_fn(name, own, mode), static, *args,
                      compiler_options=_compiler_options(name, cheap))


_split_keys = jax.jit(jax.vmap(_keys, in_axes=(0, None)), static_argnums=1)
_at_slot = jax.jit(lambda k, t, one: k[t] if one else k[:, t], static_argnums=2)
_member = jax.jit(lambda tree, i: jax.tree.map(
    lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), tree))


def _stepped(pol: Policy, params, n_slots: int, keys, mode: str, stored=None,
             progress: Callable[[int, int], None] | None = None):
    """``rollout`` stepped from the host: per slot one call of the policy's act and one of the
    environment's step (the body of ``rollout``'s scan, so the same numbers; tested), for one
    key (``mode`` "one") or a batch [B] of keys. A policy that is not jittable (cvx) is called
    as it is, one member at a time, with a log line every tenth of the run (and ``progress``).
    Returns (info, actions) as NumPy with the slots on axis 0 ("one") or 1, the final state,
    and the mean host seconds per call of act (a decision's time where act is not jitted)."""
    one = mode == "one"
    if not (one or pol.jittable):
        raise ValueError(f"policy {pol.name!r} is not jittable: it runs one member at a time "
                         f"(vectorize=False)")
    k_reset, env_keys, pol_keys = _split_keys(keys[None] if one else keys, n_slots)
    if one:
        k_reset, env_keys, pol_keys = k_reset[0], env_keys[0], pol_keys[0]
    obs, state = _program("reset", pol, mode, stored, k_reset, params)(k_reset, params)
    act = None if pol.jittable else pol.act
    step = None
    infos, actions, spent = [], [], 0.0
    every = max(1, n_slots // 10)
    for t in range(n_slots):
        k_pol, k_env = _at_slot(pol_keys, t, one), _at_slot(env_keys, t, one)
        x = state if pol.clairvoyant else obs
        act = act or _program("act", pol, mode, stored, k_pol, x, params)
        t0 = time.perf_counter()
        action = act(k_pol, x, params)
        spent += time.perf_counter() - t0
        step = step or _program("step", pol, mode, stored, k_env, state, action, params)
        obs, state, _, _, info = step(k_env, state, action, params)
        infos.append(info)
        actions.append(action)
        if not pol.jittable and ((t + 1) % every == 0 or t + 1 == n_slots):
            log.info("%s: slot %d/%d, %.3f s per decision", pol.name, t + 1, n_slots,
                     spent / (t + 1))
            if progress is not None:
                progress(t + 1, n_slots)

    def host_stack(*xs):
        return np.stack([np.asarray(x) for x in xs], axis=0 if one else 1)

    return (jax.tree.map(host_stack, *infos), jax.tree.map(host_stack, *actions), state,
            spent / n_slots)


def batched_rollout(pol, params, n_slots: int, keys, vectorize: bool = True,
                    shared_params: bool = False, stored=None):
    """(info [B, T], actions [B, T] as NumPy, final state [B]) of :func:`rollout` of `pol` on B
    (params, key) pairs (`params` stacked [B]), or on B keys and one `params`
    (`shared_params`).

    Stepped from the host, not one ``lax.scan``: per slot, one call of the policy's batched
    ``act`` and one of the environment's batched ``step``, each compiled once per shape. The
    environment's programs (reset, step) are then compiled once for every policy run on the
    same shapes, and a policy's own program is its decision alone: on LLaMA-7B / Orin NX, 4
    rollouts x 100 slots of the oracle, dp-estimate and cloud-only took 25 s instead of 57 s
    (compile and run), of which the run took 30% more (the host's dispatch). The host adds
    1-2 ms a slot whatever the card (a tiny card's scan runs a slot in 0.1 ms), which matters
    only for long runs of cheap policies.
    `stored`: the policy's static key of ``lyapunov.stored_programs`` (None: trace).

    vectorize: run all B rollouts as one vmapped batch, or one after another (unbatched
    programs, the same as ``simulate``'s). The choice depends on the policy. In a batch,
    `lax.cond` and `lax.switch` become selects that run every branch, and a `while_loop` runs
    until its slowest member ends. For the cheap policies (fixed partitions, best cut) that
    costs nothing (best-cut: 0.028 ms per rollout-slot either way), and for the slot oracle
    without its memory-resource sweep (`units=0`, as SOLVER_KW) the batch wins because the
    solver's per-iteration overhead is shared: 1.8 ms per rollout-slot batched against 3.9 ms
    one after another (0.31 against 7.7 ms in an earlier run on a quieter machine). With the
    sweep (the default `units`) the resource DP runs on every bisection step of every slot of
    every member: one after another took 6.1 ms per rollout-slot, the batch had not finished
    after 10 minutes. So a caller that keeps the sweep (`agents.evaluate`) sets
    `vectorize=False`; the experiments batch. (Measured on this repository's 2 shared CPU cores:
    LLaMA-7B / Orin NX, 8 rollouts x 200 slots on the Norway traces, second call after
    compilation.)

    A batch runs in chunks of ``CHUNK`` members (fewer: the next power of two), the last one
    padded with copies of the last member: the compiled programs then depend on the chunk,
    not on B, so experiments with different batch sizes share them (through the persistent
    compilation cache, across processes).
    """
    if vectorize:
        mode = "shared" if shared_params else "batch"
        b = int(keys.shape[0])
        size = CHUNK if b > CHUNK else 1 << (b - 1).bit_length()
        runs = []
        for start in range(0, b, size):
            idx = np.minimum(np.arange(start, start + size), b - 1)
            part = params if shared_params else jax.tree.map(lambda x, i=idx: np.asarray(x)[i],
                                                             params)
            runs.append(_stepped(pol, part, n_slots, keys[idx], mode, stored))
        info, actions = (jax.tree.map(lambda *x: np.concatenate(x)[:b], *(r[j] for r in runs))
                         for j in (0, 1))
        return info, actions, jax.tree.map(lambda *x: jnp.concatenate(x)[:b],
                                           *(r[2] for r in runs))
    runs = [_stepped(pol, params if shared_params else _member(params, i), n_slots,
                     keys[i], "one", stored) for i in range(int(keys.shape[0]))]
    info, actions = (jax.tree.map(lambda *x: np.stack(x), *(r[j] for r in runs))
                     for j in (0, 1))
    return info, actions, jax.tree.map(lambda *x: jnp.stack(x), *(r[2] for r in runs))


def summarize(info, lam_mean: float, decision_time_s: float) -> dict:
    """Metrics of a trajectory ``info`` (StepInfo with a leading [T] axis, T >= 4).

    Latency (mean and p95), energy, accuracy and cloud cost are averaged over the slots whose
    requests were answered, those an outage caught included (they pay the retry waits and the
    edge fallback, docs/design.md §2.7); backlog, penalty and DPP over all slots.
    ``unrunnable_frac``: slots whose action could never run (memory, privacy floor; no solver
    or learned policy chooses one); ``caught_frac``: slots whose partition crossed the link
    during an outage; ``failure_frac``: failed requests over the requests that left the
    backlog (answered or failed).
    ``stable``: the backlog's least-squares slope over the second half is at most 5% of the
    mean arrival rate (``lyapunov.queues.is_rate_stable``).
    """
    info = jax.tree.map(np.asarray, info)
    ok = info.feasible.astype(bool)
    lat = info.latency_s[ok]

    def mean(x):
        return float(np.mean(x)) if x.size else float("nan")

    q = info.backlog.astype(np.float64)
    return {
        "latency_mean_s": mean(lat),
        "latency_p95_s": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "energy_mean_j": mean(info.energy_j[ok]),
        "accuracy_drop_mean": mean(info.accuracy_drop[ok]),
        "cloud_cost_mean": mean(info.cloud_cost[ok]),
        "backlog_mean": mean(q),
        "dpp_mean": mean(info.dpp),
        "penalty_mean": mean(info.penalty),
        "service_mean": mean(info.service),
        "arrivals_mean": mean(info.arrivals),
        "unrunnable_frac": float(1.0 - info.runnable.astype(bool).mean()),
        "caught_frac": float(info.caught.astype(bool).mean()),
        "failure_frac": _ratio(float(info.failed.sum()),
                               float(info.failed.sum() + info.service.sum())),
        "decision_time_s": float(decision_time_s),
        "backlog_growth": float(backlog_growth_rate(q)),
        "stable": bool(is_rate_stable(q, lam_mean)),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def decision_time(policy: Policy, params, x, repeats: int = 10, stored=None) -> float:
    """Mean wall time (s) of one jitted decision at batch 1, after a warm-up call (the program
    of the one-by-one rollout's act: ``simulate`` compiles it once for both).

    stored: the static key of the policy's stored program (``lyapunov.stored_programs``;
    None: trace it)."""
    key = jax.random.PRNGKey(0)
    act = _program("act", policy, "one", stored, key, x, params)
    jax.block_until_ready(act(key, x, params))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(act(key, x, params))
    return (time.perf_counter() - t0) / repeats


def _as_params(scenario) -> E.EnvParams:
    return scenario.build() if isinstance(scenario, E.Scenario) else scenario


def simulate(policy: Policy | str, scenario: E.Scenario | E.EnvParams, n_slots: int,
             seed: int = 0, progress: Callable[[int, int], None] | None = None,
             return_trajectory: bool = False) -> dict:
    """Run ``policy`` for ``n_slots`` (>= 4) slots of ``scenario`` and return its metrics.

    ``policy``: a Policy or a policy string of ``lyapunov.registry.resolve`` (a registered
    name, or ``checkpoint:DIR`` once its loader is imported; a run directory of several seeds
    runs the first and logs which).

    Keys: latency_mean_s, latency_p95_s, energy_mean_j, accuracy_drop_mean, cloud_cost_mean,
    backlog_mean, dpp_mean, penalty_mean, service_mean, arrivals_mean, unrunnable_frac,
    caught_frac, failure_frac,
    decision_time_s (wall time of one decision: the jitted act after warm-up, or the cvx
    solve), backlog_growth, stable, policy, n_slots, seed; plus ``trajectory`` (the StepInfo
    arrays as NumPy) when asked.
    """
    if n_slots < 4:
        raise ValueError(f"n_slots must be >= 4, got {n_slots}")
    stored = None
    if isinstance(policy, str):
        stored = _stored_key(policy)
        found = registry.resolve(policy)
        if len(found) > 1:
            log.info("%s names %d policies (%s); simulating the first", policy, len(found),
                     ", ".join(p.name for p in found))
        policy = found[0]
    params = _as_params(scenario)
    key = jax.random.PRNGKey(seed)
    info, _, state, decision = _stepped(policy, params, n_slots, key, "one", stored, progress)
    if policy.jittable:  # (the host's seconds per call above are its dispatch, not its work)
        x = state if policy.clairvoyant else E.observe(state)
        decision = decision_time(policy, params, x, stored=stored)
    out = summarize(info, float(params.lam_mean), decision)
    out.update(policy=policy.name, n_slots=int(n_slots), seed=int(seed))
    if return_trajectory:
        out["trajectory"] = jax.tree.map(np.asarray, info)
    return out


def _stored_key(text: str):
    """The static key of the stored programs of the policy named ``text``
    (``lyapunov.stored_programs``): a registered name whose factory lives in the project's
    packages (its program is then fixed by the sources and the arguments); None for anything
    else (a checkpoint's weights are constants of its program; a policy registered from
    outside is code the stored program's key does not cover)."""
    if ":" in text:
        return None
    spec = registry.get(text)
    if spec.factory is None or spec.factory.__module__.split(".")[0] not in PACKAGES:
        return None
    return ("policy", text)
