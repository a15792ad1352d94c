"""The cloud server in its own process (``bridge.server_process``): it answers a split request
as the in-process server does, a SIGKILL takes it down and a restart on the same port serves
again, a child that cannot start is reported as such, and the thread count a calibrated profile
was measured with is read back (``bridge.calibrate.profile_threads``)."""

from __future__ import annotations

import json
import socket

import pytest

from bridge.blocks import RunPartition, run_local, toy_executor
from bridge.calibrate import profile_threads
from bridge.edge_client import ClientConfig, EdgeClient
from bridge.server_process import ServerProcess

EX = toy_executor()


def _request(addr):
    n_l, n_h = EX.cfg.n_layers, EX.cfg.n_heads
    rp = RunPartition.tensor_parallel(n_l, n_h, 1, 5, "fp32")
    with EdgeClient(addr, EX, ClientConfig(timeout_s=10.0)) as c:
        res = c.run_request([3, 1, 4, 1, 5], rp, 4)
    ref, _ = run_local(EX, rp, [3, 1, 4, 1, 5], 4)
    return res, ref


def test_server_process_serves_dies_and_restarts_on_its_port():
    srv = ServerProcess("toy", threads=1, start_timeout_s=60.0)
    with srv:
        res, ref = _request(srv.address)
        assert res.status == "answered" and res.fallback_at is None
        assert res.tokens == ref.tokens
        srv.kill()
        assert srv.proc.returncode is not None
        with pytest.raises(OSError):
            socket.create_connection(srv.address, timeout=1.0).close()
        port = srv.port
        srv.start()
        assert srv.port == port
        res, ref = _request(srv.address)
        assert res.status == "answered" and res.tokens == ref.tokens
    assert srv.proc.poll() is not None  # stopped on exit


def test_a_child_that_cannot_start_is_an_error_not_a_hang():
    srv = ServerProcess("/nonexistent/model.gguf", start_timeout_s=60.0)
    with pytest.raises(RuntimeError, match="exited with code"):
        srv.start()
    with pytest.raises(ValueError, match="threads"):
        ServerProcess("toy", threads=0)


def test_profile_threads_reads_the_calibration_beside_the_profile(tmp_path):
    prof = tmp_path / "local.json"
    prof.write_text("{}")
    assert profile_threads(prof) is None  # no validation file
    (tmp_path / "local.validation.json").write_text(json.dumps({"threads": 3}))
    assert profile_threads(prof) == 3
    (tmp_path / "local.validation.json").write_text(json.dumps({"threads": 0}))
    assert profile_threads(prof) is None
    (tmp_path / "local.validation.json").write_text("not json")
    assert profile_threads(prof) is None
