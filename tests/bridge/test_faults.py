"""Fault injection on 127.0.0.1: dropped connections mid-request, delays beyond the timeout,
corrupted and truncated frames (a frame-aware proxy), a cloud-server restart (a server process
killed and started again), a wrong HMAC key, garbage and oversized frames.

Partitions are random over every FFN mode, tensor-parallel layers (with random shares)
included; one test kills and restarts the server in the middle of tp requests.

Over the tests below, 239 requests (160 + 40 + 3 + 36) on the NumPy toy model: none lost, none
answered twice, every answer equal to the in-process split of the same partition (bit for
bit, where no fallback happened; the edge-only continuation of a fallback within fp32
tolerance of the unsplit model), every answer within its precision's tolerance of the unsplit
model, every cloud step executed once per server instance, and the observed backoff sleeps
equal to the configured schedule replayed from the client's seed. No torch needed.
"""

import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bridge import wire
from bridge.backoff import BackoffConfig, expected_schedule
from bridge.blocks import RunPartition, run_local, toy_executor
from bridge.cloud_server import CloudServer, ServerConfig
from bridge.edge_client import ClientConfig, EdgeClient
from bridge.fault_proxy import FaultPlan, FaultProxy
from bridge.server_process import ServerProcess, free_port

EX = toy_executor()
L, H, V = EX.cfg.n_layers, EX.cfg.n_heads, EX.cfg.vocab_size
LOGIT_ATOL = {"fp32": 1e-4, "fp16": 0.1, "int8": 2.0}  # see test_runtime.py
ROOT = Path(__file__).resolve().parents[2]


def make_jobs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(n):
        prompt = rng.integers(0, V, rng.integers(1, 7)).tolist()
        prec = ["fp32", "fp32", "fp16", "int8", "int4"][rng.integers(0, 5)]
        heads = rng.random((L, H)) < rng.uniform(0.2, 0.8)
        rp = RunPartition(heads, rng.integers(0, 4, L), prec, bool(rng.integers(0, 2)),
                          rng.integers(1, 16, L))
        jobs.append((prompt, rp, int(rng.integers(2, 5))))
    return jobs


def run_clients(addr, jobs_per_client, configs):
    """Each client runs its jobs sequentially in its own thread; returns results per client
    and the clients."""
    results = [None] * len(jobs_per_client)
    clients = [EdgeClient(addr, EX, cfg) for cfg in configs]

    def worker(k):
        results[k] = [clients[k].run_request(p, rp, n) for p, rp, n in jobs_per_client[k]]
        clients[k].close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(170)
        assert not t.is_alive(), "a client hung"
    return results, clients


def check_results(jobs, results):
    """Exactly one result per job, answered, equal to the references. Returns fallbacks."""
    assert len(results) == len(jobs)  # none lost, none duplicated
    fallbacks = 0
    for (prompt, rp, n_out), res in zip(jobs, results, strict=True):
        assert res.status == "answered", res.error
        assert len(res.tokens) == n_out
        ref, _ = run_local(EX, rp, prompt, n_out)
        m = n_out if res.fallback_at is None else res.fallback_at
        fallbacks += res.fallback_at is not None
        assert res.tokens[:m] == ref.tokens[:m]
        for a, b in zip(res.logits[:m], ref.logits[:m], strict=True):
            assert (a is None and b is None) or np.array_equal(a, b)
        if m < n_out:  # the edge finished alone, in fp32, from the tokens it had
            seq = list(prompt) + res.tokens[:-1]
            unsplit = EX.reference_logits(seq)
            for j in range(m, n_out):
                row = unsplit[len(prompt) - 1 + j]
                assert res.tokens[j] == int(np.argmax(row))
                np.testing.assert_allclose(res.logits[j], row, atol=1e-4, rtol=0)
        if rp.precision in LOGIT_ATOL:
            ref_u = EX.reference_logits(list(prompt) + res.tokens[:-1])
            for j, tok in enumerate(res.tokens):
                row = ref_u[len(prompt) - 1 + j]
                assert row[tok] >= row.max() - LOGIT_ATOL[rp.precision]
    return fallbacks


def check_schedule(client: EdgeClient, cfg: ClientConfig):
    """The backoff sleeps a client took are the configured ones: the same draws from its
    seed, attempt indices within the budget, ceilings min(cap, base * factor^n), and the
    sleeps at least as long as drawn."""
    log = client.retry_log
    attempts = [r.retry.attempt for r in log]
    assert [r.retry for r in log] == expected_schedule(cfg.backoff, cfg.seed, attempts)
    for r in log:
        assert 0 <= r.retry.attempt < cfg.backoff.max_retries
        assert r.retry.ceiling_s == pytest.approx(min(cfg.backoff.cap_s, cfg.backoff.base_s
                                                      * cfg.backoff.factor ** r.retry.attempt))
        assert 0 <= r.retry.delay_s <= r.retry.ceiling_s
        assert r.slept_s >= r.retry.delay_s - 1e-3
    return len(log)


BACKOFF = BackoffConfig(base_s=0.01, factor=2.0, cap_s=0.16, max_retries=6)


@pytest.mark.slow  # the default run's 10-minute budget; CI runs it
def test_mixed_faults_through_proxy(caplog):
    """160 requests from 4 concurrent clients through a proxy that drops connections, delays
    frames past the client's timeout, corrupts and truncates frames, in both directions."""
    caplog.set_level(logging.WARNING, logger="bridge")
    plan = FaultPlan(drop=0.008, delay=0.004, delay_s=0.5, corrupt=0.008, truncate=0.008,
                     seed=11)
    with CloudServer(EX, config=ServerConfig(track_executions=True)) as srv:
        proxy = FaultProxy((srv.host, srv.port), plan)
        port = proxy.start()
        try:
            jobs = [make_jobs(40, seed=100 + k) for k in range(4)]
            cfgs = [ClientConfig(timeout_s=0.3, backoff=BACKOFF, seed=k) for k in range(4)]
            t0 = time.monotonic()
            results, clients = run_clients(("127.0.0.1", port), jobs, cfgs)
            elapsed = time.monotonic() - t0
        finally:
            proxy.stop()
    fallbacks = sum(check_results(j, r) for j, r in zip(jobs, results, strict=True))
    retries = sum(check_schedule(c, cfg) for c, cfg in zip(clients, cfgs, strict=True))
    counts = dict(proxy.counts)
    print(f"\nmixed faults: {counts}, retries {retries}, fallbacks {fallbacks}, "
          f"server {dict(srv.stats)}, {elapsed:.1f} s")
    for kind in ("drop", "delay", "corrupt", "truncate"):
        assert counts.get(kind, 0) > 0, kind
    assert retries > 0
    assert max(srv.executions.values()) == 1  # every (request, seq) ran once
    assert srv.stats["frames_rejected"] > 0  # corrupted / truncated frames seen and logged
    assert any("rejected frame" in r.message for r in caplog.records)


def _start_server_process(port: int) -> ServerProcess:
    srv = ServerProcess("toy", port=port, start_timeout_s=30.0)
    srv.start()
    return srv


def test_cloud_server_restart():
    """40 requests from 2 clients while the server process is killed (SIGKILL: its request
    state is lost) and started again twice; requests in flight resume by replaying their
    log to the new process."""
    port = free_port()
    proc = _start_server_process(port)
    procs = [proc]
    stop = threading.Event()

    def restarter():
        for _ in range(2):
            if stop.wait(0.8):
                return
            procs[-1].kill()
            procs.append(_start_server_process(port))

    slow_backoff = BackoffConfig(base_s=0.05, factor=2.0, cap_s=0.8, max_retries=10)
    jobs = [make_jobs(20, seed=200 + k) for k in range(2)]
    cfgs = [ClientConfig(timeout_s=2.0, backoff=slow_backoff, seed=10 + k) for k in range(2)]
    t = threading.Thread(target=restarter)
    t.start()
    try:
        # Slow the requests down a little (a 30 ms RTT) so that the restarts land mid-request.
        from bridge.transport import LinkConfig, LinkEmulator

        results = [None, None]
        clients = [EdgeClient(("127.0.0.1", port), EX, cfg,
                              LinkEmulator(None, LinkConfig(rtt_ms=30.0))) for cfg in cfgs]

        def worker(k):
            results[k] = [clients[k].run_request(p, rp, n) for p, rp, n in jobs[k]]
            clients[k].close()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(170)
            assert not th.is_alive(), "a client hung"
    finally:
        stop.set()
        t.join(60)
        for p in procs:
            p.stop()
    assert not t.is_alive(), "the restarter hung"
    assert len(procs) == 3
    for j, r in zip(jobs, results, strict=True):
        check_results(j, r)
    replays = sum(c.stats["replays"] for c in clients)
    retries = sum(check_schedule(c, cfg) for c, cfg in zip(clients, cfgs, strict=True))
    print(f"\nrestart: replays {replays}, retries {retries}, "
          f"fallbacks {sum(c.stats['fallbacks'] for c in clients)}")
    assert retries > 0 and replays > 0


def test_cloud_server_restart_mid_tensor_parallel_request():
    """The server process is killed (SIGKILL) and started again while tp requests (every
    layer tensor-parallel: the residual on both sides, two exchanges a layer) are in flight;
    each resumes by replaying its log to the new process and ends with the tokens of the
    in-process split (bit for bit, logits too), at fp32 the unsplit model's greedy tokens,
    without falling back to the edge."""
    from bridge.transport import LinkConfig, LinkEmulator

    port = free_port()
    procs = [_start_server_process(port)]
    stop = threading.Event()

    def restarter():
        for wait_s in (0.7, 2.0):
            if stop.wait(wait_s):
                return
            procs[-1].kill()
            procs.append(_start_server_process(port))

    jobs = [([5, 17, 33, 2, 9], RunPartition.tensor_parallel(L, H, 2, 5, "fp32"), 10),
            ([40, 1, 7], RunPartition.tensor_parallel(L, H, 1, 11, "int8", False), 10),
            ([12, 12, 60, 3], RunPartition(np.arange(L * H).reshape(L, H) % 3 == 0,
                                           [3, 0, 3, 3], "fp16", True, [8, 0, 2, 15]), 10)]
    cfg = ClientConfig(timeout_s=2.0, seed=3,
                       backoff=BackoffConfig(base_s=0.05, factor=2.0, cap_s=0.8, max_retries=20))
    client = EdgeClient(("127.0.0.1", port), EX, cfg, LinkEmulator(None, LinkConfig(rtt_ms=30.0)))
    t = threading.Thread(target=restarter)
    t.start()
    try:
        results = [client.run_request(p, rp, n) for p, rp, n in jobs]
        client.close()
    finally:
        stop.set()
        t.join(60)
        for p in procs:
            p.stop()
    assert len(procs) == 3, "the restarts did not happen while the requests ran"
    for (prompt, rp, n_out), res in zip(jobs, results, strict=True):
        assert res.status == "answered" and res.fallback_at is None, res.error
        ref, _ = run_local(EX, rp, prompt, n_out)
        assert res.tokens == ref.tokens
        for a, b in zip(res.logits, ref.logits, strict=True):
            assert (a is None and b is None) or np.array_equal(a, b)
    seq = list(jobs[0][0])
    for _ in range(jobs[0][2]):
        seq.append(int(np.argmax(EX.reference_logits(seq)[-1])))
    assert results[0].tokens == seq[len(jobs[0][0]):]
    check_schedule(client, cfg)
    print(f"\ntp restart: replays {client.stats['replays']}, retries {client.stats['retries']}")
    assert client.stats["replays"] > 0 and client.stats["retries"] > 0


def test_wrong_key_garbage_and_memory_budget(caplog):
    """A client with the wrong key is refused at the session handshake (logged at WARNING)
    while a client with the right key is served; the refused requests end on the edge at once
    (no retry can help), or fail with a clear error when the edge's memory budget forbids it.
    Garbage and oversized frames from a raw socket are logged and the server keeps serving."""
    caplog.set_level(logging.INFO, logger="bridge")
    key, wrong = b"K" * 32, b"W" * 32
    budget = BackoffConfig(base_s=0.005, factor=2.0, cap_s=0.04, max_retries=3)
    with CloudServer(EX, key=key) as srv:
        addr = (srv.host, srv.port)
        # Garbage (an HTTP request reads as a 1.2 GB frame), a frame of zeros, an oversized
        # announcement, on raw sockets: each connection is closed by the server.
        for junk in (b"GET / HTTP/1.1\r\n\r\n", wire.LENGTH.pack(60) + bytes(60),
                     wire.LENGTH.pack(2**31) + b"x"):
            with socket.create_connection(addr) as s:
                s.sendall(junk)
                s.settimeout(2.0)
                got = b""
                try:  # closed by the server, at most after a refusal frame (ERROR PROTOCOL)
                    while chunk := s.recv(4096):
                        got += chunk
                except ConnectionResetError:
                    pass
                if got:
                    f = wire.decode_frame(got)
                    assert f.msg_type == wire.MsgType.ERROR and f.tag == wire.Refusal.PROTOCOL
        good_jobs, bad_jobs = make_jobs(16, seed=300), make_jobs(12, seed=301)
        cfgs = [ClientConfig(key=key, timeout_s=2.0, backoff=budget, seed=1),
                ClientConfig(key=wrong, timeout_s=2.0, backoff=budget, seed=2)]
        results, clients = run_clients(addr, [good_jobs, bad_jobs], cfgs)
        # A wrong key and an edge too small to finish alone: the requests fail, clearly.
        tiny = ClientConfig(key=wrong, timeout_s=2.0, backoff=budget, seed=3,
                            edge_mem_budget_bytes=1e4)
        fail_jobs = make_jobs(8, seed=302)
        with EdgeClient(addr, EX, tiny) as c:
            failed = [c.run_request(p, rp, n) for p, rp, n in fail_jobs]
        check_schedule(c, tiny)
    good, bad = results
    assert check_results(good_jobs, good) == 0
    assert check_results(bad_jobs, bad) == sum(rp.uses_cloud for _, rp, _ in bad_jobs)
    for (_, rp, _), res in zip(bad_jobs, bad, strict=True):
        if rp.uses_cloud:  # refused at the handshake: no retry can help, none is made
            assert res.fallback_at == 0 and res.retries == 0
            assert res.fallback_reason == "auth" and "key differs" in res.error
    check_schedule(clients[1], cfgs[1])
    assert len(failed) == len(fail_jobs)
    for (_, rp, _), res in zip(fail_jobs, failed, strict=True):
        if rp.uses_cloud:
            assert res.status == "failed" and "cannot finish on the edge" in res.error
        else:
            assert res.status == "answered"
    reasons = list(srv.rejections)
    assert any("key differs" in r for r in reasons)
    assert any("bad magic" in r for r in reasons)
    assert sum("exceeds the maximum" in r for r in reasons) >= 2
    assert any(r.levelname == "WARNING" and "refused the session" in r.message
               and "key differs" in r.message for r in caplog.records)
