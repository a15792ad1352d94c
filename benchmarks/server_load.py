"""Load on one cloud server: many concurrent edge clients on loopback, nothing lost, server
memory bounded (docs/design.md §5, threat model).

Starts ``serve_cloud`` (toy model, default ``ServerLimits``) in its own process, then runs
``--clients`` edge clients at once, each in its own thread with its own connection, each
running ``--requests`` split requests back to back (random partitions that use the cloud,
fp32 crossings). Every answer is checked against the in-process split of the same partition,
every request's execution ledger (from its CLOSE reply) must show each step executed once,
and the server's resident memory (``/proc/PID/status``: VmRSS, and the peak VmHWM) is read
before and after and compared with ``ServerLimits.memory_bound_bytes``, the bound the limits
imply for request and connection state beyond the model. Prints one figure per line. Usage:

    python benchmarks/server_load.py [--clients 50] [--requests 4]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.blocks import RunPartition, run_local, toy_executor  # noqa: E402
from bridge.cloud_server import ServerLimits  # noqa: E402
from bridge.edge_client import ClientConfig, EdgeClient  # noqa: E402
from bridge.server_process import ServerProcess  # noqa: E402


def _mem_kb(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0])
    return out


def load_test(clients: int = 50, requests: int = 4, seed: int = 0) -> dict:
    """Run the load; returns the figures (see the module docstring)."""
    ex = toy_executor()
    n_l, n_h, vocab = ex.cfg.n_layers, ex.cfg.n_heads, ex.cfg.vocab_size
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(clients):
        mine = []
        for _ in range(requests):
            heads = rng.random((n_l, n_h)) < 0.5
            heads[0, 0] = False  # at least one cloud head: every request uses the cloud
            rp = RunPartition(heads, rng.integers(0, 3, n_l), "fp32", bool(rng.integers(0, 2)))
            mine.append((rng.integers(0, vocab, int(rng.integers(4, 13))).tolist(), rp, 4))
        jobs.append(mine)
    srv = ServerProcess("toy", start_timeout_s=60.0)
    srv.start()
    proc, port = srv.proc, srv.port
    try:
        with EdgeClient(("127.0.0.1", port), ex, ClientConfig(timeout_s=30.0)) as warm:
            warm.run_request([1, 2, 3], jobs[0][0][1], 2)  # imports and caches warmed up
        before = _mem_kb(proc.pid)
        results: list = [None] * clients
        errors: list[str] = []

        def worker(k: int) -> None:
            try:
                with EdgeClient(("127.0.0.1", port), ex,
                                ClientConfig(timeout_s=60.0, seed=k)) as c:
                    results[k] = [c.run_request(p, rp, n) for p, rp, n in jobs[k]]
            except Exception as err:  # counted as lost below
                errors.append(repr(err))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wall = time.monotonic() - t0
        after = _mem_kb(proc.pid)
    finally:
        srv.stop()
    submitted = clients * requests
    answered = failed = wrong = fallbacks = dup = executed = no_ledger = 0
    for k in range(clients):
        for (p, rp, n), res in zip(jobs[k], results[k] or [], strict=False):
            answered += res.status == "answered"
            failed += res.status == "failed"
            fallbacks += res.fallback_at is not None
            ref, _ = run_local(ex, rp, p, n)
            wrong += res.tokens != ref.tokens
            if res.ledger is None or not res.ledger["held"]:
                no_ledger += 1
            else:
                dup += res.ledger["duplicated"]
                executed += res.ledger["executed"]
    bound = ServerLimits().memory_bound_bytes(ex)
    return {
        "clients": clients, "requests": submitted, "answered": answered, "failed": failed,
        "lost": submitted - answered - failed, "wrong_answers": wrong, "fallbacks": fallbacks,
        "cloud_steps_executed": executed, "cloud_steps_duplicated": dup,
        "ledger_missing": no_ledger, "client_errors": errors, "wall_s": round(wall, 2),
        "requests_per_s": round(submitted / wall, 1),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "rss_after_mib": round(after["VmRSS"] / 1024, 1),
        "rss_peak_mib": round(after["VmHWM"] / 1024, 1),
        "rss_growth_mib": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1),
        "bound_mib": round(bound / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50, help="concurrent edge clients (count)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client (count)")
    ap.add_argument("--seed", type=int, default=0,
                    help="random seed of the partitions and prompts (integer)")
    a = ap.parse_args()
    for k, v in load_test(a.clients, a.requests, a.seed).items():
        print(f"{k:24s} {v}")


if __name__ == "__main__":
    main()
