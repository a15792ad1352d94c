"""The edge side of the split runtime: runs its own blocks, the cloud's remotely, with partition
checkpoints, retries with backoff, and fallback to the edge.

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

``run_edge(cloud_addr, requests, trace, policy, config)`` is ``splitwise run-edge``: requests
arrive by a ``lyapunov.processes`` arrival process; at the start of each slot with work, the
policy maps an ``Observation`` (last slot's measured bandwidth, RTT, queue length, arrivals)
to a ``costmodel`` partition used by the requests that start in that slot (one at a time,
FIFO: the edge serves its queue); each request's latency is predicted by
``costmodel.costs.request_costs`` for the same partition and the link state of the slot it
started in, with the device profile of this machine (``profiles/local.json`` when present,
else ``LOCAL_DEFAULT``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bridge import wire
from bridge.backoff import Backoff, BackoffConfig, Retry
from bridge.blocks import (
    EDGE,
    TOKEN_OUT,
    TOKENS,
    Executor,
    Output,
    Recv,
    RunPartition,
    Send,
    encode_open,
    request_program,
    run_local,
)
from bridge.cloud_server import RETRYABLE, ErrorCode
from bridge.transport import Connection, ConnectionBroken, LinkConfig, LinkEmulator, LinkTimeout
from bridge.wire import MsgType
from lyapunov.processes import ArrivalConfig

log = logging.getLogger(__name__)


class CloudUnavailable(RuntimeError):
    """The retry budget is spent without progress; the message gives the last reason."""


class CloudRejected(RuntimeError):
    """The cloud refused the request for good (model mismatch, protocol violation, executor
    failure)."""


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Edge client settings.

    key: shared HMAC key (None: frames unauthenticated).
    timeout_s: longest wait for the next frame before a retry.
    connect_timeout_s: TCP connect timeout.
    backoff: retry schedule and budget.
    seed: of the backoff's random generator (the schedule is reproducible).
    edge_mem_budget_bytes: memory the edge may use to finish a request alone (None: no
      limit); a fallback that does not fit fails the request.
    max_frame: largest accepted frame, bytes.
    max_replays: log replays (cloud state lost) per request before giving up.
    """

    key: bytes | None = None
    timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    backoff: BackoffConfig = BackoffConfig()
    seed: int = 0
    edge_mem_budget_bytes: float | None = None
    max_frame: int = wire.DEFAULT_MAX_FRAME
    max_replays: int = 8


@dataclasses.dataclass
class RequestResult:
    """How one request ended.

    status: "answered" or "failed"; error: why it failed (or why it fell back).
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
    retries: int = 0
    latency_s: float = math.nan


@dataclasses.dataclass(frozen=True)
class RetryRecord:
    """One backoff sleep: the request, the drawn retry and the seconds actually slept."""

    request_id: int
    retry: Retry
    slept_s: float
    reason: str


class _Session:
    """One request's conversation with the cloud, across reconnections (see the module
    docstring for the checkpoint / resume rules)."""

    def __init__(self, client: EdgeClient, rid: int, rp: RunPartition, prompt_len: int,
                 n_out: int):
        self.client, self.rid, self.rp = client, rid, rp
        open_vec = encode_open(rp, prompt_len, n_out, client.executor.fingerprint())
        self.log: list[bytes] = [self._encode(MsgType.OPEN, 0, array=open_vec)]
        self.sent_upto = 0  # log[:sent_upto] went out on ``sent_conn``
        self.sent_conn: Connection | None = None
        self.acked = -1  # highest seq the cloud acknowledged
        self.next_down = 0  # next RESULT seq expected
        self.ready: deque[wire.Frame] = deque()
        self.backoff = Backoff(client.config.backoff, client.rng)
        self.replaying = False
        self.replays = 0
        self.retries = 0

    def _encode(self, mtype: MsgType, seq: int, **kw) -> bytes:
        return wire.encode_frame(wire.make_frame(mtype, self.rid, seq, **kw),
                                 self.client.config.key)

    def send(self, ev: Send) -> None:
        seq = len(self.log)
        self.log.append(self._encode(MsgType.STEP, seq, layer=ev.layer, tag=ev.tag,
                                     array=ev.value, precision=ev.precision))
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
        for data in self.log[self.sent_upto :]:
            conn.send(data)
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
            self._recover(conn.broken)
            return
        try:
            conn = self.client.connect()
        except OSError as err:
            self._recover(f"connect failed: {err}")
            return
        self._flush()
        try:
            frame = conn.recv(self.client.config.timeout_s)
        except LinkTimeout as err:
            self._recover(f"timeout: {err}")
            return
        except ConnectionBroken as err:
            self._recover(err.reason)
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
                self._recover(f"RESULT seq {f.seq} ahead of the expected {self.next_down}")
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
                raise CloudRejected(f"cloud error {code.name}: {f.text()}")
            if self.replaying:
                return  # answers a transmission from before the replay already under way
            self.replays += 1
            stats["replays"] += 1
            if self.replays > self.client.config.max_replays:
                raise CloudUnavailable(f"cloud lost the request's state {self.replays} times")
            log.info("edge: request %d: %s; replaying the log from seq %d", self.rid,
                     f.text(), f.aux)
            self.sent_upto = min(f.aux, len(self.log))
            self.replaying = True
        else:
            stats["unexpected_frames"] += 1

    def _recover(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        if delay is None:
            raise CloudUnavailable(f"no progress after {self.client.config.backoff.max_retries}"
                                   f" retries; last failure: {reason}")
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

    def close(self) -> None:
        """Tell the cloud to free the request's state (best effort, no wait)."""
        conn = self.client.conn
        if conn is not None and not conn.broken:
            conn.send(self._encode(MsgType.CLOSE, len(self.log)))


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
        self._n = 0
        self.bytes_sent = self.bytes_received = 0

    def connect(self) -> Connection:
        if self.conn is not None and not self.conn.broken:
            return self.conn
        self.drop_connection()
        self.conn = Connection(self.addr, self.link, self.config.key, self.config.max_frame,
                               self.config.connect_timeout_s)
        self.stats["connections"] += 1
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
        try:
            if rp.uses_cloud:
                session = _Session(self, rid, rp, len(prompt), n_out)
                try:
                    self._drive(request_program(EDGE, self.executor, rp, len(prompt), n_out,
                                                prompt, out), session)
                finally:
                    res.retries = session.retries
                    session.close()
            else:
                out, _ = run_local(self.executor, rp, list(prompt), n_out)
            res.status = "answered"
        except (CloudUnavailable, CloudRejected) as err:
            self.stats["fallbacks"] += 1
            res.fallback_at = len(out.tokens)
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


# --------------------------------------------------------------------------------------------
# run-edge: arrivals, slots, policies, predictions


LOCAL_DEFAULT = {
    "name": "local-default", "role": "edge", "peak_tflops": 0.05, "mem_bw_gbs": 10.0,
    "eff_compute": 0.5, "eff_memory": 0.5, "overhead_us": 60.0, "weight_bits": 32.0,
    "kv_bits": 32.0, "power_active_w": 15.0, "power_idle_w": 5.0, "power_tx_w": 0.0,
    "mem_budget_gb": 8.0,
    "sources": {"all": "assumed: one x86 core running NumPy/torch float32 blocks at batch 1; "
                       "overhead_us ~ the Python + kernel-dispatch cost of one block call. Run "
                       "`splitwise calibrate --device local --out profiles/local.json` to "
                       "measure this machine instead."},
}


def local_profiles(path: str | Path = "profiles/local.json"):
    """(edge, cloud) ``DeviceProfile`` of this machine: the calibrated file if it exists, else
    ``LOCAL_DEFAULT``; both sides run on this machine, so they share the numbers."""
    from costmodel.profiles import load_profile, profile_from_dict

    p = Path(path)
    if p.exists():
        edge = load_profile(p, register=False)
        source = str(p)
    else:
        edge = profile_from_dict(dict(LOCAL_DEFAULT), origin="LOCAL_DEFAULT")
        source = "LOCAL_DEFAULT (assumed; no profiles/local.json)"
    edge = dataclasses.replace(edge, role="edge", name=f"{edge.name}-edge")
    cloud = dataclasses.replace(edge, role="cloud", name=f"{edge.name}-cloud")
    return edge, cloud, source


def executor_card(executor: Executor):
    """The ``costmodel`` model card of an executor's model."""
    from costmodel.cards import CARDS, ModelCard

    c = executor.cfg
    if executor.name in ("smollm2", "smollm2-135m") and "smollm2-135m" in CARDS:
        return CARDS["smollm2-135m"]
    return ModelCard(executor.name.replace("/", "_").lower(), c.n_layers, c.n_heads,
                     c.n_kv_heads, c.d_model, c.d_ff, c.vocab_size, "swiglu",
                     c.tied_embeddings, head_dim=c.head_dim, source="runtime executor")


@dataclasses.dataclass(frozen=True)
class Observation:
    """What a policy sees at the start of slot ``slot``.

    bw_mbps: mean bandwidth measured over the previous slot (the current one's for slot 0).
    bw_now_mbps: the slot's own mean bandwidth (only the clairvoyant oracle may use it).
    rtt_ms: the link's RTT. queue: requests waiting (the one about to start included).
    arrivals: requests that arrived during the previous slot.
    """

    slot: int
    bw_mbps: float
    bw_now_mbps: float
    rtt_ms: float
    queue: int
    arrivals: int


Policy = Callable[[Observation], object]
POLICIES = ("checkpoint:DIR", "oracle", "best-cut", "cloud-only", "edge-only")
UNLIMITED_MBPS = 1e6


class PolicyError(ValueError):
    """An unknown or unusable ``--policy``."""


def make_policy(name: str, spec) -> Policy:
    """A function ``Observation -> costmodel.partition.Partition`` for ``--policy``.

    edge-only / cloud-only: fixed. best-cut: the Neurosurgeon-style best single layer cut for
    the last measured bandwidth. oracle: the exact latency-optimal head/FFN partition for the
    slot's actual bandwidth (clairvoyant; with a latency penalty and mu = tau / latency, the
    drift-plus-penalty slot objective is increasing in latency, so the latency minimizer is
    the slot optimum). checkpoint:DIR: a trained policy from ``agents.checkpoint.load_policy``.
    """
    from costmodel import partition as P
    from costmodel.link import make_link
    from costmodel.strategies import strategy_partition

    n_l, n_h = spec.n_layers, spec.n_heads

    def link(mbps: float, rtt: float):
        return make_link(min(mbps, UNLIMITED_MBPS), rtt)

    def or_edge(p):
        return P.edge_only(n_l, n_h) if p is None else p

    if name == "edge-only":
        return lambda obs: P.edge_only(n_l, n_h)
    if name == "cloud-only":
        return lambda obs: P.cloud_only(n_l)
    if name == "best-cut":
        return lambda obs: or_edge(strategy_partition("best-layer-cut",
                                                      link(obs.bw_mbps, obs.rtt_ms), spec)[0])
    if name == "oracle":
        return lambda obs: or_edge(strategy_partition("best-headwise",
                                                      link(obs.bw_now_mbps, obs.rtt_ms),
                                                      spec)[0])
    if name.startswith("checkpoint:"):
        directory = name.split(":", 1)[1]
        try:
            from agents.checkpoint import load_policy
        except ImportError as err:
            raise PolicyError(f"--policy {name}: trained policies are loaded with "
                              f"agents.checkpoint.load_policy, not available here ({err})") \
                from None
        return load_policy(directory, spec)
    raise PolicyError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """``splitwise run-edge`` settings (one frozen config; the CLI parses it).

    prompt_tokens, new_tokens: each request prefills S tokens then runs T decode steps
      (T + 1 generated tokens), as ``costmodel.link.Workload``.
    arrival: the arrival process, requests per slot (``lyapunov.processes.ArrivalConfig``:
      Poisson or bursty MMPP).
    slot_s: slot length, emulated seconds.
    link: RTT, burst, uplink ratio, time scale of the emulated link.
    client: timeouts, backoff, key, memory budget.
    precision: activation precision override ("fp32" for exactness runs); None: the
      policy's ``act_prec``.
    profile_path: device profile of this machine for the predictions.
    seed: arrivals, prompts and backoff jitter.
    """

    prompt_tokens: int = 16
    new_tokens: int = 8
    arrival: ArrivalConfig = ArrivalConfig(kind="poisson", rate=1.0)
    slot_s: float = 1.0
    link: LinkConfig = LinkConfig()
    client: ClientConfig = ClientConfig()
    precision: str | None = None
    profile_path: str = "profiles/local.json"
    seed: int = 0


def _percentile(xs, q) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.percentile(xs, q)) if xs else None


def arrival_times(n: int, arrival: ArrivalConfig, slot_s: float, seed: int) -> list[float]:
    """Emulated arrival times of ``n`` requests: counts per slot from the
    ``lyapunov.processes`` process of ``arrival``, spread uniformly inside each slot."""
    import jax

    from lyapunov.processes import arrival_mean_rate, make_arrivals, sample_path

    params = make_arrivals(arrival)
    rate = float(arrival_mean_rate(params))
    if not rate > 0:
        raise ValueError("the arrival process has mean rate 0: no request would ever arrive")
    rng = np.random.default_rng(seed)
    times: list[float] = []
    n_slots = max(8, int(2 * n / rate) + 8)
    key = jax.random.PRNGKey(seed)
    while len(times) < n:
        key, sub = jax.random.split(key)
        counts = np.asarray(sample_path(sub, params, n_slots))
        base = len(times) and (math.floor(times[-1] / slot_s) + 1)
        for k, c in enumerate(counts):
            slot = base + k
            times.extend(sorted((slot + rng.random(int(c))) * slot_s))
            if len(times) >= n:
                break
    return times[:n]


def run_edge(cloud_addr: tuple[str, int] | str, requests: int | list[list[int]],
             trace=None, policy: str | Policy = "best-cut", config: EdgeConfig = EdgeConfig(),
             executor: Executor | None = None) -> dict:
    """Serve ``requests`` (a count, or the prompts' token ids) through the split runtime.

    cloud_addr: (host, port) or "host:port". trace: a ``lyapunov.traces.Trace``, a trace file
    path, or None (unlimited bandwidth). policy: a ``POLICIES`` name or a function
    ``Observation -> costmodel Partition``. Returns the JSON-safe summary of
    ``splitwise run-edge --json`` (keys: answered, failed, lost, duplicated, latency_p50_s,
    latency_p95_s, predicted_p50_s, predicted_p95_s, bytes_sent, retries, fallbacks and more)
    with a ``requests`` list of per-request records.
    """
    from bridge.blocks import make_executor
    from costmodel.costs import request_costs
    from costmodel.link import Workload, make_link
    from costmodel.spec import edge_head_order, make_spec

    if isinstance(cloud_addr, str):
        host, _, port = cloud_addr.rpartition(":")
        cloud_addr = (host, int(port))
    if isinstance(trace, str | Path):
        from lyapunov.traces import load_trace

        trace = load_trace(trace)
    ex = executor or make_executor("toy")
    rng = np.random.default_rng(config.seed)
    if isinstance(requests, int):
        prompts = [rng.integers(0, ex.cfg.vocab_size, config.prompt_tokens).tolist()
                   for _ in range(requests)]
    else:
        prompts = [list(p) for p in requests]
    n_req = len(prompts)
    n_out = config.new_tokens + 1

    card = executor_card(ex)
    edge_prof, cloud_prof, prof_source = local_profiles(config.profile_path)
    spec = make_spec(card, edge_prof, cloud_prof,
                     Workload(config.prompt_tokens, config.new_tokens))
    from costmodel.accuracy import accuracy_profile

    order = edge_head_order(accuracy_profile(card).head_w, card.group_size)
    pol = make_policy(policy, spec) if isinstance(policy, str) else policy
    link_em = LinkEmulator(trace, config.link)
    rtt_ms = config.link.rtt_ms

    arrivals = arrival_times(n_req, config.arrival, config.slot_s, config.seed)
    results: dict[int, RequestResult] = {}
    records: list[dict] = []
    duplicated = 0
    partitions: Counter = Counter()
    queue_: deque[int] = deque()
    nxt = 0
    cur_slot, cur_part = None, None
    t_wall0 = time.monotonic()

    def bw(t0: float, t1: float) -> float:
        return link_em.bandwidth_mbps(t0, t1)

    with EdgeClient(cloud_addr, ex, config.client, link_em) as client:
        while len(results) < n_req:
            now = link_em.emulated_now()
            while nxt < n_req and arrivals[nxt] <= now:
                queue_.append(nxt)
                nxt += 1
            if not queue_:
                time.sleep(max(link_em.to_wall(arrivals[nxt]) - time.monotonic(), 0.0))
                continue
            slot = math.floor(now / config.slot_s)
            if slot != cur_slot:
                s0 = slot * config.slot_s
                prev = (max(s0 - config.slot_s, 0.0), s0) if slot > 0 else (0.0, config.slot_s)
                obs = Observation(slot, bw(*prev), bw(s0, s0 + config.slot_s), rtt_ms,
                                  len(queue_), sum(prev[0] <= a < prev[1] for a in arrivals))
                cm_part = pol(obs)
                if cm_part is None:  # no feasible partition for the policy: stay on the edge
                    from costmodel.partition import edge_only

                    cm_part = edge_only(ex.cfg.n_layers, ex.cfg.n_heads)
                cur_part = RunPartition.from_costmodel(cm_part, order, config.precision)
                cur_slot = slot
            i = queue_.popleft()
            s0 = cur_slot * config.slot_s
            bw_slot = bw(s0, s0 + config.slot_s)
            start = link_em.emulated_now()
            sent0, recv0 = client.traffic()
            res = client.run_request(prompts[i], cur_part, n_out)
            sent1, recv1 = client.traffic()
            if i in results:
                duplicated += 1
                continue
            results[i] = res
            cm = cur_part.to_costmodel()
            cm_spec = spec
            if cur_part.precision == "fp32":  # the cost model knows fp16/int8/int4 only
                cm_spec = spec.replace(act_bytes=spec.act_bytes.at[0].set(4.0))
            lk = make_link(min(bw_slot * config.link.up_ratio, UNLIMITED_MBPS), rtt_ms,
                           min(bw_slot, UNLIMITED_MBPS))
            pred = float(request_costs(cm, lk, cm_spec).latency_s)
            partitions[cur_part.describe()] += 1
            records.append({
                "index": i, "request_id": res.request_id, "status": res.status,
                "error": res.error, "arrival_s": arrivals[i], "start_s": start,
                "latency_s": res.latency_s,
                "sojourn_s": start - arrivals[i] + res.latency_s / config.link.time_scale,
                "predicted_s": pred if math.isfinite(pred) else None,
                "bw_mbps": bw_slot if math.isfinite(bw_slot) else None,
                "partition": cur_part.describe(), "retries": res.retries,
                "fallback_at": res.fallback_at, "tokens": res.tokens,
                "bytes_sent": sent1 - sent0, "bytes_received": recv1 - recv0})
        sent, received = client.traffic()
        stats = dict(client.stats)

    answered = [r for r in records if r["status"] == "answered"]
    return {
        "answered": len(answered),
        "failed": sum(r["status"] == "failed" for r in records),
        "lost": n_req - len(results),
        "duplicated": duplicated,
        "latency_p50_s": _percentile([r["latency_s"] for r in answered], 50),
        "latency_p95_s": _percentile([r["latency_s"] for r in answered], 95),
        "predicted_p50_s": _percentile([r["predicted_s"] for r in answered], 50),
        "predicted_p95_s": _percentile([r["predicted_s"] for r in answered], 95),
        "sojourn_p50_s": _percentile([r["sojourn_s"] for r in answered], 50),
        "sojourn_p95_s": _percentile([r["sojourn_s"] for r in answered], 95),
        "bytes_sent": sent,
        "bytes_received": received,
        "retries": stats.get("retries", 0),
        "fallbacks": stats.get("fallbacks", 0),
        "replays": stats.get("replays", 0),
        "connections": stats.get("connections", 0),
        "duplicate_results_dropped": stats.get("duplicate_results_dropped", 0),
        "policy": policy if isinstance(policy, str) else getattr(policy, "__name__", "custom"),
        "trace": getattr(trace, "name", None),
        "executor": ex.name,
        "profile": prof_source,
        "rtt_ms": rtt_ms,
        "time_scale": config.link.time_scale,
        "wall_s": time.monotonic() - t_wall0,
        "partitions": dict(partitions),
        "requests": records,
    }


def parse_addr(text: str) -> tuple[str, int]:
    """"host:port" -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)

