"""The cloud side of the split runtime: serves the cloud blocks of any partition to many edge
clients at once. Design: ``docs/design.md §5``.

Concurrency: threads, one per edge connection (plus an accept thread and a sweeper of idle
request state). The work per message is blocking NumPy/torch compute, which releases the GIL
inside its kernels, followed by blocking socket writes; under asyncio all of it would have to
go to an executor anyway, adding a second scheduler for no gain at the tens of clients this
serves. Each request's state has its own lock, so two connections that carry the same request
(a retry racing a stale connection) serialize on it; that lock plus the per-request sequence
number is what makes the execution of each (request, seq) exactly-once.

Protocol (frames of ``bridge.wire``):

- edge -> cloud: ``OPEN`` (seq 0; int64 vector of ``blocks.encode_open``: partition, prompt
  length, number of tokens, model fingerprint), ``STEP`` (seq 1, 2, ...: one crossing each, the
  tensor the cloud's program waits for, tag and layer checked), ``CLOSE`` (frees the state).
- cloud -> edge: ``RESULT`` (seq = the request's own downlink counter 0, 1, ...; one crossing
  of the cloud's program), ``ACK`` (seq = the edge seq it acknowledges, aux = RESULTs emitted so
  far), ``ERROR`` (seq = the edge seq, tag = ``ErrorCode``, aux = the next seq the cloud
  expects for the request, 0 when it holds no state; text = the reason).

On ``OPEN`` the server builds the cloud side's ``blocks.request_program`` (its K/V caches for
the cloud heads live in that generator) and runs it up to its first ``Recv``; each in-order
``STEP`` feeds the received tensor and runs it to the next ``Recv``, streaming every ``Send``
as a RESULT as soon as it is produced. The frames of each executed seq are cached until
``CLOSE`` (or until the state has been idle ``state_ttl_s``): a duplicate seq gets the cached
frames again without re-executing. A seq ahead of the expected one, or any seq for a request
without state (e.g. after a server restart), gets ``ERROR`` with the expected seq, from which
the edge replays its log. A frame that fails the wire checks (malformed, oversized,
truncated, bad crc, wrong or missing HMAC) is logged with its reason and its connection is
closed (the stream's framing can no longer be trusted); other connections are unaffected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import socket
import threading
import time
from collections import Counter, OrderedDict, deque

import numpy as np

from bridge import wire
from bridge.blocks import CLOUD, TOKENS, Executor, Recv, Send, decode_open, request_program
from bridge.wire import MsgType

log = logging.getLogger(__name__)


class ErrorCode(enum.IntEnum):
    """The ``tag`` of an ERROR frame."""

    STATE_LOST = 1  # no state for this request (restart, eviction): replay from seq 0
    OUT_OF_ORDER = 2  # seq is not the next one: replay from ``aux``
    BAD_REQUEST = 3  # the request cannot be served (model mismatch, protocol violation)
    INTERNAL = 4  # the executor failed; the state is dropped


RETRYABLE = (ErrorCode.STATE_LOST, ErrorCode.OUT_OF_ORDER)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Cloud server settings.

    max_frame: largest accepted frame, bytes.
    idle_timeout_s: a connection silent this long is closed.
    state_ttl_s: request state idle this long is dropped (the edge replays if it returns).
    max_states: most request states held; beyond it the least recently used idle one goes.
    track_executions: count executions per (request, seq) in ``CloudServer.executions``
      (for tests; it grows with every step served).
    """

    max_frame: int = wire.DEFAULT_MAX_FRAME
    idle_timeout_s: float = 300.0
    state_ttl_s: float = 600.0
    max_states: int = 4096
    track_executions: bool = False


class _RequestState:
    """One request on the cloud: its program (holding the cloud heads' K/V caches), the next
    expected seq, the downlink counter and the cached reply bytes of every executed seq."""

    def __init__(self, request_id: int, program):
        self.request_id = request_id
        self.program = program
        self.lock = threading.Lock()
        self.next_seq = 0
        self.down_seq = 0
        self.pending: Recv | None = None
        self.done = False
        self.replies: dict[int, list[bytes]] = {}
        self.last_used = time.monotonic()


class _Conn:
    """The server end of one connection; writes are best effort (a dead peer does not stop
    the execution of a step, whose reply stays cached for the retry)."""

    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer = sock, peer
        self.lock = threading.Lock()
        self.dead = False

    def write(self, data: bytes) -> None:
        if self.dead:
            return
        try:
            with self.lock:
                self.sock.sendall(data)
        except OSError as err:
            self.dead = True
            log.info("cloud: write to %s failed (%s); reply kept for a retry", self.peer, err)


class CloudServer:
    """Threaded cloud server. ``start()`` binds and returns (host, port); ``stop()`` closes
    the listener and every connection. ``stats`` counts frames, executions, duplicates and
    rejections; ``rejections`` keeps the last reasons; with ``config.track_executions``,
    ``executions[(request, seq)]`` counts how often each step ran on this instance."""

    def __init__(self, executor: Executor, host: str = "127.0.0.1", port: int = 0,
                 key: bytes | None = None, config: ServerConfig = ServerConfig()):
        self.executor, self.host, self.port, self.key, self.config = (executor, host, port,
                                                                      key, config)
        self.stats: Counter = Counter()
        self.rejections: deque[str] = deque(maxlen=1000)
        self.executions: Counter = Counter()
        self._states: OrderedDict[int, _RequestState] = OrderedDict()
        self._closed: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # ---- lifecycle

    def start(self) -> tuple[str, int]:
        self._listener = socket.create_server((self.host, self.port), reuse_port=False)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        for target in (self._accept_loop, self._sweep_loop):
            t = threading.Thread(target=target, daemon=True, name=f"cloud-{target.__name__}")
            t.start()
            self._threads.append(t)
        log.info("cloud: serving %s on %s:%d (%s)", self.executor.name, self.host, self.port,
                 "HMAC on" if self.key else "no HMAC")
        return self.host, self.port

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=2.0)

    def __enter__(self) -> CloudServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.config.idle_timeout_s)
            with self._lock:
                self._conns.add(sock)
            peer = f"{addr[0]}:{addr[1]}"
            threading.Thread(target=self._serve_conn, args=(sock, peer), daemon=True,
                             name=f"cloud-conn-{peer}").start()

    def _sweep_loop(self) -> None:
        period = max(min(self.config.state_ttl_s / 4, 5.0), 0.05)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                stale = [rid for rid, st in self._states.items()
                         if now - st.last_used > self.config.state_ttl_s and not st.lock.locked()]
                for rid in stale:
                    del self._states[rid]
            for rid in stale:
                self.stats["states_evicted"] += 1
                log.info("cloud: dropped idle state of request %d", rid)

    # ---- per connection

    def _reject(self, peer: str, reason: str) -> None:
        self.stats["frames_rejected"] += 1
        self.rejections.append(reason)
        log.warning("cloud: rejected frame from %s: %s (connection closed)", peer, reason)

    def _serve_conn(self, sock: socket.socket, peer: str) -> None:
        conn = _Conn(sock, peer)
        try:
            while not self._stop.is_set():
                try:
                    frame, _ = wire.read_frame(sock, self.key, self.config.max_frame)
                except wire.PeerClosed:
                    break
                except wire.WireError as err:
                    self._reject(peer, err.reason)
                    break
                except OSError:
                    break
                self.stats["frames_in"] += 1
                self._dispatch(frame, conn)
        finally:
            with self._lock:
                self._conns.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _send(self, conn: _Conn, frame: wire.Frame) -> bytes:
        data = wire.encode_frame(frame, self.key)
        conn.write(data)
        return data

    def _error(self, conn: _Conn, frame: wire.Frame, code: ErrorCode, reason: str,
               expected: int = 0) -> None:
        self.stats[f"error_{code.name.lower()}"] += 1
        level = logging.INFO if code in RETRYABLE else logging.WARNING
        log.log(level, "cloud: request %d seq %d from %s: %s", frame.request_id, frame.seq,
                conn.peer, reason)
        self._send(conn, wire.make_frame(MsgType.ERROR, frame.request_id, frame.seq,
                                         tag=int(code), aux=expected, text=reason))

    def _dispatch(self, frame: wire.Frame, conn: _Conn) -> None:
        rid = frame.request_id
        with self._lock:
            closed = rid in self._closed
        if closed:
            if frame.msg_type == MsgType.CLOSE:
                self._send(conn, wire.make_frame(MsgType.ACK, rid, frame.seq))
            else:  # a late duplicate of a finished request: nobody waits for it
                self.stats["late_frames_ignored"] += 1
            return
        if frame.msg_type == MsgType.OPEN:
            self._open(frame, conn)
        elif frame.msg_type == MsgType.STEP:
            self._step(frame, conn)
        elif frame.msg_type == MsgType.CLOSE:
            self._close_request(frame, conn)
        else:
            self._error(conn, frame, ErrorCode.BAD_REQUEST,
                        f"{frame.msg_type.name} is not an edge-to-cloud message")

    # ---- requests

    def _open(self, frame: wire.Frame, conn: _Conn) -> None:
        rid = frame.request_id
        if frame.seq != 0:
            self._error(conn, frame, ErrorCode.BAD_REQUEST, "OPEN must carry seq 0")
            return
        with self._lock:
            st = self._states.get(rid)
        if st is None:
            try:
                vec = frame.array()
                if vec is None or vec.dtype != np.int64:
                    raise ValueError("OPEN must carry an int64 vector")
                rp, prompt_len, n_out, fp = decode_open(vec)
                cfg = self.executor.cfg
                if rp.head_on_edge.shape != (cfg.n_layers, cfg.n_heads):
                    raise ValueError(f"partition for L={rp.n_layers}, H="
                                     f"{rp.head_on_edge.shape[1]}; this server's model has "
                                     f"L={cfg.n_layers}, H={cfg.n_heads}")
                if fp != self.executor.fingerprint():
                    raise ValueError(f"model fingerprint {fp:x} differs from this server's "
                                     f"{self.executor.fingerprint():x} ({self.executor.name})")
            except ValueError as err:
                self._error(conn, frame, ErrorCode.BAD_REQUEST, f"bad OPEN: {err}")
                return
            program = request_program(CLOUD, self.executor, rp, prompt_len, n_out)
            new = _RequestState(rid, program)
            with self._lock:
                st = self._states.setdefault(rid, new)
                self._states.move_to_end(rid)
                self._evict_over_cap()
            if st is new:
                self.stats["requests_opened"] += 1
        self._run_step(st, frame, conn, value=None)

    def _evict_over_cap(self) -> None:
        while len(self._states) > self.config.max_states:
            for rid, st in self._states.items():
                if not st.lock.locked():
                    del self._states[rid]
                    self.stats["states_evicted"] += 1
                    break
            else:
                return

    def _step(self, frame: wire.Frame, conn: _Conn) -> None:
        with self._lock:
            st = self._states.get(frame.request_id)
            if st is not None:
                self._states.move_to_end(frame.request_id)
        if st is None:
            self._error(conn, frame, ErrorCode.STATE_LOST,
                        "no state for this request (server restarted or state evicted)", 0)
            return
        self._run_step(st, frame, conn, value=frame)

    def _run_step(self, st: _RequestState, frame: wire.Frame, conn: _Conn, value) -> None:
        """Execute ``frame.seq`` of ``st`` exactly once; replay the cached reply for a
        duplicate; reject a gap. ``value`` is the STEP frame (None for OPEN)."""
        with st.lock:
            st.last_used = time.monotonic()
            seq = frame.seq
            if seq < st.next_seq:
                self.stats["duplicates_replayed"] += 1
                for data in st.replies.get(seq, ()):
                    conn.write(data)
                return
            if seq > st.next_seq:
                self._error(conn, frame, ErrorCode.OUT_OF_ORDER,
                            f"seq {seq} ahead of the expected {st.next_seq}", st.next_seq)
                return
            try:
                tensor = None if value is None else self._input(st, frame)
            except ValueError as err:
                self._error(conn, frame, ErrorCode.BAD_REQUEST, str(err), st.next_seq)
                return
            out: list[bytes] = []
            try:
                ev = next(st.program) if value is None else st.program.send(tensor)
                while isinstance(ev, Send):
                    f = wire.make_frame(MsgType.RESULT, st.request_id, st.down_seq,
                                        layer=ev.layer, tag=ev.tag, array=ev.value,
                                        precision=ev.precision)
                    st.down_seq += 1
                    out.append(self._send(conn, f))
                    ev = st.program.send(None)
                st.pending = ev
            except StopIteration:
                st.pending, st.done = None, True
            except Exception as err:  # the executor failed: the state cannot continue
                log.exception("cloud: request %d seq %d failed", st.request_id, seq)
                with self._lock:
                    self._states.pop(st.request_id, None)
                self._error(conn, frame, ErrorCode.INTERNAL, f"executor failed: {err!r}")
                return
            out.append(self._send(conn, wire.make_frame(MsgType.ACK, st.request_id, seq,
                                                        aux=st.down_seq)))
            st.replies[seq] = out
            st.next_seq = seq + 1
            if self.config.track_executions:
                self.executions[(st.request_id, seq)] += 1
            self.stats["steps_executed"] += 1

    def _input(self, st: _RequestState, frame: wire.Frame) -> np.ndarray:
        """The STEP's tensor, checked against what the cloud's program waits for."""
        want = st.pending
        if want is None:
            raise ValueError("the request's cloud program has finished; no STEP expected")
        if (frame.tag, frame.layer) != (want.tag, want.layer):
            raise ValueError(f"STEP carries tag {frame.tag} layer {frame.layer}, the cloud "
                             f"program waits for tag {want.tag} layer {want.layer}")
        if want.tag == TOKENS:
            ids = frame.array()
            if ids is None or ids.dtype != np.int32 or ids.ndim != 1:
                raise ValueError("token ids must be an int32 vector")
            if ids.size and (ids.min() < 0 or ids.max() >= self.executor.cfg.vocab_size):
                raise ValueError("token id out of the vocabulary")
            return ids
        x = frame.activation()
        if x.ndim != 3 or x.shape[0] != 1:
            raise ValueError(f"activation of shape {x.shape}, expected [1, T, width]")
        return x

    def _close_request(self, frame: wire.Frame, conn: _Conn) -> None:
        rid = frame.request_id
        with self._lock:
            self._states.pop(rid, None)
            self._closed[rid] = None
            while len(self._closed) > 4 * self.config.max_states:
                self._closed.popitem(last=False)
        self.stats["requests_closed"] += 1
        self._send(conn, wire.make_frame(MsgType.ACK, rid, frame.seq))


def serve_cloud(host: str, port: int, key: bytes | None, executor: Executor,
                config: ServerConfig = ServerConfig()) -> None:
    """Serve until interrupted (``splitwise serve-cloud``)."""
    server = CloudServer(executor, host, port, key, config)
    host, port = server.start()
    print(f"splitwise serve-cloud: {executor.name} on {host}:{port}"
          f"{' with HMAC' if key else ''}; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
