"""`splitwise export`: a trained Flax policy as a torch module or an ONNX graph, with parity.
Design: ``docs/design.md §4.5``.

- ``--format torch``: ``torch.save`` of ``{"config": config.json, "state_dict": ...}``; the
  module code is ``bridge.torch_policy.TorchPolicy`` (``torch_policy.load(FILE)``).
- ``--format onnx``: that module exported with ``torch.onnx.export`` (the TorchScript-based
  exporter, ``dynamo=False``: it needs no onnxscript), opset 17, dynamic batch axis; run it
  with onnxruntime (``onnx_session``).

Inputs and outputs of both are ``bridge.policy_io.INPUT_NAMES`` / ``OUTPUT_NAMES``: the
observation features (``agents.networks.Features``) and the mask context
(``agents.actions.MaskContext``) with a leading batch axis; out come the raw network outputs
(high-level logits, the low-level logits under the greedy high-level choice, the value) and the
greedy action (``agents.networks.greedy``).

``parity`` compares JAX (the checkpoint through ``agents``), torch and onnxruntime on random
observations and mask contexts: the largest absolute difference of every float output and the
fraction of observations whose greedy actions agree in every field.

This module imports torch, onnx and onnxruntime inside its functions only, so that the command
line can build its parser (``add_args``) without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from bridge.policy_io import ACTION_OUTPUTS, FLOAT_OUTPUTS, INPUT_NAMES, OUTPUT_NAMES

OPSET = 17


def runtime_block(config: dict, model: str | None = None) -> dict:
    """The constants an edge needs to run the exported policy without JAX
    (``bridge.exported_policy``): the model card it was trained for (``model``, else the
    checkpoint's training scenario's, else the one built-in card with its layers and heads),
    that card's head order (``costmodel.spec.edge_head_order`` of its accuracy profile), the
    runtime scenario's V, EWMA weights, history window and outage horizon
    (``lyapunov.env.Scenario`` defaults, as ``bridge.runtime_policy.runtime_params`` builds
    them), the activation precisions and the memory mask's margin."""
    from agents.actions import MEM_RTOL
    from bridge.runtime_policy import _checkpoint_model
    from costmodel.accuracy import accuracy_profile
    from costmodel.cards import CARDS, get_card
    from costmodel.partition import ACT_PRECISIONS
    from costmodel.spec import edge_head_order
    from lyapunov.env import OUTAGE_HORIZON, Scenario

    sp = config["space"]
    name = model or _checkpoint_model(config)
    if name is None:
        same = [c for c in CARDS.values()
                if (c.n_layers, c.n_heads) == (sp["n_layers"], sp["n_heads"])]
        if len(same) != 1:
            raise ValueError(f"the checkpoint does not record its model and {len(same)} cards "
                             f"have {sp['n_layers']} layers x {sp['n_heads']} heads: name it "
                             "with --model")
        name = same[0].name
    card = get_card(name)
    if (card.n_layers, card.n_heads) != (sp["n_layers"], sp["n_heads"]):
        raise ValueError(f"--model {name}: {card.n_layers} layers x {card.n_heads} heads, the "
                         f"checkpoint {sp['n_layers']} x {sp['n_heads']}")
    sc = Scenario()
    order = edge_head_order(accuracy_profile(card).head_w, card.group_size)
    return {"model": card.name, "head_order": order.tolist(), "V": float(sc.V),
            "ewma": float(sc.ewma), "lam_ewma": float(sc.lam_ewma),
            "history": int(sc.history), "outage_horizon": int(OUTAGE_HORIZON),
            "act_precisions": list(ACT_PRECISIONS), "mem_rtol": float(MEM_RTOL)}


def export_torch(checkpoint_dir: str | Path, out: str | Path, model: str | None = None) -> Path:
    """Write the torch form of an agents checkpoint (state dict + config + runtime
    constants, ``runtime_block``) to ``out``."""
    import torch

    from bridge import torch_policy
    from bridge.exported_policy import RUNTIME_KEY

    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    out = torch_policy.save(torch_policy.from_checkpoint(checkpoint_dir), config, out)
    blob = torch.load(out, map_location="cpu", weights_only=True)
    blob[RUNTIME_KEY] = runtime_block(config, model)
    torch.save(blob, out)
    return out


def onnx_bytes(module) -> bytes:
    """The ONNX serialization of a ``TorchPolicy`` (batch axis dynamic)."""
    import torch

    inputs = random_inputs(module.cfg, 2, seed=0)
    args = tuple(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)
    axes = {k: {0: "batch"} for k in (*INPUT_NAMES, *OUTPUT_NAMES)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation, traced constants
        torch.onnx.export(module, args, buf, dynamo=False, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          opset_version=OPSET)
    return buf.getvalue()


def export_onnx(checkpoint_dir: str | Path, out: str | Path, model: str | None = None) -> Path:
    """Write the ONNX form of an agents checkpoint to ``out``, with the checkpoint's config
    and the runtime constants (``runtime_block``) as metadata (``bridge.exported_policy``
    reads them with onnxruntime)."""
    import onnx

    from bridge import torch_policy
    from bridge.exported_policy import CONFIG_KEY, RUNTIME_KEY

    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    proto = onnx.load_from_string(onnx_bytes(torch_policy.from_checkpoint(checkpoint_dir)))
    for key, value in ((CONFIG_KEY, config), (RUNTIME_KEY, runtime_block(config, model))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())
    return out


def onnx_session(model: str | Path | bytes, threads: int = 1):
    """An onnxruntime session on the CPU with ``threads`` intra-op threads (inter-op 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def random_inputs(cfg, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random observations and mask contexts for a policy config
    (``bridge.torch_policy.PolicyConfig``).

    Features: scalars ~ N(0, 1) with a few non-negative log-scaled entries, history
    log-bandwidth ~ |N(0, 1)|, cloud share ~ U(0, 1), outage flags ~ Bernoulli(0.1). Mask
    context: per-layer memory of each (head bin, FFN side) option from a random per-head,
    per-K/V and per-FFN size (bytes ~ 1e6..1e8, the scale of real models), embedding memory,
    a budget between 5 % and 120 % of the edge-only memory (so the memory mask binds on part
    of the batch) and outage ~ Bernoulli(0.2) (and-ed with the space's mask_outage).
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    scalars = rng.standard_normal((n, cfg.n_scalars)).astype(f32)
    scalars[:, : min(5, cfg.n_scalars)] = np.abs(scalars[:, : min(5, cfg.n_scalars)])
    history = np.empty((n, cfg.hist_len, cfg.hist_ch), f32)
    history[..., 0] = np.abs(rng.standard_normal((n, cfg.hist_len)))
    if cfg.hist_ch > 1:
        history[..., 1:] = rng.uniform(0, 1, (n, cfg.hist_len, cfg.hist_ch - 1))
    if cfg.hist_ch > 2:
        history[..., 2] = (rng.uniform(0, 1, (n, cfg.hist_len)) < 0.1).astype(f32)
    counts = np.asarray(cfg.head_counts, np.float64)
    head = 10.0 ** rng.uniform(5, 7, n)
    ffn = 10.0 ** rng.uniform(6, 8, n)
    frac = np.array([1.0, 0.0, 2.0 / 3.0] + [j / 16.0 for j in cfg.phi_grid][: cfg.n_ffn - 3])
    layer_mem = (head[:, None, None] * counts[None, :, None]
                 + ffn[:, None, None] * frac[None, None, :]).astype(f32)
    emb_mem = (10.0 ** rng.uniform(6, 8.5, n)).astype(f32)
    full = cfg.n_layers * layer_mem[:, -1, 0] + 2 * emb_mem
    budget = (full * rng.uniform(0.05, 1.2, n)).astype(f32)
    outage = (rng.uniform(0, 1, n) < 0.2) & cfg.mask_outage
    return {"scalars": scalars, "history": history, "layer_mem": layer_mem,
            "emb_mem": emb_mem, "budget": budget, "outage": outage}


def jax_reference(model):
    """A jitted ``fn(**inputs) -> dict`` of the Flax policy with the outputs of
    ``TorchPolicy`` (``agents.networks.greedy`` plus the logits under its choice)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from agents.actions import MaskContext, high_onehot
    from agents.networks import Features, greedy

    space = model.space
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, scalars, history, layer_mem, emb_mem, budget, outage):
        m = nnx.merge(graphdef, state)
        x = Features(scalars, history)
        ctx = MaskContext(layer_mem, emb_mem, budget, outage)
        a = greedy(m, x, ctx)
        h = m.encode(x)
        flat = m.high(h)
        b = scalars.shape[0]
        if space.kind == "layerwise":
            ll = jnp.zeros((b, space.n_layers, space.n_low))
            tr = ll[:, :2]
        else:
            cond = None
            if space.kind == "hier":
                cond = jax.vmap(lambda e, md, p: high_onehot(space, e, md, p))(
                    a.embed, a.modes, a.prec)
            ll, tr = m.low_logits(h, cond)
        outs = (flat, ll, tr, m.value(h), a.embed, a.modes, a.prec, a.low, a.cut)
        return dict(zip(OUTPUT_NAMES, outs, strict=True))

    def fn(**inputs):
        return {k: np.asarray(v) for k, v in run(state, **inputs).items()}

    fn.jitted = lambda **inputs: run(state, **inputs)
    return fn


def torch_reference(module):
    """``fn(**inputs) -> dict`` of NumPy outputs of a ``TorchPolicy``."""
    import torch

    def fn(**inputs):
        with torch.inference_mode():
            outs = module(*(torch.from_numpy(np.asarray(inputs[k])) for k in INPUT_NAMES))
        return {k: v.numpy() for k, v in zip(OUTPUT_NAMES, outs, strict=True)}

    return fn


def onnx_reference(session):
    def fn(**inputs):
        outs = session.run(list(OUTPUT_NAMES), {k: np.asarray(inputs[k]) for k in INPUT_NAMES})
        return dict(zip(OUTPUT_NAMES, outs, strict=True))

    return fn


@dataclasses.dataclass(frozen=True)
class Parity:
    """One backend against JAX: the largest |difference| of each float output and the
    fraction of observations whose greedy action (every field) is the same."""

    backend: str
    n: int
    max_abs_diff: dict
    action_agreement: float

    @property
    def max_logit_diff(self) -> float:
        return max(self.max_abs_diff.values())


def compare(ref: dict, got: dict, backend: str) -> Parity:
    diffs = {k: float(np.max(np.abs(ref[k].astype(np.float64) - got[k]))) if ref[k].size else 0.0
             for k in FLOAT_OUTPUTS}
    n = ref["embed"].shape[0]
    same = np.ones(n, bool)
    for k in ACTION_OUTPUTS:
        r, g = ref[k].reshape(n, -1), got[k].reshape(n, -1)
        same &= np.all(r == g, axis=1)
    return Parity(backend, n, diffs, float(same.mean()))


def parity(checkpoint_dir: str | Path, n: int = 1000, seed: int = 0) -> list[Parity]:
    """JAX vs torch vs onnxruntime on ``n`` random observations of a checkpoint."""
    from agents import checkpoint
    from bridge import torch_policy

    model, _ = checkpoint.load_model(checkpoint_dir)
    module = torch_policy.from_checkpoint(checkpoint_dir)
    inputs = random_inputs(module.cfg, n, seed)
    ref = jax_reference(model)(**inputs)
    got_t = torch_reference(module)(**inputs)
    got_o = onnx_reference(onnx_session(onnx_bytes(module)))(**inputs)
    return [compare(ref, got_t, "torch"), compare(ref, got_o, "onnxruntime")]


# --------------------------------------------------------------------------------------------
# Command line


def seed_dir(path: str | Path, seed: int | None = None) -> Path:
    """The one checkpoint directory to export: ``path`` itself when it holds config.json,
    else its ``seed<seed>/`` (default: its lowest seed). ValueError naming ``--seed`` when
    the seed is not there."""
    from agents.policy_loader import checkpoint_dirs

    dirs = checkpoint_dirs(path)
    if seed is None:
        return dirs[0]
    want = [d for d in dirs if d.name == f"seed{seed}"]
    if not want:
        raise ValueError(f"--seed {seed}: {path} holds {', '.join(d.name for d in dirs)}")
    return want[0]


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--checkpoint", required=True,
                    help="agents checkpoint: a seed directory (holds config.json) or a "
                         "training run directory (its seed<k>/ subdirectories; see --seed)")
    ap.add_argument("--seed", type=int, default=None, metavar="K",
                    help="which seed<K>/ of a run directory to export (default: the lowest "
                         "seed; an error for a seed directory that is not seed<K>)")
    ap.add_argument("--format", choices=("torch", "onnx"), required=True,
                    help="exported file format")
    ap.add_argument("--out", required=True, help="output file (.pt or .onnx)")
    ap.add_argument("--model", default=None,
                    help="model card the policy was trained for (default: the checkpoint's)")
    ap.add_argument("--parity", type=int, default=1000, metavar="N",
                    help="random observations of the JAX/torch/onnxruntime check (0: skip)")


def cli(args) -> int:
    """Export, then (unless --parity 0) print the parity check; 1 if it fails."""
    fn = export_torch if args.format == "torch" else export_onnx
    args.checkpoint = str(seed_dir(args.checkpoint, args.seed))
    path = fn(args.checkpoint, args.out, args.model)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    if args.parity <= 0:
        return 0
    ok = True
    for p in parity(args.checkpoint, args.parity):
        good = p.action_agreement == 1.0 and p.max_logit_diff <= 1e-5
        ok &= good
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in p.max_abs_diff.items())
        print(f"{p.backend:12s} vs jax over {p.n} observations: greedy actions agree "
              f"{100 * p.action_agreement:.1f} %, max |diff| {diffs} "
              f"{'ok' if good else 'FAIL'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitwise export", description=__doc__.split("\n")[0],
                                 allow_abbrev=False)
    add_args(ap)
    return cli(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
