"""The cloud against an untrusted client and an attacker on the network, and the honesty of
the edge's report (docs/design.md §5, threat model): bounded resources, replay-safe sessions,
key hygiene, the execution ledger and every counter made non-zero on purpose, and run-edge's
exit status when the cloud could never be used. NumPy toy model; no torch."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest

from bridge import wire
from bridge.backoff import BackoffConfig
from bridge.blocks import RunPartition, encode_open, toy_executor
from bridge.cloud_server import CloudServer, ServerConfig, ServerLimits
from bridge.edge_client import ClientConfig, EdgeClient
from bridge.server_process import free_port
from bridge.wire import MsgType

EX = toy_executor()
L, H, V = EX.cfg.n_layers, EX.cfg.n_heads, EX.cfg.vocab_size
KEY = b"k" * 32
QUICK = BackoffConfig(base_s=0.01, factor=2.0, cap_s=0.02, max_retries=2)
CLOUD_ONLY = RunPartition(np.zeros((L, H), bool), np.ones(L, int), "fp32", True)


def _server(key=None, **limits):
    return CloudServer(EX, key=key, config=ServerConfig(limits=ServerLimits(**limits)))


def _session(addr, key=None) -> tuple[socket.socket, wire.Channel]:
    sock = socket.create_connection(addr, timeout=5)
    return sock, wire.client_handshake(sock, key, 5.0)


def _closed_by_peer(sock: socket.socket, within_s: float = 3.0) -> bool:
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _header_only(channel: wire.Channel, mtype, shape, dtype=wire.DType.F32, payload_len=None):
    """Length prefix + header + header tag of a frame whose payload is never sent."""
    dims = tuple(shape) + (0,) * (wire.MAX_NDIM - len(shape))
    n = wire.payload_size(dtype, tuple(shape)) if payload_len is None else payload_len
    keyed = channel.send_key is not None
    header = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, int(mtype),
                              wire.FLAG_HMAC if keyed else 0, int(dtype), 7, 1, 0, 0, 0,
                              len(shape), *dims, n)
    extra = wire.HTAG_BYTES + wire.TAG_BYTES if keyed else 0
    length = wire.LENGTH.pack(wire.HEADER.size + n + wire.CRC.size + extra)
    if not keyed:
        return length + header
    htag = wire._mac(channel.send_key, b"H", channel.send_ctr, length, header)[:wire.HTAG_BYTES]
    return length + header + htag


# --------------------------------------------------------------------------------------------
# Bounded resources


def test_shape_whose_element_count_overflows_is_rejected():
    """4 dims of 65536: the int64 product wraps to 0, the exact count is 2^64."""
    shape = (65536,) * 4
    assert int(np.prod(shape, dtype=np.int64)) == 0  # what a wrapping check would see
    assert wire.element_count(shape) == 2**64
    hdr = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, int(MsgType.STEP), 0,
                           int(wire.DType.F32), 1, 1, 0, 0, 0, 4, *shape, 0)
    body = hdr + struct.pack("!I", __import__("zlib").crc32(hdr))
    with pytest.raises(wire.MalformedFrame, match="18446744073709551616 elements"):
        wire.decode_frame(wire.LENGTH.pack(len(body)) + body)


def test_step_over_its_type_limit_is_refused_from_the_header_before_the_payload():
    """An authenticated header announcing a STEP larger than the model's longest prompt can
    need is refused as soon as the header is in, with no payload ever sent."""
    with _server(KEY) as srv:
        limit = srv.frame_limits[MsgType.STEP]
        sock, ch = _session((srv.host, srv.port), KEY)
        with sock:
            t0 = time.monotonic()
            sock.sendall(_header_only(ch, MsgType.STEP, (1, 4096, 64)))  # 1 MiB announced
            assert _closed_by_peer(sock)
            assert time.monotonic() - t0 < 2.0
        assert any(f"exceeds the maximum of {limit} for that message type" in r
                   for r in srv.rejections)
        # The same header unauthenticated (no tag) on a keyed server: refused as such.
        sock, ch = _session((srv.host, srv.port), KEY)
        with sock:
            sock.sendall(_header_only(wire.Channel(), MsgType.STEP, (1, 2, 64)))
            assert _closed_by_peer(sock)
        assert any("not authenticated" in r for r in srv.rejections)
    assert limit < 100_000  # toy: 256 tokens x 64 wide x 4 bytes + overhead


def test_prompt_and_generation_over_the_limits_are_refused():
    with _server(max_prompt_tokens=8, max_new_tokens=4) as srv, \
            EdgeClient((srv.host, srv.port), EX, ClientConfig(backoff=QUICK)) as c:
        long_prompt = c.run_request(list(range(9)), CLOUD_ONLY, 2)
        long_gen = c.run_request([1, 2], CLOUD_ONLY, 5)
        ok = c.run_request([1, 2], CLOUD_ONLY, 4)
    assert long_prompt.fallback_reason == "limit" and "max_prompt_tokens" in long_prompt.error
    assert long_gen.fallback_reason == "limit" and "max_new_tokens" in long_gen.error
    assert ok.fallback_at is None and ok.status == "answered"
    with _server() as srv, EdgeClient((srv.host, srv.port), EX,
                                      ClientConfig(backoff=QUICK)) as c:
        res = c.run_request([1] * 250, CLOUD_ONLY, 10)  # 260 > the toy's 256-token context
    assert res.fallback_reason == "limit" and "context of 256" in res.error


def test_connection_limit_refuses_the_next_one_as_busy():
    with _server(max_connections=2) as srv:
        held = [_session((srv.host, srv.port))[0] for _ in range(2)]
        try:
            with pytest.raises(wire.HandshakeRefused) as err:
                _session((srv.host, srv.port))
            assert err.value.kind == "busy"
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        _session((srv.host, srv.port))[0].close()  # room again once they closed
    assert srv.stats["connections_refused"] == 1


def test_request_limit_tells_the_next_request_to_back_off():
    with _server(max_requests=1, evict_idle_s=60.0) as srv:
        sock, ch = _session((srv.host, srv.port))
        with sock:  # one request opened and left open
            vec = encode_open(CLOUD_ONLY, 3, 2, EX.fingerprint())
            sock.sendall(ch.encode(wire.make_frame(MsgType.OPEN, 99, 0, array=vec)))
            time.sleep(0.3)
            with EdgeClient((srv.host, srv.port), EX, ClientConfig(backoff=QUICK)) as c:
                res = c.run_request([1, 2, 3], CLOUD_ONLY, 2)
    assert res.fallback_reason == "busy" and "max_requests" in res.error
    assert res.retries == QUICK.max_retries and res.status == "answered"


def test_idle_and_slow_connections_are_closed():
    with _server(idle_timeout_s=0.3, read_timeout_s=0.3) as srv:
        idle, _ = _session((srv.host, srv.port))
        slow, _ = _session((srv.host, srv.port))
        with idle, slow:
            slow.sendall(b"\x00\x00\x00\x80SPWR")  # a frame's first bytes, then nothing
            assert _closed_by_peer(idle, 3.0) and _closed_by_peer(slow, 3.0)
        silent = socket.create_connection((srv.host, srv.port))  # never says HELLO
        with silent:
            assert not _closed_by_peer(silent, 0.2)
    assert srv.stats["idle_closed"] == 1
    assert any("read timeout" in r for r in srv.rejections)


def test_limits_validation_names_the_field():
    with pytest.raises(ValueError, match="max_connections"):
        ServerLimits(max_connections=0)
    with pytest.raises(ValueError, match="read_timeout_s"):
        ServerLimits(read_timeout_s=-1)


# --------------------------------------------------------------------------------------------
# Sessions


class _Recorder:
    """A loopback TCP relay that records every byte the edge sends."""

    def __init__(self, upstream):
        self.upstream, self.up = upstream, bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                a, _ = self.listener.accept()
                b = socket.create_connection(self.upstream)
                threading.Thread(target=self._pump, args=(a, b, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(b, a, False), daemon=True).start()

    def _pump(self, src, dst, record):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record:
                    self.up += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self):
        self.listener.close()


def test_replayed_session_is_refused_by_a_restarted_server():
    """A captured authenticated session (HELLO, OPEN, every STEP, CLOSE), replayed byte for
    byte to a new server process with the same key, executes nothing: the new server answers
    the old HELLO with a fresh nonce, so the first replayed frame fails its tag."""
    with _server(KEY) as first:
        rec = _Recorder((first.host, first.port))
        with EdgeClient(("127.0.0.1", rec.port), EX, ClientConfig(key=KEY)) as c:
            res = c.run_request([3, 1, 4, 1, 5], CLOUD_ONLY, 3)
        rec.close()
        executed = first.stats["steps_executed"]
    assert res.fallback_at is None and executed == 4 and res.ledger["executed"] == 4
    captured = bytes(rec.up)
    with _server(KEY) as restarted:
        with socket.create_connection((restarted.host, restarted.port)) as s:
            s.sendall(captured)
            s.settimeout(3.0)
            got = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    got += chunk
    frames, i = [], 0
    while i < len(got):
        (n,) = wire.LENGTH.unpack_from(got, i)
        frames.append(got[i : i + 4 + n])
        i += 4 + n
    assert [wire.peek_flags(f[4:])[0] for f in frames] == [MsgType.WELCOME]  # nothing else
    assert restarted.stats["steps_executed"] == 0 and restarted.stats["requests_opened"] == 0
    assert any("HMAC tag does not match" in r for r in restarted.rejections)


def test_frames_are_bound_to_their_position_and_direction():
    up, down = wire.session_keys(KEY, b"a" * 32, b"b" * 32)
    f = wire.make_frame(MsgType.STEP, 1, 1, array=np.ones(3, np.float32), precision="fp32")
    data = wire.encode_frame(f, up, counter=5)
    assert wire.decode_frame(data, up, counter=5) == f
    for key, ctr in ((up, 6), (up, 4), (down, 5), (KEY, 5)):  # replayed, reordered, reflected
        with pytest.raises(wire.AuthError):
            wire.decode_frame(data, key, counter=ctr)
    other = wire.session_keys(KEY, b"a" * 32, b"c" * 32)[0]  # another session's nonce
    with pytest.raises(wire.AuthError):
        wire.decode_frame(data, other, counter=5)


def test_hkdf_matches_rfc5869_test_case_1():
    ikm, salt = bytes([0x0B] * 22), bytes(range(13))
    info = bytes(range(0xF0, 0xFA))
    okm = wire.hkdf(ikm, salt, info, 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_key_mismatches_are_refused_at_the_handshake_with_the_reason(caplog):
    caplog.set_level(logging.WARNING, logger="bridge")
    with _server(KEY) as srv:
        for key, needle in ((b"w" * 32, "key differs"), (None, "requires a shared key")):
            with pytest.raises(wire.HandshakeRefused, match=needle) as err:
                _session((srv.host, srv.port), key)
            assert err.value.kind == "auth"
    with _server(None) as srv, pytest.raises(wire.HandshakeRefused, match="has no shared key"):
        _session((srv.host, srv.port), KEY)
    assert sum("refused the session" in r.message for r in caplog.records
               if r.levelname == "WARNING") == 3


def test_key_file_rules(tmp_path):
    good = tmp_path / "good.key"
    good.write_bytes(os.urandom(32).hex().encode())
    good.chmod(0o600)
    assert len(wire.read_key_file(good)) == 64
    cases = {"open.key": (b"x" * 32, 0o644, "chmod 600"), "empty.key": (b"", 0o600, "empty"),
             "short.key": (b"abc", 0o600, "at least 16 bytes")}
    for name, (data, mode, needle) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        p.chmod(mode)
        with pytest.raises(ValueError, match=needle) as err:
            wire.read_key_file(p)
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no such file"):
        wire.read_key_file(tmp_path / "missing.key")
    with pytest.raises(ValueError, match="is a directory"):
        wire.read_key_file(tmp_path)


def test_non_loopback_bind_without_a_key_warns(caplog):
    caplog.set_level(logging.WARNING, logger="bridge")
    with _server(None).__class__(EX, host="0.0.0.0"):
        pass
    assert any("without a shared key" in r.message for r in caplog.records)
    caplog.clear()
    with CloudServer(EX, host="0.0.0.0", key=KEY):
        pass
    assert not any("without a shared key" in r.message for r in caplog.records)


# --------------------------------------------------------------------------------------------
# Honest accounting


class _DoubleExecutingServer(CloudServer):
    """A test double of a faulty cloud: its ledger shows step 1 of every request executed
    twice (a bug the real server's per-request lock and sequence number prevent)."""

    def _record_execution(self, st, seq):
        super()._record_execution(st, seq)
        if seq == 1:
            super()._record_execution(st, seq)


def _run(addr, n=3, **kw):
    from bridge.edge_run import EdgeConfig, run_edge
    from costmodel.partition import cloud_only

    client = kw.pop("client", ClientConfig(backoff=QUICK))
    cfg = EdgeConfig(prompt_tokens=4, new_tokens=2, client=client, precision="fp32", **kw)
    return run_edge(addr, n, None, lambda obs: cloud_only(L, H), cfg)


def test_ledger_reports_what_the_cloud_executed():
    with _server() as srv:
        out = _run((srv.host, srv.port))
    assert (out["answered"], out["lost"], out["duplicated"], out["ledger_missing"]) == (3, 0, 0, 0)
    assert out["cloud_steps_executed"] == srv.stats["steps_executed"] > 0
    assert all(r["ledger"]["duplicated"] == 0 for r in out["requests"])


def test_duplicated_comes_from_the_cloud_ledger():
    with _DoubleExecutingServer(EX) as srv:
        out = _run((srv.host, srv.port))
    assert out["answered"] == 3 and out["duplicated"] == 3 == out["cloud_steps_duplicated"]


def test_lost_counts_requests_without_an_outcome(monkeypatch):
    real = EdgeClient.run_request
    calls = []

    def flaky(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the edge crashed mid-request")
        return real(self, *a, **kw)

    monkeypatch.setattr(EdgeClient, "run_request", flaky)
    with _server() as srv:
        out = _run((srv.host, srv.port))
    assert (out["submitted"], out["answered"], out["failed"], out["lost"]) == (3, 2, 0, 1)
    assert "crashed" in out["lost_errors"][0]


def test_failed_and_fallback_reasons_are_counted():
    other = toy_executor(seed=1)  # a cloud with another model
    with CloudServer(other) as srv:
        out = _run((srv.host, srv.port), 2,
                   client=ClientConfig(backoff=QUICK, edge_mem_budget_bytes=1e3))
        ok = _run((srv.host, srv.port), 2)
    assert (out["failed"], out["fallbacks"], out["fallback_reasons"]) == (2, 2,
                                                                          {"model_mismatch": 2})
    assert out["lost"] == 0 and out["cloud_unusable"]["reason"] == "model_mismatch"
    assert ok["answered"] == 2 and ok["fallback_reasons"] == {"model_mismatch": 2}


def test_cloud_never_usable_stops_the_run_unless_fallback_is_allowed():
    with _server(KEY) as srv:
        stop = _run((srv.host, srv.port), 4, allow_edge_fallback=False,
                    client=ClientConfig(key=b"w" * 32, backoff=QUICK))
        go_on = _run((srv.host, srv.port), 4, client=ClientConfig(key=b"w" * 32, backoff=QUICK))
    assert stop["cloud_unusable"]["reason"] == "auth" and stop["not_run"] == 3
    assert (stop["answered"], stop["lost"]) == (1, 0)
    assert go_on["answered"] == 4 and go_on["fallback_reasons"] == {"auth": 4}


# --------------------------------------------------------------------------------------------
# The command line


def _cli(argv, capsys):
    from splitwise_cli import main

    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("case", ["wrong-key", "unreachable", "allowed"])
def test_run_edge_exits_non_zero_when_the_cloud_was_never_usable(case, tmp_path, capsys):
    kf = tmp_path / "edge.key"
    kf.write_bytes(b"e" * 32)
    kf.chmod(0o600)
    with _server(KEY) as srv:
        port = srv.port if case != "unreachable" else free_port()
        argv = ["run-edge", "--cloud", f"127.0.0.1:{port}", "--requests", "3", "--policy",
                "cloud-only", "--key-file", str(kf), "--retries", "1", "--backoff-base",
                "0.01", "--timeout", "1", "--rtt-ms", "0", "--json"]
        if case == "allowed":
            argv.append("--allow-edge-fallback")
        code, out, err = _cli(argv, capsys)
    if case == "allowed":
        assert code == 0, err
        return
    assert code == 3
    lines = [ln for ln in err.splitlines() if ln.startswith("splitwise run-edge: error")]
    assert len(lines) == 1
    assert ("wrong or missing key" if case == "wrong-key" else "cloud unreachable") in lines[0]


def test_serve_cloud_on_a_port_in_use_is_one_line(capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, _, err = _cli(["serve-cloud", "--port", str(port)], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and f"--port {port}" in lines[0] and "in use" in lines[0]
