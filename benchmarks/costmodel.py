"""Throughput of the JAX request-cost model against the NumPy reference, and the DP per call.

    python benchmarks/costmodel.py [--model llama-7b] [--device rpi5] [--cloud datacenter]

Evaluations per second of `jit(vmap(request_costs))` at batch 1, 1024 and 16384 over random
partitions and link states, against the loop-based NumPy reference of the tests
(tests/costmodel/reference.py: one Python loop over the samples, the per-scenario importance
prefix computed once), on the same samples; ratios measured in this one run. Then the time of
one `dp.solve` and one `dp.solve_memory` call (jitted, after compilation). Compile times are
reported apart and excluded from the rates.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the package it measures: make `import costmodel` find the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from costmodel import dp  # noqa: E402
from costmodel.accuracy import accuracy_profile  # noqa: E402
from costmodel.cards import get_card  # noqa: E402
from costmodel.costs import request_costs  # noqa: E402
from costmodel.link import LinkState, Workload, make_link  # noqa: E402
from costmodel.partition import Partition  # noqa: E402
from costmodel.profiles import get_profile  # noqa: E402
from costmodel.spec import make_spec  # noqa: E402

BATCHES = (1, 1024, 16384)


def _load_reference():
    spec = importlib.util.spec_from_file_location(
        "costmodel_reference", ROOT / "tests" / "costmodel" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def random_inputs(rng: np.random.Generator, n: int, n_layers: int, n_heads: int):
    """Random partitions and link states (5 % outages) as NumPy arrays."""
    heads = rng.integers(0, n_heads + 1, (n, n_layers))
    ffn = rng.integers(0, 3, (n, n_layers))
    prec = rng.integers(0, 3, n)
    emb = rng.random(n) < 0.7
    bw = np.where(rng.random(n) < 0.05, 0.0, 10 ** rng.uniform(-1, 3, n))
    rtt = rng.uniform(0, 100, n)
    share = 10 ** rng.uniform(-2, 0, n)
    return heads, ffn, prec, emb, bw, rtt, share


def timed(fn, min_time: float = 0.3, repeats: int = 5, warmup: bool = True) -> float:
    """Median seconds per call over `repeats` rounds of at least `min_time` each."""
    if warmup:
        fn()
    per_call = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        per_call.append(elapsed / calls)
    return statistics.median(per_call)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-7b", help="model card name")
    parser.add_argument("--device", default="rpi5", help="edge device profile name")
    parser.add_argument("--cloud", default="datacenter", help="cloud profile name")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the drawn partitions")
    args = parser.parse_args(argv)
    ref = _load_reference()

    card, edge, cloud = get_card(args.model), get_profile(args.device, "edge"), \
        get_profile(args.cloud, "cloud")
    workload = Workload(128, 32)
    acc = accuracy_profile(card)
    spec = make_spec(card, edge, cloud, workload, 0, acc)
    scenario = ref.Scenario(card, edge, cloud, acc, workload.prompt_tokens, workload.new_tokens)
    rng = np.random.default_rng(args.seed)
    batched = jax.jit(jax.vmap(request_costs, in_axes=(0, 0, None)))

    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; {card.name} "
          f"(L={card.n_layers}, H={card.n_heads}) on {edge.name} with {cloud.name}, "
          f"S={workload.prompt_tokens}, T={workload.new_tokens}")
    header = (f"{'batch':>6} {'JAX evals/s':>13} {'NumPy evals/s':>14} {'ratio':>8} "
              f"{'JAX compile s':>14}")
    print(header)
    print("-" * len(header))
    for n in BATCHES:
        heads, ffn, prec, emb, bw, rtt, share = random_inputs(rng, n, card.n_layers,
                                                              card.n_heads)
        part = Partition(jnp.asarray(heads, jnp.int32), jnp.asarray(ffn, jnp.int32),
                         jnp.asarray(prec, jnp.int32), jnp.asarray(emb),
                         jnp.zeros_like(jnp.asarray(ffn, jnp.int32)))
        f32 = jnp.float32
        link = LinkState(jnp.asarray(bw, f32), jnp.asarray(bw, f32), jnp.asarray(rtt, f32),
                         jnp.asarray(share, f32))
        start = time.perf_counter()
        jax.block_until_ready(batched(part, link, spec))
        compile_s = time.perf_counter() - start
        t_jax = timed(lambda p=part, lk=link: jax.block_until_ready(batched(p, lk, spec)))
        links = [ref.Link(float(b), float(b), float(r), float(s))
                 for b, r, s in zip(bw, rtt, share, strict=True)]
        t_np = timed(lambda h=heads, f=ffn, q=prec, e=emb, lk=links:
                     ref.request_costs_ref_batch(scenario, h, f, q, e, lk),
                     min_time=0.3 if n < 16384 else 0.0, repeats=5 if n < 16384 else 1,
                     warmup=n < 16384)
        print(f"{n:>6} {n / t_jax:>13.4g} {n / t_np:>14.4g} {t_np / t_jax:>7.1f}x "
              f"{compile_s:>14.2f}")

    one_link = make_link(20.0, 40.0)
    weights = dp.Weights()
    print()
    print(f"{'per call':<24} {'ms':>10} {'compile s':>10}")
    for name, fn in (("dp.solve", jax.jit(dp.solve)),
                     ("dp.solve_memory", jax.jit(dp.solve_memory))):
        start = time.perf_counter()
        jax.block_until_ready(fn(one_link, spec, weights))
        compile_s = time.perf_counter() - start
        t = timed(lambda f=fn: jax.block_until_ready(f(one_link, spec, weights)))
        print(f"{name:<24} {1e3 * t:>10.3f} {compile_s:>10.2f}")


if __name__ == "__main__":
    main()
