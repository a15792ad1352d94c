"""The cloud side of the split runtime: serves the cloud blocks of any partition to many edge
clients at once. Design: ``docs/design.md §5``.

Concurrency: threads, one per edge connection (plus an accept thread and a sweeper of idle
request state). The work per message is blocking NumPy/torch compute, which releases the GIL
inside its kernels, followed by blocking socket writes; under asyncio all of it would have to
go to an executor anyway, adding a second scheduler for no gain at the tens of clients this
serves. Each request's state has its own lock, so two connections that carry the same request
(a retry racing a stale connection) serialize on it; that lock plus the per-request sequence
number is what makes the execution of each (request, seq) exactly-once.

Protocol (frames of ``bridge.wire``; each connection opens with the ``HELLO`` / ``WELCOME``
handshake of ``bridge.wire``, which sets its per-direction session keys and frame counters):

- edge -> cloud: ``OPEN`` (seq 0; int64 vector of ``blocks.encode_open``: partition, prompt
  length, number of tokens, model fingerprint), ``STEP`` (seq 1, 2, ...: one crossing each, the
  tensor the cloud's program waits for, tag and layer checked), ``CLOSE`` (frees the state).
- cloud -> edge: ``RESULT`` (seq = the request's own downlink counter 0, 1, ...; one crossing
  of the cloud's program), ``ACK`` (seq = the edge seq it acknowledges, aux = RESULTs emitted so
  far), ``ERROR`` (seq = the edge seq, tag = ``ErrorCode``, aux = the next seq the cloud
  expects for the request, 0 when it holds no state; text = the reason). The ACK of a
  ``CLOSE`` carries the request's execution ledger: int64 ``[steps executed, steps executed
  more than once, 1 if the state was held else 0]``.
- A STEP's ``aux`` is the next RESULT seq the edge still needs; cached RESULTs below it are
  freed.

On ``OPEN`` the server builds the cloud side's ``blocks.request_program`` (its K/V caches for
the cloud heads live in that generator) and runs it up to its first ``Recv``; each in-order
``STEP`` feeds the received tensor and runs it to the next ``Recv``, streaming every ``Send``
as a RESULT as soon as it is produced. The RESULTs the edge may still need are cached (as
frames, re-encoded for whichever connection asks: frames are bound to their connection's
session) until the edge reports them received, ``CLOSE``, or ``state_ttl_s`` of idleness: a
duplicate seq gets its cached RESULTs and ACK again without re-executing. A seq ahead of the
expected one, or any seq for a request without state (e.g. after a server restart), gets
``ERROR`` with the expected seq, from which the edge replays its log. A frame that fails
the wire checks (malformed, oversized, truncated, slow, bad crc, wrong or missing HMAC, over
its type's limit) is logged at WARNING with its reason and its connection is closed (the
stream's framing can no longer be trusted); other connections are unaffected.

Resources are bounded by ``ServerLimits`` (see its docstring for the defaults and
``memory_bound_bytes`` for what they imply).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import ipaddress
import logging
import socket
import threading
import time
from collections import Counter, OrderedDict, deque

import numpy as np

from bridge import wire
from bridge.blocks import (
    CLOUD,
    TOKENS,
    Executor,
    Recv,
    Send,
    decode_open,
    open_size,
    request_program,
)
from bridge.wire import MsgType

log = logging.getLogger(__name__)


class ErrorCode(enum.IntEnum):
    """The ``tag`` of an ERROR frame."""

    STATE_LOST = 1  # no state for this request (restart, eviction): replay from seq 0
    OUT_OF_ORDER = 2  # seq is not the next one: replay from ``aux``
    BAD_REQUEST = 3  # the request cannot be served (model mismatch, limits, protocol)
    INTERNAL = 4  # the executor failed; the state is dropped
    BUSY = 5  # the server holds its maximum of requests: back off and retry


RETRYABLE = (ErrorCode.STATE_LOST, ErrorCode.OUT_OF_ORDER, ErrorCode.BUSY)
FRAME_OVERHEAD = wire.HEADER.size + wire.HTAG_BYTES + wire.CRC.size + wire.TAG_BYTES
LEDGER_FIELDS = ("executed", "duplicated", "held")


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one client can make the cloud spend (every limit is per server).

    max_prompt_tokens: longest prompt of a request (None: the model's context,
      ``Executor.context_length``).
    max_new_tokens: most generated tokens of a request (None: the model's context); prompt +
      new tokens never exceed the context.
    max_connections: open connections; one more is refused (``Refusal.BUSY``) at accept.
    max_requests: request states held at once; an OPEN beyond it first evicts states idle
      for ``evict_idle_s``, else gets ``ERROR BUSY`` (the edge backs off and retries).
    evict_idle_s: idleness after which a state may be evicted to admit a new request, s.
    state_ttl_s: a request state idle this long is dropped (the edge replays if it returns).
    idle_timeout_s: a connection with no frame for this long is closed, s.
    read_timeout_s: once a frame's first byte arrived, the rest must arrive within this, s
      (slow senders are cut off).
    handshake_timeout_s: the HELLO must arrive within this of the accept, s.
    max_frame: absolute cap on any frame, bytes; each message type has its own smaller
      limit (``frame_limits``), checked from the authenticated header before the payload
      is read.
    max_reply_cache_bytes: cached RESULT bytes per request kept for retransmission beyond
      what the edge reported received (None: two STEP frame limits).
    """

    max_prompt_tokens: int | None = None
    max_new_tokens: int | None = None
    max_connections: int = 64
    max_requests: int = 256
    evict_idle_s: float = 30.0
    state_ttl_s: float = 600.0
    idle_timeout_s: float = 120.0
    read_timeout_s: float = 30.0
    handshake_timeout_s: float = 10.0
    max_frame: int = wire.DEFAULT_MAX_FRAME
    max_reply_cache_bytes: int | None = None

    def __post_init__(self):
        for name in ("max_prompt_tokens", "max_new_tokens", "max_reply_cache_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"ServerLimits.{name} must be an integer > 0 or None, "
                                 f"got {v!r}")
        for name in ("max_connections", "max_requests", "max_frame"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ServerLimits.{name} must be an integer > 0, got {v!r}")
        for name in ("evict_idle_s", "state_ttl_s", "idle_timeout_s", "read_timeout_s",
                     "handshake_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"ServerLimits.{name} must be a number > 0, got {v!r}")

    def tokens(self, executor: Executor) -> tuple[int, int, int]:
        """(context, max prompt tokens, max new tokens) for ``executor``'s model."""
        ctx = int(executor.context_length)
        return (ctx, min(self.max_prompt_tokens or ctx, ctx), min(self.max_new_tokens or ctx,
                                                                  ctx))

    def frame_limits(self, executor: Executor) -> dict:
        """Largest frame of each edge -> cloud message type, bytes (after the length prefix):
        OPEN fits the model's partition vector, STEP the widest float32 activation of the
        longest prompt, CLOSE no payload."""
        c = executor.cfg
        _, max_prompt, _ = self.tokens(executor)
        width = max(c.d_model, c.d_ff, c.n_heads * c.head_dim)
        step = max(wire.payload_size(wire.DType.F32, (1, max_prompt, width)), 4 * max_prompt)
        open_ = 8 * open_size(c.n_layers, c.n_heads)
        return {MsgType.OPEN: min(FRAME_OVERHEAD + open_, self.max_frame),
                MsgType.STEP: min(FRAME_OVERHEAD + step, self.max_frame),
                MsgType.CLOSE: FRAME_OVERHEAD}

    def reply_cache_bytes(self, executor: Executor) -> int:
        return self.max_reply_cache_bytes or 2 * self.frame_limits(executor)[MsgType.STEP]

    def memory_bound_bytes(self, executor: Executor) -> int:
        """Upper bound of the memory the server's request and connection state can take
        beyond its model, bytes: per held request the cloud heads' float32 K/V at the full
        context (all heads, the worst partition) plus its reply cache and one activation of
        the longest prompt in flight; per connection one frame of the largest type being
        read plus as much again being encoded."""
        c = executor.cfg
        ctx, max_prompt, _ = self.tokens(executor)
        kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * ctx * 4
        width = max(c.d_model, c.d_ff, c.n_heads * c.head_dim)
        act = 4 * max_prompt * width
        per_request = kv + self.reply_cache_bytes(executor) + act
        per_conn = 2 * max(self.frame_limits(executor).values())
        return self.max_requests * per_request + self.max_connections * per_conn


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Cloud server settings.

    limits: ``ServerLimits`` (resource bounds and timeouts).
    track_executions: count executions per (request, seq) in ``CloudServer.executions``
      (for tests; it grows with every step served). The per-request ledger reported in the
      CLOSE reply is kept regardless.
    """

    limits: ServerLimits = ServerLimits()
    track_executions: bool = False


class _RequestState:
    """One request on the cloud: its program (holding the cloud heads' K/V caches), the next
    expected seq, the downlink counter, the RESULTs the edge may still need, the ledger."""

    def __init__(self, request_id: int, program, prompt_len: int):
        self.request_id = request_id
        self.program = program
        self.prompt_len = prompt_len
        self.lock = threading.Lock()
        self.next_seq = 0
        self.down_seq = 0
        self.pending: Recv | None = None
        self.done = False
        self.results: OrderedDict[int, wire.Frame] = OrderedDict()  # down seq -> RESULT
        self.result_bytes = 0
        self.spans: dict[int, tuple[int, int]] = {}  # seq -> its RESULTs' down seqs [lo, hi)
        self.received = 0  # RESULTs below this the edge has (STEP aux)
        self.ledger: Counter = Counter()  # seq -> executions
        self.last_used = time.monotonic()

    def prune(self, received: int) -> None:
        if received <= self.received:
            return
        self.received = received
        while self.results and next(iter(self.results)) < received:
            _, f = self.results.popitem(last=False)
            self.result_bytes -= len(f.payload)
        for seq in [s for s, (_, hi) in self.spans.items() if hi <= received]:
            del self.spans[seq]

    def ledger_vector(self) -> np.ndarray:
        return np.array([sum(self.ledger.values()),
                         sum(c - 1 for c in self.ledger.values() if c > 1), 1], np.int64)


class _Conn:
    """The server end of one connection and its session ``Channel``; writes are best effort
    (a dead peer does not stop the execution of a step, whose reply stays cached)."""

    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer = sock, peer
        self.channel = wire.Channel()
        self.lock = threading.Lock()
        self.dead = False

    def write(self, frame: wire.Frame) -> None:
        if self.dead:
            return
        try:
            with self.lock:
                self.sock.sendall(self.channel.encode(frame))
        except OSError as err:
            self.dead = True
            log.info("cloud: write to %s failed (%s); reply kept for a retry", self.peer, err)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CloudServer:
    """Threaded cloud server. ``start()`` binds and returns (host, port); ``stop()`` closes
    the listener and every connection. ``stats`` counts frames, executions, duplicates,
    refusals and rejections; ``rejections`` keeps the last reasons; with
    ``config.track_executions``, ``executions[(request, seq)]`` counts how often each step
    ran on this instance."""

    def __init__(self, executor: Executor, host: str = "127.0.0.1", port: int = 0,
                 key: bytes | None = None, config: ServerConfig = ServerConfig()):
        self.executor, self.host, self.port, self.key, self.config = (executor, host, port,
                                                                      key, config)
        self.limits = config.limits
        self.context, self.max_prompt, self.max_new = self.limits.tokens(executor)
        self.frame_limits = self.limits.frame_limits(executor)
        self.reply_cache = self.limits.reply_cache_bytes(executor)
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
        try:
            self._listener = socket.create_server((self.host, self.port), reuse_port=False)
        except OSError as err:
            raise OSError(err.errno, f"cannot listen on {self.host}:{self.port} "
                                     f"({err.strerror or err})") from None
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        for target in (self._accept_loop, self._sweep_loop):
            t = threading.Thread(target=target, daemon=True, name=f"cloud-{target.__name__}")
            t.start()
            self._threads.append(t)
        if self.key is None and not _is_loopback(self.host):
            log.warning("cloud: listening on %s without a shared key: anyone who can reach "
                        "this address can run requests (serve-cloud --key-file)", self.host)
        log.info("cloud: serving %s on %s:%d (%s)", self.executor.name, self.host, self.port,
                 "authenticated sessions" if self.key else "no key")
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
            peer = f"{addr[0]}:{addr[1]}"
            with self._lock:
                full = len(self._conns) >= self.limits.max_connections
                if not full:
                    self._conns.add(sock)
            if full:
                self.stats["connections_refused"] += 1
                log.warning("cloud: refused a connection from %s: %d connections open "
                            "(ServerLimits.max_connections)", peer, self.limits.max_connections)
                with contextlib.suppress(OSError):
                    sock.settimeout(1.0)
                    sock.sendall(wire.refusal_frame(wire.Refusal.BUSY, "too many connections"))
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve_conn, args=(sock, peer), daemon=True,
                             name=f"cloud-conn-{peer}").start()

    def _sweep_loop(self) -> None:
        period = max(min(self.limits.state_ttl_s / 4, 5.0), 0.05)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                stale = [rid for rid, st in self._states.items()
                         if now - st.last_used > self.limits.state_ttl_s and not st.lock.locked()]
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
        lim = self.limits
        try:
            try:
                conn.channel = wire.server_handshake(sock, self.key, lim.handshake_timeout_s)
                self.stats["sessions"] += 1
            except wire.HandshakeRefused as err:
                self.stats["handshakes_refused"] += 1
                self.rejections.append(err.reason)
                log.warning("cloud: refused the session of %s: %s", peer, err.reason)
                return
            except wire.WireError as err:
                self._reject(peer, f"handshake: {err.reason}")
                return
            except (OSError, ValueError):
                return
            while not self._stop.is_set():
                try:
                    frame, _ = conn.channel.read(sock, lim.max_frame, self.frame_limits,
                                                 lim.idle_timeout_s, lim.read_timeout_s)
                except wire.PeerClosed:
                    break
                except wire.WireError as err:
                    self._reject(peer, err.reason)
                    break
                except TimeoutError:
                    self.stats["idle_closed"] += 1
                    log.info("cloud: closed %s after %.0f s without a frame", peer,
                             lim.idle_timeout_s)
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

    def _error(self, conn: _Conn, frame: wire.Frame, code: ErrorCode, reason: str,
               expected: int = 0) -> None:
        self.stats[f"error_{code.name.lower()}"] += 1
        if code in (ErrorCode.STATE_LOST, ErrorCode.OUT_OF_ORDER):
            level = logging.INFO
        else:
            level = logging.WARNING
            self.rejections.append(reason)
        log.log(level, "cloud: request %d seq %d from %s: %s", frame.request_id, frame.seq,
                conn.peer, reason)
        conn.write(wire.make_frame(MsgType.ERROR, frame.request_id, frame.seq, tag=int(code),
                                   aux=expected, text=reason))

    def _dispatch(self, frame: wire.Frame, conn: _Conn) -> None:
        rid = frame.request_id
        if frame.msg_type == MsgType.CLOSE:
            self._close_request(frame, conn)
            return
        with self._lock:
            closed = rid in self._closed
        if closed:  # a late duplicate of a finished request: nobody waits for it
            self.stats["late_frames_ignored"] += 1
            return
        if frame.msg_type == MsgType.OPEN:
            self._open(frame, conn)
        elif frame.msg_type == MsgType.STEP:
            self._step(frame, conn)
        else:
            self._error(conn, frame, ErrorCode.BAD_REQUEST,
                        f"{frame.msg_type.name} is not an edge-to-cloud message")

    # ---- requests

    def _check_open(self, frame: wire.Frame):
        vec = frame.array()
        if vec is None or vec.dtype != np.int64:
            raise ValueError("OPEN must carry an int64 vector")
        rp, prompt_len, n_out, fp = decode_open(vec)
        cfg = self.executor.cfg
        if rp.head_on_edge.shape != (cfg.n_layers, cfg.n_heads):
            raise ValueError(f"model mismatch: partition for L={rp.n_layers}, H="
                             f"{rp.head_on_edge.shape[1]}; this server's model has "
                             f"L={cfg.n_layers}, H={cfg.n_heads}")
        if fp != self.executor.fingerprint():
            raise ValueError(f"model mismatch: model fingerprint {fp:x} differs from this "
                             f"server's {self.executor.fingerprint():x} ({self.executor.name})")
        if prompt_len > self.max_prompt:
            raise ValueError(f"prompt of {prompt_len} tokens exceeds this server's limit of "
                             f"{self.max_prompt} (ServerLimits.max_prompt_tokens)")
        if n_out > self.max_new:
            raise ValueError(f"{n_out} new tokens exceed this server's limit of "
                             f"{self.max_new} (ServerLimits.max_new_tokens)")
        if prompt_len + n_out > self.context:
            raise ValueError(f"prompt {prompt_len} + new {n_out} tokens exceed the model's "
                             f"context of {self.context}")
        return rp, prompt_len, n_out

    def _admit(self) -> bool:
        """Room for one more request state (evicting one idle for ``evict_idle_s``)."""
        if len(self._states) < self.limits.max_requests:
            return True
        now = time.monotonic()
        for rid, st in self._states.items():  # least recently used first
            if now - st.last_used > self.limits.evict_idle_s and not st.lock.locked():
                del self._states[rid]
                self.stats["states_evicted"] += 1
                return True
        return False

    def _open(self, frame: wire.Frame, conn: _Conn) -> None:
        rid = frame.request_id
        if frame.seq != 0:
            self._error(conn, frame, ErrorCode.BAD_REQUEST, "OPEN must carry seq 0")
            return
        with self._lock:
            st = self._states.get(rid)
        if st is None:
            try:
                rp, prompt_len, n_out = self._check_open(frame)
            except ValueError as err:
                self._error(conn, frame, ErrorCode.BAD_REQUEST, f"bad OPEN: {err}")
                return
            program = request_program(CLOUD, self.executor, rp, prompt_len, n_out)
            new = _RequestState(rid, program, prompt_len)
            with self._lock:
                st = self._states.get(rid)
                if st is None:
                    if not self._admit():
                        st = None
                    else:
                        st = self._states[rid] = new
                if st is not None:
                    self._states.move_to_end(rid)
            if st is None:
                self._error(conn, frame, ErrorCode.BUSY,
                            f"{self.limits.max_requests} requests in progress "
                            "(ServerLimits.max_requests); retry later")
                return
            if st is new:
                self.stats["requests_opened"] += 1
        self._run_step(st, frame, conn, value=None)

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

    def _record_execution(self, st: _RequestState, seq: int) -> None:
        """The execution ledger: one more execution of ``seq`` of ``st``."""
        st.ledger[seq] += 1
        if self.config.track_executions:
            self.executions[(st.request_id, seq)] += 1
        self.stats["steps_executed"] += 1

    def _run_step(self, st: _RequestState, frame: wire.Frame, conn: _Conn, value) -> None:
        """Execute ``frame.seq`` of ``st`` exactly once; resend the cached reply for a
        duplicate; reject a gap. ``value`` is the STEP frame (None for OPEN)."""
        with st.lock:
            st.last_used = time.monotonic()
            seq = frame.seq
            if value is not None:
                st.prune(frame.aux)
            if seq < st.next_seq:
                self.stats["duplicates_replayed"] += 1
                lo, hi = st.spans.get(seq, (st.down_seq, st.down_seq))
                for d in range(max(lo, st.received), hi):
                    if d in st.results:
                        conn.write(st.results[d])
                conn.write(wire.make_frame(MsgType.ACK, st.request_id, seq, aux=hi))
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
            lo = st.down_seq
            try:
                ev = next(st.program) if value is None else st.program.send(tensor)
                while isinstance(ev, Send):
                    f = wire.make_frame(MsgType.RESULT, st.request_id, st.down_seq,
                                        layer=ev.layer, tag=ev.tag, array=ev.value,
                                        precision=ev.precision)
                    self._cache(st, f)
                    st.down_seq += 1
                    conn.write(f)
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
            st.spans[seq] = (lo, st.down_seq)
            st.next_seq = seq + 1
            self._record_execution(st, seq)
            conn.write(wire.make_frame(MsgType.ACK, st.request_id, seq, aux=st.down_seq))

    def _cache(self, st: _RequestState, f: wire.Frame) -> None:
        st.results[f.seq] = f
        st.result_bytes += len(f.payload)
        while st.result_bytes > self.reply_cache and len(st.results) > 1:
            _, old = st.results.popitem(last=False)
            st.result_bytes -= len(old.payload)
            self.stats["results_uncached"] += 1

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
            if ids.size > st.prompt_len:
                raise ValueError(f"{ids.size} token ids, the request's prompt has "
                                 f"{st.prompt_len}")
            if ids.size and (ids.min() < 0 or ids.max() >= self.executor.cfg.vocab_size):
                raise ValueError("token id out of the vocabulary")
            return ids
        x = frame.activation()
        if x.ndim != 3 or x.shape[0] != 1:
            raise ValueError(f"activation of shape {x.shape}, expected [1, T, width]")
        if x.shape[1] > st.prompt_len:
            raise ValueError(f"activation of {x.shape[1]} positions, the request's prompt has "
                             f"{st.prompt_len}")
        return x

    def _close_request(self, frame: wire.Frame, conn: _Conn) -> None:
        rid = frame.request_id
        with self._lock:
            st = self._states.pop(rid, None)
            first = rid not in self._closed
            self._closed[rid] = None
            self._closed.move_to_end(rid)
            while len(self._closed) > 4 * self.limits.max_requests + 1024:
                self._closed.popitem(last=False)
        if st is not None:
            with st.lock:
                ledger = st.ledger_vector()
        else:
            ledger = np.zeros(len(LEDGER_FIELDS), np.int64)
        if first:
            self.stats["requests_closed"] += 1
        conn.write(wire.make_frame(MsgType.ACK, rid, frame.seq, array=ledger))


def setup_logging(level: int = logging.INFO) -> None:
    """Log the server's events to stderr (``serve-cloud``), rejections at WARNING."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_cloud(host: str, port: int, key: bytes | None, executor: Executor,
                config: ServerConfig = ServerConfig()) -> None:
    """Serve until interrupted (``splitwise serve-cloud``)."""
    server = CloudServer(executor, host, port, key, config)
    host, port = server.start()
    lim = config.limits
    print(f"splitwise serve-cloud: {executor.name} on {host}:{port}"
          f"{' with authenticated sessions' if key else ''}; limits: prompt "
          f"{server.max_prompt}, new {server.max_new} tokens, {lim.max_connections} "
          f"connections, {lim.max_requests} requests; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
