"""The edge side of the split runtime: runs its own blocks, the cloud's remotely, with partition
checkpoints, retries with backoff, and fallback to the edge. Design: ``docs/design.md §5``.

``EdgeClient.run_request(prompt, partition, n_out)`` executes one request for real: the edge
side of ``blocks.request_program`` runs here; every ``Send`` becomes a STEP frame (after an
OPEN carrying the partition) and every ``Recv`` waits for the cloud's next RESULT, through a
``transport.Connection`` shaped by the link emulator.

Partition checkpoint. The edge's own state (residual stream, K/V caches of the edge heads,
generated tokens) lives in its program and only ever moves forward: edge blocks are never
re-executed, so the state at the last acknowledged crossing is the state the edge resumes
from. What makes resumption possible is kept beside it: the log of every frame sent for the
request (seq 0 = OPEN, then one STEP per crossing), the highest seq the cloud acknowledged
(``ACK``), and the next RESULT seq expected. On a timeout, a broken or refused connection, or
a rejected frame, the edge sleeps a full-jitter backoff delay (``bridge.backoff``), reconnects
and re-sends the unacknowledged frames; the cloud executes each (request, seq) once and
replays its cached reply for duplicates, and the edge drops RESULTs it already has. If the
cloud lost the request's state (a restart), it answers ``STATE_LOST`` and the edge replays its
log from seq 0, which rebuilds the cloud heads' K/V caches deterministically. After
``max_retries`` consecutive failures without progress (or a non-retryable error), the edge
finishes the request alone: an edge-only prefill of the prompt plus the tokens generated so
far, then edge-only decoding, if the whole model fits the edge's memory budget; otherwise the
request fails with an error that says why. Each request ends exactly once, answered or failed.

The run-edge driver (arrivals, slots, policies, predictions) is ``bridge.edge_run``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import secrets
import time
from collections import Counter, deque

import numpy as np

from bridge import wire
from bridge.backoff import _RETRY, Backoff, BackoffConfig, Retry
from bridge.blocks import (
    CLOUD,
    EDGE,
    FFN_CLOUD,
    FFN_EDGE,
    FFN_SPLIT,
    FFN_TP,
    TOKEN_OUT,
    TOKENS,
    TP_GRID,
    Executor,
    Output,
    Recv,
    RunPartition,
    Send,
    encode_open,
    request_program,
    run_local,
)
from bridge.cloud_server import LEDGER_FIELDS, RETRYABLE, ErrorCode
from bridge.transport import Connection, ConnectionBroken, LinkConfig, LinkEmulator, LinkTimeout
from bridge.wire import MsgType

log = logging.getLogger(__name__)


class CloudUnavailable(RuntimeError):
    """The retry budget is spent without progress; the message gives the last reason and
    ``kind`` its class: "unreachable" (no connection), "timeout", "connection_lost", "busy",
    "state_lost"."""

    def __init__(self, message: str, kind: str = "unreachable"):
        self.kind = kind
        super().__init__(message)


class CloudRejected(RuntimeError):
    """The cloud refused the request for good; ``kind``: "auth" (wrong or missing key),
    "model_mismatch", "limit" (over the server's limits), "protocol", "cloud_error" (its
    executor failed), "rejected" (any other protocol violation)."""

    def __init__(self, message: str, kind: str = "rejected"):
        self.kind = kind
        super().__init__(message)


class _Busy(ConnectionError):
    """The cloud is at its connection limit (retry after a backoff)."""


def _bad_request_kind(text: str) -> str:
    if "model mismatch" in text:
        return "model_mismatch"
    if "ServerLimits" in text or "context" in text:
        return "limit"
    return "rejected"


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Edge client settings.

    key: shared key (None: sessions unauthenticated).
    timeout_s: longest wait for the next frame before a retry, s (default: the runtime's
      ``costmodel.outage.RetryConfig``, shared with the slot model's outage pricing).
    connect_timeout_s: TCP connect and session handshake timeout, s.
    backoff: retry schedule and budget (default: ``RetryConfig``'s, via ``bridge.backoff``).
    seed: of the backoff's random generator (the schedule is reproducible).
    edge_mem_budget_bytes: memory the edge may use to finish a request alone (None: no
      limit); a fallback that does not fit fails the request.
    max_frame: largest accepted frame, bytes.
    max_replays: log replays (cloud state lost) per request before giving up.
    first_contact_retries: retries of a cloud this client has never reached (no session
      yet: a wrong address fails within a few seconds); once a session was accepted, the
      full ``backoff`` budget applies (it outlasts a cloud restart).
    cloud_flops: the cloud's effective FLOP/s (its profile's peak x eff_compute x share;
      None: unknown). With it, the wait for a step's reply is at least ``step_margin`` times
      the predicted compute of the cloud's part of the step (``2 x`` its parameters x the
      step's tokens / ``cloud_flops`` + ``cloud_overhead_s`` per cloud block): a loaded cloud
      that takes longer than ``timeout_s`` on a long prefill is not retried while healthy.
    """

    key: bytes | None = None
    timeout_s: float = _RETRY.timeout_s
    connect_timeout_s: float = 2.0
    backoff: BackoffConfig = BackoffConfig()
    seed: int = 0
    edge_mem_budget_bytes: float | None = None
    max_frame: int = wire.DEFAULT_MAX_FRAME
    max_replays: int = 8
    first_contact_retries: int = 3
    cloud_flops: float | None = None
    cloud_overhead_s: float = 0.0
    step_margin: float = 4.0


@dataclasses.dataclass
class RequestResult:
    """How one request ended.

    status: "answered" or "failed"; error: why it failed (or why it fell back);
    fallback_reason: the class of that reason (``CloudRejected.kind`` /
    ``CloudUnavailable.kind``; None without fallback).
    ledger: the cloud's execution ledger of the request from the CLOSE reply (dict of
      ``cloud_server.LEDGER_FIELDS``; None when the edge did not get it).
    tokens / logits: the edge's ``Output`` (logits None where the LM head ran on the cloud).
    fallback_at: number of tokens produced by the split before the edge finished alone
      (None: no fallback). retries: backoff sleeps. latency_s: service time, wall seconds.
    """

    request_id: int
    prompt: list[int]
    partition: RunPartition
    status: str = "failed"
    error: str | None = None
    tokens: list[int] = dataclasses.field(default_factory=list)
    logits: list[np.ndarray | None] = dataclasses.field(default_factory=list)
    fallback_at: int | None = None
    fallback_reason: str | None = None
    retries: int = 0
    latency_s: float = math.nan
    ledger: dict | None = None


@dataclasses.dataclass(frozen=True)
class RetryRecord:
    """One backoff sleep: the request, the drawn retry and the seconds actually slept."""

    request_id: int
    retry: Retry
    slept_s: float
    reason: str


def cloud_share(rp: RunPartition, cfg) -> tuple[float, int]:
    """(weights the cloud holds for ``rp``, its block count) of a ``LlamaConfig``: query
    heads with their ``W_O`` slices and the K/V heads their groups need, FFN matrices (all
    three, the down projection of a split FFN, the cloud's columns of a tp FFN), the LM head
    where the residual ends on the cloud."""
    d, dh = cfg.d_model, cfg.head_dim
    group = cfg.n_heads // cfg.n_kv_heads
    params, blocks = 0.0, 0
    for layer in range(rp.n_layers):
        k_c = int((~rp.head_on_edge[layer]).sum())
        groups = (~rp.head_on_edge[layer]).reshape(-1, group).any(1).sum()
        params += k_c * 2 * d * dh + groups * 2 * d * dh
        blocks += k_c > 0
        f = int(rp.ffn[layer])
        tp_cloud = 3 * (1 - rp.ffn_frac[layer] / TP_GRID)
        params += {FFN_CLOUD: 3, FFN_SPLIT: 1, FFN_TP: tp_cloud}.get(f, 0) * d * cfg.d_ff
        blocks += f != FFN_EDGE
    if rp.final_side == CLOUD:
        params += cfg.vocab_size * d
        blocks += 1
    return params, blocks


class _Session:
    """One request's conversation with the cloud, across reconnections (see the module
    docstring for the checkpoint / resume rules)."""

    def __init__(self, client: EdgeClient, rid: int, rp: RunPartition, prompt_len: int,
                 n_out: int):
        self.client, self.rid, self.rp = client, rid, rp
        open_vec = encode_open(rp, prompt_len, n_out, client.executor.fingerprint())
        self.log: list[wire.Frame] = [wire.make_frame(MsgType.OPEN, rid, 0, array=open_vec)]
        self.sent_upto = 0  # log[:sent_upto] went out on ``sent_conn``
        self.sent_conn: Connection | None = None
        self.acked = -1  # highest seq the cloud acknowledged
        self.next_down = 0  # next RESULT seq expected
        self.ready: deque[wire.Frame] = deque()
        self.backoff = Backoff(client.config.backoff, client.rng)
        self.replaying = False
        self.replays = 0
        self.retries = 0
        self.step_tokens = prompt_len  # positions of the last tensor sent
        self.cloud_params, self.cloud_blocks = cloud_share(rp, client.executor.cfg)

    def step_timeout(self) -> float:
        """The wait for the next frame: ``timeout_s``, or ``step_margin`` times the predicted
        compute of the cloud's part of a step over the last tensor's positions if longer."""
        cfg = self.client.config
        if not cfg.cloud_flops:
            return cfg.timeout_s
        work = (2.0 * self.cloud_params * self.step_tokens / cfg.cloud_flops
                + self.cloud_blocks * cfg.cloud_overhead_s)
        return max(cfg.timeout_s, cfg.step_margin * work)

    def send(self, ev: Send) -> None:
        value = np.asarray(ev.value)
        self.step_tokens = int(value.shape[-2] if value.ndim >= 2 else max(value.size, 1))
        seq = len(self.log)
        self.log.append(wire.make_frame(MsgType.STEP, self.rid, seq, layer=ev.layer,
                                        tag=ev.tag, array=ev.value, precision=ev.precision))
        if self.client.conn is None:
            try:
                self.client.connect()
            except OSError:
                pass  # the next wait backs off and retries
        self._flush()

    def _adopt(self) -> Connection | None:
        """The client's live connection; a connection new to this session first carries
        every unacknowledged frame."""
        conn = self.client.conn
        if conn is None or conn.broken:
            return None
        if conn is not self.sent_conn:
            self.sent_upto = min(self.sent_upto, self.acked + 1)
            self.sent_conn = conn
        return conn

    def _flush(self) -> None:
        conn = self._adopt()
        if conn is None:
            return
        for f in self.log[self.sent_upto :]:
            # A STEP tells the cloud which RESULTs the edge still needs (it frees the rest).
            conn.send(dataclasses.replace(f, aux=self.next_down) if f.seq else f)
        self.sent_upto = len(self.log)

    def recv(self, ev: Recv) -> np.ndarray:
        while not self.ready:
            self._pump()
        f = self.ready.popleft()
        if (f.tag, f.layer) != (ev.tag, ev.layer):
            raise CloudRejected(f"cloud sent tag {f.tag} layer {f.layer}, the edge program "
                                f"waits for tag {ev.tag} layer {ev.layer}")
        if ev.tag in (TOKENS, TOKEN_OUT):
            ids = f.array()
            if ids is None or ids.dtype != np.int32:
                raise CloudRejected("token ids must come as int32")
            return ids
        return f.activation()

    def _pump(self) -> None:
        """Wait for one frame and handle it; on any failure, back off and resume."""
        conn = self.client.conn
        if conn is not None and conn.broken:
            self._recover(conn.broken, "connection_lost")
            return
        try:
            conn = self.client.connect()
        except OSError as err:
            self._recover(f"connect failed: {err}", "busy" if isinstance(err, _Busy)
                          else "unreachable")
            return
        self._flush()
        try:
            frame = conn.recv(self.step_timeout())
        except LinkTimeout as err:
            self._recover(f"timeout: {err}", "timeout")
            return
        except ConnectionBroken as err:
            self._recover(err.reason, "connection_lost")
            return
        self._handle(frame)

    def _progress(self) -> None:
        self.backoff.reset()

    def _handle(self, f: wire.Frame) -> None:
        stats = self.client.stats
        if f.request_id != self.rid:
            stats["stale_frames_dropped"] += 1
            return
        if f.msg_type == MsgType.RESULT:
            if f.seq == self.next_down:
                self.ready.append(f)
                self.next_down += 1
                self._progress()
            elif f.seq < self.next_down:
                stats["duplicate_results_dropped"] += 1
            else:
                self.client.drop_connection()
                self._recover(f"RESULT seq {f.seq} ahead of the expected {self.next_down}",
                              "connection_lost")
        elif f.msg_type == MsgType.ACK:
            if f.seq > self.acked:
                self.acked = f.seq
                self._progress()
            self.replaying = False
        elif f.msg_type == MsgType.ERROR:
            try:
                code = ErrorCode(f.tag)
            except ValueError:
                code = ErrorCode.INTERNAL
            if code not in RETRYABLE:
                kind = "cloud_error" if code == ErrorCode.INTERNAL else _bad_request_kind(
                    f.text())
                raise CloudRejected(f"cloud error {code.name}: {f.text()}", kind)
            if code == ErrorCode.BUSY:
                self._recover(f"cloud busy: {f.text()}", "busy")
                return
            if self.replaying:
                return  # answers a transmission from before the replay already under way
            self.replays += 1
            stats["replays"] += 1
            if self.replays > self.client.config.max_replays:
                raise CloudUnavailable(f"cloud lost the request's state {self.replays} times",
                                       "state_lost")
            log.info("edge: request %d: %s; replaying the log from seq %d", self.rid,
                     f.text(), f.aux)
            self.sent_upto = min(f.aux, len(self.log))
            self.replaying = True
        else:
            stats["unexpected_frames"] += 1

    def _recover(self, reason: str, kind: str) -> None:
        never = self.client.sessions == 0 and kind == "unreachable"
        if never and self.retries >= self.client.config.first_contact_retries:
            raise CloudUnavailable(f"the cloud at {self.client.addr[0]}:{self.client.addr[1]} "
                                   f"was never reachable ({self.retries} retries); last "
                                   f"failure: {reason}", kind)
        delay = self.backoff.next_delay()
        if delay is None:
            raise CloudUnavailable(f"no progress after {self.client.config.backoff.max_retries}"
                                   f" retries; last failure: {reason}", kind)
        retry = self.backoff.history[-1]
        t0 = time.monotonic()
        time.sleep(delay)
        slept = time.monotonic() - t0
        self.retries += 1
        self.client.stats["retries"] += 1
        self.client.retry_log.append(RetryRecord(self.rid, retry, slept, reason))
        log.info("edge: request %d: %s; retry %d after %.3f s", self.rid, reason,
                 retry.attempt + 1, delay)
        self.client.drop_connection()
        self.sent_upto = self.acked + 1
        self.replaying = False

    def close(self) -> dict | None:
        """Tell the cloud to free the request's state and return its execution ledger from
        the CLOSE reply (None when no reply came within the timeout; best effort)."""
        conn = self.client.conn
        if conn is None or conn.broken:
            return None
        seq = len(self.log)
        conn.send(wire.make_frame(MsgType.CLOSE, self.rid, seq))
        deadline = time.monotonic() + self.client.config.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                f = conn.recv(left)
            except (LinkTimeout, ConnectionBroken):
                return None
            if (f.msg_type, f.request_id, f.seq) == (MsgType.ACK, self.rid, seq):
                v = f.array()
                if v is None or v.dtype != np.int64 or v.shape != (len(LEDGER_FIELDS),):
                    return None
                return dict(zip(LEDGER_FIELDS, (int(x) for x in v), strict=True))
        return None


class EdgeClient:
    """An edge device talking to one cloud server; requests run one at a time.

    ``stats`` counts retries, reconnections, replays and dropped frames; ``retry_log`` holds
    every backoff sleep (for checking the schedule against the configuration).
    """

    def __init__(self, cloud_addr: tuple[str, int], executor: Executor,
                 config: ClientConfig = ClientConfig(), link: LinkEmulator | None = None):
        self.addr, self.executor, self.config = cloud_addr, executor, config
        self.link = link or LinkEmulator(None, LinkConfig(rtt_ms=0.0))
        self.rng = random.Random(config.seed)
        self.stats: Counter = Counter()
        self.retry_log: list[RetryRecord] = []
        self.conn: Connection | None = None
        self._client_id = secrets.randbits(39)
        self.sessions = 0  # sessions the cloud accepted (0: it was never usable)
        self._n = 0
        self.bytes_sent = self.bytes_received = 0

    def connect(self) -> Connection:
        """The live connection, or a new one with a fresh session. ``OSError`` when the
        cloud cannot be reached (or is busy: retry), ``CloudRejected`` when it refuses the
        session for good (wrong or missing key, protocol)."""
        if self.conn is not None and not self.conn.broken:
            return self.conn
        self.drop_connection()
        try:
            self.conn = Connection(self.addr, self.link, self.config.key, self.config.max_frame,
                                   self.config.connect_timeout_s, self.config.connect_timeout_s)
        except wire.HandshakeRefused as err:
            if err.kind == "busy":
                raise _Busy(err.reason) from None
            self.stats["sessions_refused"] += 1
            raise CloudRejected(err.reason, err.kind) from None
        except wire.WireError as err:
            raise ConnectionError(f"handshake failed: {err.reason}") from None
        self.stats["connections"] += 1
        self.sessions += 1
        return self.conn

    def drop_connection(self) -> None:
        if self.conn is not None:
            self.bytes_sent += self.conn.bytes_sent
            self.bytes_received += self.conn.bytes_received
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.drop_connection()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def traffic(self) -> tuple[int, int]:
        """(bytes sent, bytes received) so far, resends included."""
        live = self.conn
        return (self.bytes_sent + (live.bytes_sent if live else 0),
                self.bytes_received + (live.bytes_received if live else 0))

    def _new_request_id(self) -> int:
        self._n += 1
        return (self._client_id << 24) | (self._n & 0xFFFFFF)

    def run_request(self, prompt: list[int], rp: RunPartition, n_out: int) -> RequestResult:
        """Run one request under ``rp`` to completion (see the module docstring)."""
        rid = self._new_request_id()
        res = RequestResult(rid, list(prompt), rp)
        out = Output([], [])
        t0 = time.monotonic()
        session = None
        try:
            if rp.uses_cloud:
                session = _Session(self, rid, rp, len(prompt), n_out)
                try:
                    self._drive(request_program(EDGE, self.executor, rp, len(prompt), n_out,
                                                prompt, out), session)
                finally:
                    res.retries = session.retries
            else:
                out, _ = run_local(self.executor, rp, list(prompt), n_out)
            res.status = "answered"
        except (CloudUnavailable, CloudRejected) as err:
            self.stats["fallbacks"] += 1
            self.stats[f"fallback_{err.kind}"] += 1
            res.fallback_at = len(out.tokens)
            res.fallback_reason = err.kind
            res.error = f"{type(err).__name__}: {err}"
            log.warning("edge: request %d falls back to the edge after %d tokens: %s", rid,
                        len(out.tokens), err)
            need = self.executor.memory_bytes(len(prompt) + n_out)
            budget = self.config.edge_mem_budget_bytes
            if budget is not None and need > budget:
                res.status = "failed"
                res.error = (f"{res.error}; cannot finish on the edge: the whole model needs "
                             f"{need / 1e9:.3f} GB, the edge budget is {budget / 1e9:.3f} GB")
                self.stats["failed"] += 1
            else:
                self._finish_on_edge(prompt, rp, n_out, out)
                res.status = "answered"
        except Exception as err:  # a bug must not lose the request: it fails, loudly
            log.exception("edge: request %d failed", rid)
            res.status, res.error = "failed", f"internal error: {err!r}"
            self.stats["failed"] += 1
        res.tokens, res.logits = out.tokens, out.logits
        res.latency_s = time.monotonic() - t0
        if session is not None:
            try:
                res.ledger = session.close()
            except Exception:  # the ledger is best effort; the request has ended
                log.exception("edge: request %d: closing failed", rid)
        return res

    def _drive(self, program, session: _Session) -> Output:
        value = None
        while True:
            try:
                ev = program.send(value)
            except StopIteration as stop:
                return stop.value
            if isinstance(ev, Send):
                session.send(ev)
                value = None
            else:
                value = session.recv(ev)

    def _finish_on_edge(self, prompt: list[int], rp: RunPartition, n_out: int,
                        out: Output) -> None:
        """Edge-only prefill of prompt + tokens so far, then edge-only decoding."""
        left = n_out - len(out.tokens)
        if left <= 0:
            return
        cfg = self.executor.cfg
        edge = RunPartition.edge_only(cfg.n_layers, cfg.n_heads, rp.precision)
        rest, _ = run_local(self.executor, edge, list(prompt) + list(out.tokens), left)
        out.tokens.extend(rest.tokens)
        out.logits.extend(rest.logits)
