"""The slot environment: information structure, hand-worked slot, infeasible actions, queue
invariants, common random numbers, jit == no-jit, vmap over keys, scenario validation."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from costmodel.cards import ModelCard
from costmodel.costs import request_costs
from costmodel.link import InputError
from costmodel.outage import RetryConfig
from costmodel.partition import cloud_only, edge_only, layer_cut
from lyapunov import env as E
from lyapunov import processes as pr
from lyapunov.queues import Queues

CARD = ModelCard("tiny-2x3", 2, 3, 3, 192, 768, 500, "swiglu", False)
LINK = pr.LinkConfig(bandwidth=pr.BandwidthConfig(kind="ar1", mean_mbps=20.0, std_mbps=10.0,
                                                  rho=0.8),
                     rtt_ms=20.0, rtt_jitter_ms=5.0,
                     share=pr.ShareConfig(kind="ar1", median_share=0.3, logit_std=1.0, rho=0.9))
SC = E.Scenario(model=CARD, prompt_tokens=64, new_tokens=16, tau_s=0.5, V=2.0, e_bar_j=0.2,
                a_bar=0.5, c_bar_usd=1e-5, arrival=pr.ArrivalConfig(rate=3.0), link=LINK,
                history=4, reward_scale=10.0, episode_slots=6)
PARAMS = SC.build()
ACTIONS = [cloud_only(2), edge_only(2, 3), layer_cut(2, 3, 1, 1)]
reset = jax.jit(E.reset)
step = jax.jit(E.step)


def _tree_close(a, b, rtol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   rtol=rtol, atol=1e-6)


def test_scenario_validation_names_the_field():
    for field, value in (("tau_s", 0.0), ("V", -1.0), ("ewma", 0.0), ("ewma", 1.5),
                         ("history", 0), ("precisions", (0, 3)), ("precisions", ()),
                         ("e_bar_j", float("nan")), ("reward_scale", 0.0),
                         ("failure_penalty", -1.0)):
        with pytest.raises(E.ScenarioError, match=field):
            dataclasses.replace(SC, **{field: value})
    with pytest.raises(InputError, match="privacy_layers"):
        dataclasses.replace(SC, privacy_layers=5).build()


def test_tp_option_space_flag_is_static_validated_and_off_by_default():
    assert PARAMS.tp is False and SC.tp is False
    with pytest.raises(E.ScenarioError, match="Scenario.tp"):
        dataclasses.replace(SC, tp="yes")
    with pytest.raises(E.ScenarioError, match="EnvParams.tp"):
        PARAMS.replace(tp=1)
    on = dataclasses.replace(SC, tp=True).build()
    assert on.tp is True
    # static: not a leaf (the same leaves as without it), and it survives a jit boundary
    assert len(jax.tree.leaves(on)) == len(jax.tree.leaves(PARAMS))
    assert jax.jit(lambda p: p)(on).tp is True


def test_memory_can_bind_is_decided_at_build_and_checked_on_every_concrete_params():
    """``EnvParams.memory_can_bind`` (static: the planners' slot oracle drops its memory
    machinery where it is False): ``make_params`` sets it from the spec; a params that claims
    memory cannot bind while its spec's budget can be overrun fails on construction (a
    ``replace`` too), not while JAX rebuilds it with tracers or placeholders."""
    tiny = dataclasses.replace(SC, device="orin-nx")  # a 2-layer card: memory never binds
    free = tiny.build()
    assert free.memory_can_bind is False
    assert dataclasses.replace(tiny, mem_budget_gb=1e-4).build().memory_can_bind is True
    assert len(jax.tree.leaves(free)) == len(jax.tree.leaves(PARAMS))
    assert jax.jit(lambda p: p)(free).memory_can_bind is False
    jax.vmap(lambda k, p: E.reset(k, p)[0].queues.q, in_axes=(0, None))(
        jax.random.split(jax.random.PRNGKey(0), 2), free)
    tight = free.spec.replace(edge=free.spec.edge.replace(mem_budget=jnp.float32(1e3)))
    with pytest.raises(E.ScenarioError, match="EnvParams.memory_can_bind"):
        free.replace(spec=tight)
    assert free.replace(spec=tight, memory_can_bind=True).memory_can_bind is True
    with pytest.raises(E.ScenarioError, match="EnvParams.memory_can_bind"):
        free.replace(memory_can_bind=0)


def test_observation_holds_only_the_past():
    """Information structure: the observation at t carries the link of t-1 (and older), never
    the link of slot t that drives the slot's costs; after the step it becomes observed."""
    obs, state = reset(jax.random.PRNGKey(0), PARAMS)
    _tree_close(obs.link_last, state.link_prev)
    assert float(obs.bw_hist[-1]) == float(state.link_prev.bw_down_mbps)
    assert obs.bw_hist.shape == (SC.history,)
    assert not any(f.name == "link_t" for f in dataclasses.fields(E.Obs))
    action = ACTIONS[2]
    obs2, state2, _, _, info = step(jax.random.PRNGKey(1), state, action, PARAMS)
    expect = request_costs(action, E.cost_link(state.link_t), PARAMS.spec)
    assert math.isclose(float(info.latency_s), float(expect.latency_s), rel_tol=1e-6)
    _tree_close(obs2.link_last, state.link_t)
    assert float(obs2.bw_hist[-1]) == float(state.link_t.bw_down_mbps)
    np.testing.assert_array_equal(np.asarray(obs2.bw_hist[:-1]), np.asarray(obs.bw_hist[1:]))
    assert int(state2.t) == 1


def test_hand_worked_slot():
    """mu = tau / l; Q' = max(Q - mu, 0) + A; Z_i' = max(Z_i + x_i - x_bar_i, 0);
    DPP = V l + Q (A - mu) + sum_i Z_i (x_i - x_bar_i); reward = -DPP / scale."""
    _, state = reset(jax.random.PRNGKey(2), PARAMS)
    state = state.replace(queues=Queues(*(jnp.float32(x) for x in (7.0, 3.0, 2.0, 4.0))))
    _, state2, reward, _, info = step(jax.random.PRNGKey(3), state, ACTIONS[0], PARAMS)
    c = request_costs(ACTIONS[0], E.cost_link(state.link_t), PARAMS.spec)
    lat, e, a, cc = (float(c.latency_s), float(c.energy_j), float(c.accuracy_drop),
                     float(c.cloud_cost))
    mu = 0.5 / lat
    arr = float(info.arrivals)
    dpp = 2.0 * lat + 7.0 * (arr - mu) + 3.0 * (e - 0.2) + 2.0 * (a - 0.5) + 4.0 * (cc - 1e-5)
    assert math.isclose(float(info.service), mu, rel_tol=1e-5)
    assert math.isclose(float(info.dpp), dpp, rel_tol=1e-5, abs_tol=1e-5)
    assert math.isclose(float(reward), -dpp / 10.0, rel_tol=1e-5, abs_tol=1e-6)
    parts = (info.dpp_penalty, info.dpp_backlog, info.dpp_energy, info.dpp_accuracy,
             info.dpp_cloud)
    assert math.isclose(sum(float(x) for x in parts), float(info.dpp), rel_tol=1e-5,
                        abs_tol=1e-5)
    q = state2.queues
    assert math.isclose(float(q.q), max(7.0 - mu, 0.0) + arr, rel_tol=1e-5)
    assert math.isclose(float(q.z_e), max(3.0 + e - 0.2, 0.0), rel_tol=1e-5)
    assert math.isclose(float(q.z_a), max(2.0 + a - 0.5, 0.0), rel_tol=1e-5)
    assert math.isclose(float(q.z_c), max(4.0 + cc - 1e-5, 0.0), rel_tol=1e-5)


def test_unrunnable_action_serves_nothing_and_pays_the_failure_penalty():
    """Over the memory budget: mu = 0, nothing charged to the virtual queues, penalty =
    failure_penalty, and the DPP is exactly V p + Q A + Z_E (0 - E_bar): no sentinel."""
    small = dataclasses.replace(SC, mem_budget_gb=1e-4).build()  # edge-only does not fit
    _, state = reset(jax.random.PRNGKey(4), small)
    state = state.replace(queues=Queues(*(jnp.float32(x) for x in (5.0, 1.0, 0.0, 0.0))))
    _, s2, _, _, info = step(jax.random.PRNGKey(5), state, ACTIONS[1], small)
    assert not bool(info.runnable) and not bool(info.memory_ok) and not bool(info.feasible)
    arr = float(info.arrivals)
    assert float(info.service) == 0.0 and float(info.failed) == 0.0
    assert float(info.energy_j) == 0.0 and float(info.penalty) == SC.failure_penalty
    dpp = 2.0 * SC.failure_penalty + 5.0 * arr + 1.0 * (0.0 - 0.2)
    assert math.isclose(float(info.dpp), dpp, rel_tol=1e-6)
    assert math.isclose(float(s2.queues.q), 5.0 + arr, rel_tol=1e-6)
    assert math.isclose(float(s2.queues.z_e), 0.8, rel_tol=1e-6)


def _down(state):
    return state.replace(link_t=state.link_t.replace(
        bw_up_mbps=jnp.float32(0.0), bw_down_mbps=jnp.float32(0.0), up=jnp.bool_(False)))


def test_a_caught_request_resumes_after_the_retry_that_finds_the_link_back():
    """The test link never fails for long (outage_remaining_s = half a slot), so the request
    resumes at the first retry: it waits the timeout plus the first mean backoff delay
    (5 + 0.5 s with the runtime's defaults) and then runs as planned on the mean link."""
    assert E.outage_remaining_s(PARAMS.link, SC.tau_s) == pytest.approx(0.25)
    wait, resumes = SC.retry.recovery(0.25)
    assert resumes and wait == pytest.approx(SC.retry.timeout_s + 0.5 * SC.retry.base_s)
    _, state = reset(jax.random.PRNGKey(4), PARAMS)
    state = _down(state)
    _, _, _, _, info = step(jax.random.PRNGKey(5), state, ACTIONS[0], PARAMS)
    back = request_costs(ACTIONS[0], E.mean_link(PARAMS), PARAMS.spec)
    assert bool(info.caught) and bool(info.feasible) and float(info.failed) == 0.0
    assert math.isclose(float(info.latency_s), wait + float(back.latency_s), rel_tol=1e-5)
    assert math.isclose(float(info.cloud_cost), float(back.cloud_cost), rel_tol=1e-5)
    idle = float(PARAMS.spec.edge.p_idle)
    assert math.isclose(float(info.energy_j), float(back.energy_j) + idle * wait, rel_tol=1e-5)


def test_a_request_caught_by_a_long_outage_pays_the_waits_then_runs_on_the_edge():
    """With one attempt only (no retries) the budget is the timeout: the request waits it and
    finishes edge-only: latency = wait + edge-only latency, energy = edge-only energy + idle
    power x wait, no cloud cost; it is answered."""
    sc = dataclasses.replace(SC, retry=RetryConfig(timeout_s=2.0, max_retries=0))
    params = sc.build()
    assert not bool(params.retry_resumes) and float(params.retry_wait_s) == 2.0
    _, state = reset(jax.random.PRNGKey(4), params)
    state = _down(state)
    _, _, _, _, info = step(jax.random.PRNGKey(5), state, ACTIONS[0], params)
    edge = request_costs(ACTIONS[1], E.cost_link(state.link_t), params.spec)
    assert bool(info.caught) and bool(info.runnable) and bool(info.feasible)
    assert not bool(info.link_ok) and not bool(info.link_up)
    assert math.isclose(float(info.latency_s), float(edge.latency_s) + 2.0, rel_tol=1e-5)
    idle = float(params.spec.edge.p_idle)
    assert math.isclose(float(info.energy_j), float(edge.energy_j) + idle * 2.0, rel_tol=1e-5)
    assert float(info.cloud_cost) == 0.0 and float(info.failed) == 0.0
    assert math.isclose(float(info.service), SC.tau_s / float(info.latency_s), rel_tol=1e-5)
    # the edge-only partition does not notice the outage
    _, _, _, _, info3 = step(jax.random.PRNGKey(5), state, ACTIONS[1], params)
    assert not bool(info3.caught) and math.isclose(float(info3.latency_s),
                                                   float(edge.latency_s), rel_tol=1e-5)


def test_a_caught_request_fails_where_the_edge_cannot_hold_the_model():
    small = dataclasses.replace(SC, mem_budget_gb=1e-4,
                                retry=RetryConfig(timeout_s=2.0, max_retries=0)).build()
    _, state = reset(jax.random.PRNGKey(4), small)
    state = _down(state).replace(queues=Queues(*(jnp.float32(x) for x in (5.0, 0, 0, 0))))
    _, s2, _, _, info = step(jax.random.PRNGKey(5), state, ACTIONS[0], small)
    assert bool(info.caught) and not bool(info.feasible)
    assert float(info.service) == 0.0
    assert math.isclose(float(info.failed), SC.tau_s / 2.0, rel_tol=1e-5)
    assert math.isclose(float(info.latency_s), 2.0, rel_tol=1e-6)
    assert float(info.penalty) == SC.failure_penalty
    arr = float(info.arrivals)
    assert math.isclose(float(s2.queues.q), 5.0 - SC.tau_s / 2.0 + arr, rel_tol=1e-5)


def test_retry_schedule_arithmetic():
    """The runtime's defaults: timeout 5 s, ceilings 1, 2, 4, 8, 16, 30, 30, 30, 30 s, full
    jitter (mean half the ceiling): attempts start at 0, 5.5, 11.5, 18.5, 27.5, 40.5, 60.5,
    80.5, 100.5, 120.5 s; giving up takes 10 x 5 + 75.5 = 125.5 s."""
    r = RetryConfig()
    assert r.attempt_starts() == pytest.approx([0, 5.5, 11.5, 18.5, 27.5, 40.5, 60.5, 80.5,
                                                100.5, 120.5])
    assert r.expected_wait_s() == pytest.approx(125.5)
    assert r.recovery(11.0) == (pytest.approx(11.5), True)
    assert r.recovery(121.0) == (pytest.approx(125.5), False)


def test_outage_remaining_from_a_trace_is_length_biased():
    """Zero runs of 1 and 3 slots (tau 2 s): sum l (l + 1) / 2 / sum l = (1 + 6) / 4 slots,
    less half a slot: 2.5 s."""
    link = PARAMS.link.replace(bandwidth=pr.ReplayParams(
        jnp.asarray([5.0, 0.0, 5.0, 0.0, 0.0, 0.0, 5.0], jnp.float32), jnp.int32(0)))
    assert E.outage_remaining_s(link, 2.0) == pytest.approx(7 / 4 * 2.0 - 1.0)


def test_ignoring_outages_never_looks_better_than_avoiding_them():
    """On a link with outages, a policy that crosses the link in every slot cannot show a lower
    mean latency or DPP than the same policy that switches to the edge in outage slots (the
    old semantics excused exactly the requests the outage caught)."""
    sc = dataclasses.replace(SC, link=dataclasses.replace(LINK, outage_prob=0.3,
                                                          mean_outage_slots=2.0))
    params = sc.build()

    def run(avoid, key):
        def body(state, k):
            # avoid: clairvoyant avoidance, the same partition but edge-only when down
            down = avoid & ~E.link_carried(state.link_t)
            act = jax.tree.map(lambda x, y: jnp.where(down, x, y), ACTIONS[1], ACTIONS[0])
            _, state, _, _, info = E.step(k, state, act, params)
            return state, info

        _, state = E.reset(key, params)
        _, info = jax.lax.scan(body, state, jax.random.split(key, 200))
        return info

    # both policies in one program (vmapped over the flag), on the same key
    both = jax.jit(jax.vmap(run, in_axes=(0, None)))(jnp.array([False, True]),
                                                      jax.random.PRNGKey(0))
    ign, avo = (jax.tree.map(lambda x, i=i: x[i], both) for i in range(2))
    assert int(ign.caught.sum()) > 10 and int(avo.caught.sum()) == 0
    assert float(ign.latency_s.mean()) > float(avo.latency_s.mean())
    assert float(ign.dpp.mean()) > float(avo.dpp.mean())


def _random_rollout(key, n):
    _, state = E.reset(key, PARAMS)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *ACTIONS)

    def body(state, k):
        k_a, k_s = jax.random.split(k)
        i = jax.random.randint(k_a, (), 0, len(ACTIONS))
        action = jax.tree.map(lambda x: x[i], stacked)
        _, state2, _, _, info = E.step(k_s, state, action, PARAMS)
        return state2, (state.queues, state2.queues, info)

    _, out = jax.lax.scan(body, state, jax.random.split(key, n))
    return out


def test_queues_stay_nonnegative_and_follow_the_updates():
    q0, q1, info = jax.jit(_random_rollout, static_argnums=1)(jax.random.PRNGKey(6), 200)
    for field in ("q", "z_e", "z_a", "z_c"):
        assert np.all(np.asarray(getattr(q1, field)) >= 0)
    expect = np.maximum(np.asarray(q0.q) - np.asarray(info.service), 0) + np.asarray(
        info.arrivals)
    np.testing.assert_allclose(np.asarray(q1.q), expect, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(info.dpp)))


def test_common_random_numbers():
    """The same key gives the same arrivals and next link whatever the action."""
    _, state = reset(jax.random.PRNGKey(7), PARAMS)
    key = jax.random.PRNGKey(8)
    outs = [step(key, state, a, PARAMS) for a in ACTIONS]
    for o in outs[1:]:
        assert float(o[4].arrivals) == float(outs[0][4].arrivals)
        _tree_close(o[1].link_t, outs[0][1].link_t, rtol=0)
        _tree_close(o[1].link_state, outs[0][1].link_state, rtol=0)


@pytest.mark.extended
def test_jit_equals_nojit():
    obs, state = reset(jax.random.PRNGKey(9), PARAMS)
    with jax.disable_jit():
        obs_e, state_e = E.reset(jax.random.PRNGKey(9), PARAMS)
        out_e = E.step(jax.random.PRNGKey(10), state_e, ACTIONS[2], PARAMS)
    _tree_close(obs, obs_e)
    _tree_close(step(jax.random.PRNGKey(10), state, ACTIONS[2], PARAMS), out_e)


@pytest.mark.slow
def test_vmap_over_keys_and_done():
    keys = jax.random.split(jax.random.PRNGKey(11), 3)
    obs, state = jax.jit(jax.vmap(E.reset, in_axes=(0, None)))(keys, PARAMS)
    out = jax.jit(jax.vmap(E.step, in_axes=(0, 0, None, None)))(keys, state, ACTIONS[0], PARAMS)
    for i in range(3):
        _, s_i = reset(keys[i], PARAMS)
        o_i = step(keys[i], s_i, ACTIONS[0], PARAMS)
        _tree_close(jax.tree.map(lambda x, i=i: x[i], out), o_i)
    _, state = reset(keys[0], PARAMS)
    dones = []
    for t in range(SC.episode_slots):
        _, state, _, done, _ = step(jax.random.PRNGKey(t), state, ACTIONS[0], PARAMS)
        dones.append(bool(done))
    assert dones == [False] * (SC.episode_slots - 1) + [True]
    vec = E.obs_vector(obs.__class__(*(jax.tree.map(lambda x: x[0], getattr(obs, f.name))
                                       for f in dataclasses.fields(obs))), PARAMS)
    assert vec.shape == (9 + 2 * SC.history,) and bool(jnp.all(jnp.isfinite(vec)))


def test_stationary_means():
    """Known values: AR(1) on log bandwidth matched to mean 20 Mbit/s; constant and Markov
    shares; the mean RTT is base + jitter."""
    assert math.isclose(float(PARAMS.bw_mean_mbps), 20.0, rel_tol=1e-3)
    assert math.isclose(float(PARAMS.rtt_mean_ms), 25.0, rel_tol=1e-6)
    assert 0.3 < float(PARAMS.share_mean) < 0.5  # E[sigmoid] of a logit-normal, median 0.3
    markov = dataclasses.replace(SC, link=dataclasses.replace(LINK, share=pr.ShareConfig(
        kind="markov", levels=(1.0, 0.5), transition=((0.5, 0.5), (0.5, 0.5))))).build()
    assert math.isclose(float(markov.share_mean), 0.75, rel_tol=1e-5)


# --- model mismatch and drift -----------------------------------------------------------------


def test_mismatch_validation_and_nominal_default():
    with pytest.raises(E.ScenarioError, match="unknown"):
        E.mismatch_of(["profile-eror"])
    with pytest.raises(E.ScenarioError, match="profile_error"):
        E.Mismatch(kinds=("profile-error",), profile_error=1.5)
    assert E.mismatch_of(["none", "diurnal", "diurnal"]).kinds == ("diurnal",)
    _tree_close(PARAMS.true_spec, PARAMS.spec)
    assert float(PARAMS.throttle_max) == 1.0 and float(PARAMS.diurnal_log_depth) == 0.0


def test_profile_error_and_msg_overhead_charge_the_true_model():
    """Planners read the nominal spec; the environment charges the perturbed one."""
    mm = E.mismatch_of(["profile-error", "msg-overhead"], seed=3)
    p = dataclasses.replace(SC, mismatch=mm).build()
    _tree_close(p.spec, PARAMS.spec)
    fac = E.profile_error_factors(mm)
    assert all(0.7 <= f <= 1.3 for f in fac.values()) and len(set(fac.values())) == 4
    np.testing.assert_allclose(float(p.true_spec.edge.flops),
                               float(p.spec.edge.flops) * fac["edge_compute"], rtol=1e-6)
    np.testing.assert_allclose(float(p.true_spec.cloud.bw),
                               float(p.spec.cloud.bw) * fac["cloud_memory"], rtol=1e-6)
    np.testing.assert_allclose(float(p.true_spec.edge.msg_overhead_s),
                               float(p.spec.edge.msg_overhead_s) + 2e-3, rtol=1e-5)
    _, state = reset(jax.random.PRNGKey(0), p)
    for a in ACTIONS:
        _, _, _, _, info = step(jax.random.PRNGKey(1), state, a, p)
        true = request_costs(a, E.cost_link(state.link_t), p.true_spec)
        nominal = request_costs(a, E.cost_link(state.link_t), p.spec)
        np.testing.assert_allclose(float(info.latency_s), float(true.latency_s), rtol=1e-5)
        if a is not ACTIONS[1]:  # edge-only: compute-free of the link, still perturbed
            assert float(info.latency_s) != pytest.approx(float(nominal.latency_s), rel=1e-4)


def test_throttling_heats_under_load_and_recovers_when_idle():
    mm = E.Mismatch(kinds=("throttling",), throttle_slots=2.0, throttle_threshold=0.0)
    p = dataclasses.replace(SC, mismatch=mm).build()
    _, state = reset(jax.random.PRNGKey(0), p)
    busy = Queues.zeros().replace(q=jnp.float32(1e4))  # a backlog the slot cannot drain
    lats = []
    for t in range(6):
        obs, state, _, _, info = step(jax.random.PRNGKey(t), state.replace(queues=busy),
                                      ACTIONS[1], p)
        lats.append(float(info.latency_s))
    assert float(state.heat) > 0.5 and float(obs.heat) == float(state.heat)
    assert lats[-1] > lats[0] * 1.2  # the edge slowed
    np.testing.assert_allclose(float(obs.lat_hist[-1]), lats[-1], rtol=1e-6)
    hot = float(state.heat)
    for t in range(4):
        _, state, _, _, _ = step(jax.random.PRNGKey(10 + t), state, ACTIONS[0], p)
    assert float(state.heat) < hot / 4  # cloud-only: the edge idles and cools
    # off: no heat
    _, s0 = reset(jax.random.PRNGKey(0), PARAMS)
    _, s1, _, _, _ = step(jax.random.PRNGKey(0), s0.replace(queues=busy), ACTIONS[1], PARAMS)
    assert float(s1.heat) == 0.0


def test_diurnal_cycle_scales_the_cloud_share():
    mm = E.Mismatch(kinds=("diurnal",), diurnal_period_slots=8.0, diurnal_depth=10.0)
    p = dataclasses.replace(SC, mismatch=mm).build()
    base = dataclasses.replace(SC, link=dataclasses.replace(LINK, share=pr.ShareConfig()))
    pc = dataclasses.replace(base, mismatch=mm).build()  # share constant 1: the factor itself
    _, state = reset(jax.random.PRNGKey(0), pc)
    shares = []
    for t in range(8):
        shares.append(float(state.link_t.cloud_share))
        _, state, _, _, _ = step(jax.random.PRNGKey(t), state, ACTIONS[0], pc)
    want = [float(E.diurnal_factor(t, pc)) for t in range(8)]
    np.testing.assert_allclose(shares, want, rtol=1e-5)
    assert min(shares) == pytest.approx(0.1, rel=1e-4) and max(shares) <= 1.0
    # the same key's path with and without the cycle: the ratio is the factor
    _, s_on = reset(jax.random.PRNGKey(4), p)
    _, s_off = reset(jax.random.PRNGKey(4), PARAMS)
    np.testing.assert_allclose(float(s_on.link_t.cloud_share),
                               max(float(s_off.link_t.cloud_share) * want[0], 1e-4), rtol=1e-5)
