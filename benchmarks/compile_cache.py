"""How much the persistent caches save a repeated command.

Runs the same `splitwise simulate --slots 10` three times in fresh processes with a new, empty
cache directory: the first run traces, compiles and fills it (XLA executables and the stored
traced programs of `lyapunov.stored_programs`), the later ones read it. Prints the wall times,
their ratio, and the floor no cache removes (a fresh Python that imports JAX; measured in this
run; nothing is assumed).

    python benchmarks/compile_cache.py [--model llama-7b] [--policy oracle]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], cache: str) -> float:
    env = dict(os.environ, SPLITWISE_JAX_CACHE=cache)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    code = "import sys, splitwise_cli; sys.exit(splitwise_cli.main())"
    subprocess.run([sys.executable, "-c", code, *argv], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-7b", help="model card name")
    ap.add_argument("--policy", default="oracle", help="policy to simulate (registered name)")
    ap.add_argument("--slots", type=int, default=10, help="slots per run (count)")
    args = ap.parse_args(argv)
    cmd = ["simulate", "--model", args.model, "--policy", args.policy, "--slots",
           str(args.slots), "--json"]
    with tempfile.TemporaryDirectory() as cache:
        times = [timed(cmd, cache) for _ in range(3)]
        size = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
    print(f"splitwise {' '.join(cmd)}")
    print(f"first (cold cache): {times[0]:.2f} s")
    print(f"second (warm):      {times[1]:.2f} s")
    print(f"third (warm):       {times[2]:.2f} s")
    print(f"ratio cold / warm:  {times[0] / min(times[1:]):.2f}x   cache size {size / 1e6:.1f} MB")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import jax, jax.numpy"], check=True)
    print(f"floor (python + import jax): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
