"""Decision latency of the exported policy: JAX (jitted) vs torch vs onnxruntime.

Backends: the jitted Flax policy (``bridge.export.jax_reference``), the torch module eager
and as ``torch.jit.trace`` (the graph the ONNX export records), and the ONNX graph in
onnxruntime.

One observation at a time (batch 1) on one thread: XLA's CPU client without its Eigen thread
pool, ``torch.set_num_threads(1)``, an onnxruntime session with one intra-op thread. A decision
is the whole greedy policy of ``bridge.torch_policy`` (encoder, heads, masked sequential
choices); each backend gets the same observations, a warm-up, then the median and the 90th
percentile over ``--calls`` calls. The table gives the ratios to JAX. Usage:

    python benchmarks/decision_latency.py [--checkpoint DIR] [--calls 300]

Without ``--checkpoint`` a freshly initialized hierarchical policy for SmolLM2-135M on the
Raspberry Pi 5 profile is saved to a temporary directory (latency does not depend on training).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false"
                           + " intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bridge import export, policy_io, torch_policy  # noqa: E402


def fresh_checkpoint(path: Path, kind: str = "hier") -> Path:
    """Save a freshly initialized policy for smollm2-135m on rpi5 (16 scalars, window 8)."""
    from flax import nnx

    from agents import checkpoint
    from agents.actions import ActionConfig, make_space
    from agents.networks import ActorCritic, NetConfig
    from costmodel.spec import make_spec

    space = make_space(make_spec("smollm2-135m", "rpi5"), ActionConfig(kind=kind))
    net = NetConfig()
    shapes = (16, 8, 3)
    return checkpoint.save(path, ActorCritic(space, *shapes, net, nnx.Rngs(0)), net, shapes)


def traced(module, example: dict):
    """``torch.jit.trace`` of the module (the same graph the ONNX export records), checked
    to give the same outputs on the example."""
    import warnings

    args = tuple(torch.from_numpy(example[k]) for k in policy_io.INPUT_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.jit.trace(module, args, check_trace=False)
    with torch.inference_mode():
        for a, b in zip(module(*args), out(*args), strict=True):
            assert torch.equal(a, b)
    return out


def time_calls(fn, inputs: list[dict], warmup: int = 20) -> list[float]:
    """Seconds of each call of ``fn(**inputs[i])`` after ``warmup`` calls."""
    for i in range(warmup):
        fn(**inputs[i % len(inputs)])
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(**x)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="agents checkpoint directory")
    ap.add_argument("--kind", default="hier", choices=("hier", "flat_head", "layerwise"),
                    help="action kind of the fresh policy (without --checkpoint)")
    ap.add_argument("--calls", type=int, default=300, help="timed decisions per backend (count)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    from agents import checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(args.checkpoint) if args.checkpoint else fresh_checkpoint(Path(tmp) / "ck",
                                                                            args.kind)
        model, _ = checkpoint.load_model(ck)
        module = torch_policy.from_checkpoint(ck)
        batch = export.random_inputs(module.cfg, args.calls, seed=1)
        inputs = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(args.calls)]

        ref = export.jax_reference(model)

        def jax_fn(**x):
            jax.block_until_ready(ref.jitted(**x))

        torch_fn = export.torch_reference(module)
        traced_fn = export.torch_reference(traced(module, inputs[0]))
        ort_fn = export.onnx_reference(export.onnx_session(export.onnx_bytes(module), 1))
        rows = [("jax (jit)", time_calls(jax_fn, inputs)),
                ("torch (eager)", time_calls(torch_fn, inputs)),
                ("torch (jit.trace)", time_calls(traced_fn, inputs)),
                ("onnxruntime", time_calls(ort_fn, inputs))]

    base = statistics.median(rows[0][1])
    print(f"decision latency, batch 1, one thread, {args.calls} calls, kind "
          f"{module.cfg.kind} ({module.cfg.n_layers} layers, {module.cfg.n_groups} groups)")
    print(f"{'backend':18s} {'median us':>10s} {'p90 us':>9s} {'vs jax':>7s}")
    for name, t in rows:
        med, p90 = statistics.median(t), float(np.percentile(t, 90))
        print(f"{name:18s} {med * 1e6:10.1f} {p90 * 1e6:9.1f} {med / base:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
