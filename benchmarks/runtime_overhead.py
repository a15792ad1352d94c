"""Overhead of the split runtime against monolithic execution at unlimited bandwidth.

Starts a cloud server process on 127.0.0.1, then times one request (prefill S tokens, T
decode steps) per partition, best of ``--repeats`` (the minimum is the estimate least
disturbed by other load on the machine):

- monolithic: the whole model on the edge (the same cached block functions, no crossing);
- in-process split: both sides in one thread, crossings encoded and decoded (no network);
- networked split: the edge here, the cloud in the server process, RTT 0, no bandwidth cap.

Prints the cost of one decode-step exchange (``bridge.calibrate.exchange_cost``: a 576-wide
activation, SmolLM2's d, as a STEP frame and its RESULT over loopback TCP to a peer process),
as the round trip and as one exchange: in a tensor-parallel layer both sides send their
partial sums at once, so an exchange costs one message each way concurrently, half the round
trip (target at most 150 us); then one line per partition with the ratios to monolithic.

Tensor-parallel partitions (every layer tp: a K/V group's worth of heads and a share of the
FFN columns on each side, the residual on both, two exchanges a layer) are timed per decode
token: ``(t(T + 1 tokens) - t(1 token)) / T``, best of ``--repeats``, against the monolithic
model's decode token (same threads per process); target within 1.3x on a two-core machine
where both processes share the cores. Usage:

    python benchmarks/runtime_overhead.py --executor toy|smollm2 [--repeats 5] [--tp-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.blocks import RunPartition, make_executor, run_local  # noqa: E402
from bridge.edge_client import ClientConfig, EdgeClient  # noqa: E402
from bridge.server_process import ServerProcess  # noqa: E402


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executor", default="toy", help="block executor: toy or smollm2")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (tokens)")
    ap.add_argument("--new-tokens", type=int, default=8, help="generated tokens per request")
    ap.add_argument("--repeats", type=int, default=5, help="timed requests per partition (count)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each process")
    ap.add_argument("--exchanges", type=int, default=500,
                    help="round trips timed per precision for the exchange cost (0: skip)")
    ap.add_argument("--tp-only", action="store_true",
                    help="time only the tp partitions' decode against monolithic")
    ap.add_argument("--tp-precision", default="fp16",
                    help="precision of the tp partial sums exchanged (fp32, fp16, int8, int4)")
    args = ap.parse_args()
    if args.exchanges > 0:
        from bridge.calibrate import exchange_cost

        for prec in ("fp16", "int8", "int4"):
            ex = exchange_cost(args.exchanges, 576, prec)
            # A tp exchange sends both partial sums at once, so it costs one message each
            # way at the same time: half a round trip (msg_overhead_us), the target's unit.
            print(f"exchange 1x576 {prec}: round trip median {ex['round_trip_median_us']:.0f} "
                  f"us, p90 {ex['round_trip_p90_us']:.0f} us; one exchange (half the round "
                  f"trip) {ex['msg_overhead_us']:.0f} us (target <= 150 us)", flush=True)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.executor != "toy":
        import torch

        torch.set_num_threads(args.threads)

    ex = make_executor(args.executor)
    n_l, n_h = ex.cfg.n_layers, ex.cfg.n_heads
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, ex.cfg.vocab_size, args.prompt_tokens).tolist()
    n_out = args.new_tokens + 1
    half = np.zeros((n_l, n_h), bool)
    half[:, : n_h // 2] = True
    parts = {
        "cloud-only (emb edge)": RunPartition(np.zeros((n_l, n_h), bool), np.ones(n_l, int),
                                              "fp16", True),
        f"layer cut {n_l // 2}": RunPartition(np.repeat(np.arange(n_l)[:, None] < n_l // 2,
                                                        n_h, 1),
                                              (np.arange(n_l) >= n_l // 2).astype(int), "fp16"),
        "half heads + split FFN": RunPartition(half, np.full(n_l, 2), "fp16"),
    }
    if args.tp_only:
        parts = {}
    g = n_h // ex.cfg.n_kv_heads  # whole K/V groups on each side
    tp_parts = {f"tp {k}/{n_h} heads, {f}/16 FFN": RunPartition.tensor_parallel(
        n_l, n_h, k, f, args.tp_precision) for k, f in ((g, 6), (n_h - g, 8), (n_h - g, 12))}
    mono_rp = RunPartition.edge_only(n_l, n_h, "fp16")

    with ServerProcess(args.executor, threads=args.threads) as srv:
        # Timed once the server process has loaded its model (loading competes for the CPU).
        mono = _best_time(lambda: run_local(ex, mono_rp, prompt, n_out), args.repeats)
        print(f"{args.executor}: S={args.prompt_tokens} T={args.new_tokens}; monolithic "
              f"(edge-only, cached) {mono * 1e3:.1f} ms per request")
        with EdgeClient(srv.address, ex, ClientConfig(timeout_s=120.0)) as client:
            for name, rp in parts.items():
                local = _best_time(lambda rp=rp: run_local(ex, rp, prompt, n_out),
                                     args.repeats)
                net = _best_time(lambda rp=rp: client.run_request(prompt, rp, n_out),
                                   args.repeats)
                _, crossings = run_local(ex, rp, prompt, n_out)
                print(f"  {name:24s} crossings {len(crossings):4d}  in-process split "
                      f"{local * 1e3:8.1f} ms ({local / mono:5.2f}x)  networked "
                      f"{net * 1e3:8.1f} ms ({net / mono:5.2f}x, "
                      f"{(net - local) / len(crossings) * 1e6:6.0f} us per crossing)")
            _tp_decode(args, ex, client, prompt, mono_rp, tp_parts)


def _decode_time(run, n_new: int, repeats: int) -> float:
    """Seconds per decode token: best of (t(n_new + 1 tokens) - t(1 token)) / n_new."""
    run(1)
    run(n_new + 1)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(1)
        t1 = time.perf_counter()
        run(n_new + 1)
        t2 = time.perf_counter()
        best = min(best, ((t2 - t1) - (t1 - t0)) / n_new)
    return best


def _tp_decode(args, ex, client, prompt, mono_rp, tp_parts) -> None:
    mono = _decode_time(lambda n: run_local(ex, mono_rp, prompt, n), args.new_tokens,
                        args.repeats)
    print(f"decode per token, {args.threads} torch thread(s) per process: monolithic "
          f"{mono * 1e3:.2f} ms")
    for name, rp in tp_parts.items():
        net = _decode_time(lambda n, rp=rp: client.run_request(prompt, rp, n), args.new_tokens,
                           args.repeats)
        _, crossings = run_local(ex, rp, prompt, 2)
        per_pass = sum(c.elements == ex.cfg.d_model for c in crossings)
        print(f"  {name:28s} ({args.tp_precision}, {per_pass} exchanges a decode pass) "
              f"networked {net * 1e3:8.2f} ms per token = {net / mono:5.2f}x monolithic "
              f"(target <= 1.3x)", flush=True)


if __name__ == "__main__":
    main()
