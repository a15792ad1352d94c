"""Policy export: the torch module and the ONNX graph reproduce the Flax policy (logits within
1e-5, the same greedy actions) on 1,000 random observations; the CLI round trip."""

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from flax import nnx  # noqa: E402

from agents import checkpoint  # noqa: E402
from agents.actions import ActionConfig, make_space  # noqa: E402
from agents.networks import ActorCritic, NetConfig  # noqa: E402
from bridge import export, policy_io, torch_policy  # noqa: E402
from costmodel.cards import ModelCard  # noqa: E402
from costmodel.spec import make_spec  # noqa: E402

SHAPES = (17, 8, 4)  # observe_features' 17 scalars, a window of 8 slots, 4 channels
LEGACY_SHAPES = (16, 8, 3)  # before the thermal state and the latency channel


SMALL = ModelCard("small-8x4", 8, 4, 2, 256, 768, 1000, "swiglu", True)


def _save(path, kind, privacy_layers=0, sharpen=True, seed=0, card="smollm2-135m",
          shapes=SHAPES, tp=False):
    """A freshly initialized policy (default: SmolLM2-135M on the Pi 5), saved with
    agents.checkpoint.

    sharpen: scale the output layers (initialized at 0.01) to logits of order 1-10, so the
    greedy choices depend on the network and not only on the stay prior, as after training.
    """
    spec = make_spec(card, "rpi5", privacy_layers=privacy_layers)
    space = make_space(spec, ActionConfig(kind=kind), tp=tp)
    net = NetConfig()
    model = ActorCritic(space, *shapes, net, nnx.Rngs(seed))
    if sharpen:
        rng = np.random.default_rng(seed)
        layers = [model.high] + ([model.low2] if kind != "layerwise" else [])
        for layer in layers:
            layer.kernel[...] = layer.kernel[...] * 300.0
            layer.bias[...] = rng.standard_normal(layer.bias.shape).astype(np.float32)
    return checkpoint.save(path, model, net, shapes)


@pytest.fixture(scope="module")
def hier_ck(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("ck") / "hier", "hier")


def _check(results, n):
    for p in results:
        assert p.n == n
        assert p.action_agreement == 1.0, p
        assert p.max_logit_diff <= 1e-5, p


@pytest.mark.slow
def test_parity_hier_1000(hier_ck):
    _check(export.parity(hier_ck, n=1000, seed=0), 1000)


@pytest.mark.parametrize("kind,privacy,sharpen,tp", [("flat_head", 0, True, False),
                                                      ("layerwise", 3, True, False),
                                                      ("hier", 5, False, False),
                                                      ("hier", 0, True, True),
                                                      ("hier", 2, True, True),
                                                      ("flat_head", 0, True, True)])
def test_parity_other_kinds(tmp_path, kind, privacy, sharpen, tp):
    """The other action kinds, a privacy floor, an untouched fresh policy (near-uniform
    logits: the stay prior decides) and the tensor-parallel action space (group mode tp, FFN
    shares phi, the residual state both) on a smaller card (less to compile)."""
    ck = _save(tmp_path / kind, kind, privacy, sharpen, seed=1, card=SMALL, tp=tp)
    if tp:
        module = torch_policy.from_checkpoint(ck)
        assert module.cfg.tp and module.cfg.n_ffn == 3 + len(module.cfg.phi_grid)
        out = export.torch_reference(module)(**export.random_inputs(module.cfg, 300, seed=2))
        assert (out["low"] % module.cfg.n_ffn >= 3).any()  # tp options are chosen
        if kind == "hier":
            assert (out["modes"] == torch_policy.MODE_TP).any()
    _check(export.parity(ck, n=300, seed=2), 300)


def test_torch_mirror_refuses_an_uninterpretable_action_space_version(hier_ck):
    config = json.loads((hier_ck / "config.json").read_text())
    for v in (0, 3):
        with pytest.raises(ValueError, match="action-space version .* cannot be interpreted"):
            torch_policy.PolicyConfig({**config, "action_space_version": v})
    assert torch_policy.PolicyConfig({k: v for k, v in config.items()
                                      if k != "action_space_version"}).n_ffn == 3


def test_greedy_actions_vary_and_masks_bind(hier_ck):
    """The random observations exercise the masks: the greedy choices differ across the batch
    and the memory budget forces some layers off the edge."""
    module = torch_policy.from_checkpoint(hier_ck)
    inputs = export.random_inputs(module.cfg, 1000, seed=0)
    out = export.torch_reference(module)(**inputs)
    assert len(np.unique(out["modes"], axis=0)) > 5
    assert len(np.unique(out["embed"])) == 2
    assert len(np.unique(out["low"], axis=0)) > 20
    tight = inputs["budget"] < 0.3 * (module.cfg.n_layers * inputs["layer_mem"][:, -1, 0])
    assert (out["modes"][tight] != 0).any(axis=1).all()  # nothing fits fully on the edge


def test_state_dict_layout(hier_ck):
    arrays = dict(np.load(hier_ck / "params.npz"))
    sd = torch_policy.state_dict_from_flax(arrays)
    k = arrays["['conv1']['kernel'].value"]  # Flax [k, in, out]
    np.testing.assert_array_equal(sd["conv1.weight"].numpy(), k.transpose(2, 1, 0))
    np.testing.assert_array_equal(sd["torso1.weight"].numpy(),
                                  arrays["['torso1']['kernel'].value"].T)
    arrays["['bogus']['kernel'].value"] = np.zeros((2, 2), np.float32)
    with pytest.raises(RuntimeError):
        torch_policy.build(json.loads((hier_ck / "config.json").read_text()),
                           torch_policy.state_dict_from_flax(arrays))


def _args(**kw):
    ap = argparse.ArgumentParser()
    export.add_args(ap)
    argv = [x for k, v in kw.items() for x in (f"--{k}", str(v))]
    return ap.parse_args(argv)


def test_cli_torch_and_onnx(hier_ck, tmp_path, capsys):
    pt, onnx_file = tmp_path / "policy.pt", tmp_path / "policy.onnx"
    assert export.cli(_args(checkpoint=hier_ck, format="torch", out=pt, parity=0)) == 0
    assert export.cli(_args(checkpoint=hier_ck, format="onnx", out=onnx_file, parity=0)) == 0
    assert "wrote" in capsys.readouterr().out
    module = torch_policy.load(pt)
    inputs = export.random_inputs(module.cfg, 64, seed=3)
    want = export.torch_reference(torch_policy.from_checkpoint(hier_ck))(**inputs)
    got_pt = export.torch_reference(module)(**inputs)
    got_onnx = export.onnx_reference(export.onnx_session(onnx_file))(**inputs)
    for name in policy_io.OUTPUT_NAMES:
        np.testing.assert_array_equal(got_pt[name], want[name])
        np.testing.assert_allclose(got_onnx[name], want[name], atol=1e-5, rtol=0)
    one = {k: v[:1] for k, v in inputs.items()}  # batch 1 through the dynamic batch axis
    assert export.onnx_reference(export.onnx_session(onnx_file))(**one)["low"].shape == (1, 30)


def test_run_directory_exports_its_seed(hier_ck, tmp_path, capsys):
    """``--checkpoint runs/hier`` (a training run: seed<k>/ subdirectories) exports its lowest
    seed, ``--seed K`` another one; a seed that is not there is a one-line error."""
    import argparse
    import shutil

    run = tmp_path / "run"
    for k in (2, 1):
        shutil.copytree(hier_ck, run / f"seed{k}")
    assert export.seed_dir(run) == run / "seed1"
    assert export.seed_dir(run, 2) == run / "seed2"
    assert export.seed_dir(hier_ck) == hier_ck
    with pytest.raises(ValueError, match="--seed 5: .* holds seed1, seed2"):
        export.seed_dir(run, 5)
    ap = argparse.ArgumentParser()
    export.add_args(ap)
    args = ap.parse_args(["--checkpoint", str(run), "--format", "onnx",
                          "--out", str(tmp_path / "p.onnx"), "--parity", "0", "--seed", "2"])
    assert export.cli(args) == 0 and (tmp_path / "p.onnx").stat().st_size > 1000
    assert args.checkpoint == str(run / "seed2")
