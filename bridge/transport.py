"""The edge's link to the cloud: trace-shaped bandwidth and RTT and framed connections (the
fault-injecting proxy of the tests is ``bridge.fault_proxy``).
Design: ``docs/design.md §2.2 and §5``.

Link emulation (``LinkEmulator``). Both directions of the edge's link are shaped inside the
edge process: a frame of ``n`` bytes handed to the link at time ``t`` is delivered at the far
end when a token bucket has released ``n`` bytes after ``t`` (FIFO behind earlier frames)
plus ``RTT/2`` of propagation. The bucket fills at the bandwidth of the trace at that moment
(piecewise constant, replayed periodically; an outage is a rate of 0 and holds frames until
the rate comes back) up to ``burst_bytes``. So a lone frame costs ``RTT/2 + n/B`` as in the
cost model. The uplink is applied before a frame is written to the socket (a sender thread
writes it at its delivery time), the downlink after a frame is read (the reader thread stamps
its delivery time and ``Connection.recv`` hands it over no earlier). Loopback adds microseconds.

Time scaling: ``time_scale`` is wall seconds per emulated second for the link only (0.1 makes
every shaped delay ten times shorter and replays the trace ten times faster); compute is not
scaled. The CLI uses 1.0, so measured latencies are real.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import math
import queue
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from bridge import wire

log = logging.getLogger(__name__)

UP, DOWN = 0, 1


# --------------------------------------------------------------------------------------------
# Link emulation


class RateSchedule:
    """A piecewise-constant rate (bytes/s), ``rates[i]`` on ``[times[i], times[i+1])``, over
    ``[0, period_s)`` and repeated. ``integral`` and its inverse give transfer times."""

    def __init__(self, times_s, rates_bps, period_s: float):
        t = np.asarray(times_s, np.float64)
        r = np.asarray(rates_bps, np.float64)
        if t.ndim != 1 or t.shape != r.shape or t.size == 0 or t[0] != 0:
            raise ValueError("times_s must be a 1-D array starting at 0, as long as rates")
        if np.any(np.diff(t) <= 0) or not period_s > t[-1]:
            raise ValueError("times_s must increase and end before period_s")
        if np.any(r < 0) or not np.all(np.isfinite(r)):
            raise ValueError("rates must be finite and >= 0")
        self.times, self.rates, self.period = t, r, float(period_s)
        widths = np.diff(np.append(t, period_s))
        self.cum = np.concatenate([[0.0], np.cumsum(r * widths)])
        self.total = float(self.cum[-1])

    @classmethod
    def constant(cls, rate_bps: float) -> RateSchedule:
        return cls([0.0], [rate_bps], 1.0)

    @classmethod
    def from_trace(cls, trace, up_ratio: float = 1.0) -> RateSchedule:
        """From a ``lyapunov.traces.Trace`` (Mbit/s) times ``up_ratio``."""
        t = trace.time_s - trace.time_s[0]
        return cls(t, trace.mbps * 1e6 / 8.0 * up_ratio, trace.duration_s)

    def rate_at(self, t: float) -> float:
        i = bisect.bisect_right(self.times, t % self.period) - 1
        return float(self.rates[i])

    def integral(self, t: float) -> float:
        """Bytes the link can carry over ``[0, t]``."""
        n, rem = divmod(t, self.period)
        i = bisect.bisect_right(self.times, rem) - 1
        return n * self.total + self.cum[i] + self.rates[i] * (rem - self.times[i])

    def inverse(self, y: float) -> float:
        """Earliest ``t`` with ``integral(t) >= y`` (inf if the link never carries ``y``)."""
        if y <= 0:
            return 0.0
        if self.total <= 0:
            return math.inf
        n = math.floor(y / self.total)
        rem = y - n * self.total
        if rem <= 0:  # exactly n periods' worth: the earliest time inside the n-th period
            n, rem = n - 1, self.total
        # cum[i] < rem <= cum[i + 1], so segment i has a positive rate.
        i = max(int(np.searchsorted(self.cum, rem, side="left")) - 1, 0)
        return n * self.period + self.times[i] + (rem - self.cum[i]) / self.rates[i]

    def mean_rate(self, t0: float, t1: float) -> float:
        """Mean rate over ``[t0, t1]`` (bytes/s)."""
        return (self.integral(t1) - self.integral(t0)) / (t1 - t0) if t1 > t0 else \
            self.rate_at(t0)


class TokenBucket:
    """FIFO token bucket over a ``RateSchedule`` (emulated seconds, bytes)."""

    def __init__(self, schedule: RateSchedule | None, burst_bytes: float):
        self.schedule, self.burst = schedule, float(burst_bytes)
        self.t_last, self.tokens = 0.0, float(burst_bytes)
        self.lock = threading.Lock()

    def release_time(self, t: float, nbytes: int) -> float:
        """Emulated time at which ``nbytes`` handed over at ``t`` have left the bucket."""
        if self.schedule is None:
            return t
        with self.lock:
            start = max(t, self.t_last)
            gained = self.schedule.integral(start) - self.schedule.integral(self.t_last)
            tokens = min(self.burst, self.tokens + gained)
            if tokens >= nbytes:
                self.t_last, self.tokens = start, tokens - nbytes
                return start
            done = self.schedule.inverse(self.schedule.integral(start) + nbytes - tokens)
            self.t_last, self.tokens = done, 0.0
            return done


@dataclasses.dataclass(frozen=True)
class LinkConfig:
    """The emulated link of one edge device.

    rtt_ms: round-trip propagation time (each direction gets half).
    burst_bytes: token-bucket depth (one MTU by default: a lone frame pays n / B).
    up_ratio: uplink rate / trace rate (the downlink follows the trace).
    time_scale: wall seconds per emulated second for link delays (1 = real time).
    """

    rtt_ms: float = 20.0
    burst_bytes: float = 1500.0
    up_ratio: float = 1.0
    time_scale: float = 1.0

    def __post_init__(self):
        for name in ("rtt_ms", "burst_bytes", "up_ratio", "time_scale"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"LinkConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.time_scale == 0 or self.up_ratio == 0:
            raise ValueError("LinkConfig.time_scale and up_ratio must be > 0")


class LinkEmulator:
    """Both directions of a shaped link: ``deliver_at(direction, nbytes)`` gives the wall
    time when a frame handed over now arrives at the other end. ``trace`` None: unlimited
    bandwidth (only the RTT applies)."""

    def __init__(self, trace=None, config: LinkConfig = LinkConfig(),
                 clock: Callable[[], float] = time.monotonic):
        self.config, self.clock, self.t0 = config, clock, clock()
        self.trace = trace
        down = RateSchedule.from_trace(trace) if trace is not None else None
        up = RateSchedule.from_trace(trace, config.up_ratio) if trace is not None else None
        self.buckets = (TokenBucket(up, config.burst_bytes),
                        TokenBucket(down, config.burst_bytes))

    def emulated_now(self) -> float:
        return (self.clock() - self.t0) / self.config.time_scale

    def to_wall(self, t_emulated: float) -> float:
        return self.t0 + t_emulated * self.config.time_scale

    def deliver_at(self, direction: int, nbytes: int) -> float:
        t = self.emulated_now()
        done = self.buckets[direction].release_time(t, nbytes)
        return self.to_wall(done + self.config.rtt_ms * 1e-3 / 2.0)

    @property
    def transparent(self) -> bool:
        """No trace and no RTT: the emulator adds nothing."""
        return self.trace is None and self.config.rtt_ms == 0

    def bandwidth_mbps(self, t0: float, t1: float, direction: int = DOWN) -> float:
        """Mean bandwidth over emulated ``[t0, t1]`` (inf without a trace)."""
        sched = self.buckets[direction].schedule
        return math.inf if sched is None else sched.mean_rate(t0, t1) * 8.0 / 1e6


# --------------------------------------------------------------------------------------------
# A framed, shaped client connection


class LinkTimeout(TimeoutError):
    """No frame was delivered before the deadline."""


class ConnectionBroken(ConnectionError):
    """The connection failed; ``reason`` says how (EOF, socket error, rejected frame)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Connection:
    """One TCP connection from the edge to the cloud through a ``LinkEmulator``.

    The constructor connects and runs the session handshake (``bridge.wire.client_handshake``:
    ``HandshakeRefused`` when the cloud refuses the session, e.g. a wrong key); frames are
    then encoded and decoded with the session's ``wire.Channel``.
    ``send(frame)`` encodes a frame and hands its bytes to the uplink (written at their
    delivery time by a sender thread, or at once when already due); ``recv(timeout)`` returns
    the next decoded frame once the downlink delivers it (a reader thread stamps each frame's
    arrival). Over a transparent link (no trace, no RTT) there are no threads: frames are
    written and read in the caller's thread, through a buffer that keeps a partly received
    frame across timeouts.
    Any failure (EOF, socket error, a frame that fails the wire checks) breaks the connection
    for good: ``recv`` raises ``ConnectionBroken``.
    """

    def __init__(self, addr: tuple[str, int], link: LinkEmulator, key: bytes | None = None,
                 max_frame: int = wire.DEFAULT_MAX_FRAME, connect_timeout_s: float = 2.0,
                 handshake_timeout_s: float = 5.0):
        self.link, self.key, self.max_frame = link, key, max_frame
        self.sock = socket.create_connection(addr, timeout=connect_timeout_s)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.channel = wire.client_handshake(self.sock, key, handshake_timeout_s)
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(None)
        self._send_lock = threading.Lock()
        self.bytes_sent = self.bytes_received = 0
        self._inbox: queue.Queue = queue.Queue()
        self._held = None
        self._outbox: list[tuple[float, bytes]] = []
        self._cv = threading.Condition()
        self._write_lock = threading.Lock()
        self.closed = threading.Event()
        self.broken: str | None = None
        self.direct = link.transparent
        self._buf = bytearray()
        if not self.direct:
            self._reader = threading.Thread(target=self._read_loop, daemon=True)
            self._sender = threading.Thread(target=self._send_loop, daemon=True)
            self._reader.start()
            self._sender.start()

    def _fail(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        self._inbox.put((0.0, ConnectionBroken(reason)))

    def _read_loop(self) -> None:
        while not self.closed.is_set():
            try:
                frame, n = self.channel.read(self.sock, self.max_frame)
            except wire.WireError as err:
                log.warning("edge: rejected frame from the cloud: %s", err.reason)
                self._fail(f"rejected frame: {err.reason}")
                return
            except wire.PeerClosed:
                self._fail("cloud closed the connection")
                return
            except OSError as err:
                self._fail(f"socket error: {err}")
                return
            self.bytes_received += n
            self._inbox.put((self.link.deliver_at(DOWN, n), frame))

    def _write(self, data: bytes) -> None:
        try:
            with self._write_lock:
                self.sock.sendall(data)
        except OSError as err:
            self._fail(f"send failed: {err}")

    def _send_loop(self) -> None:
        while True:
            with self._cv:
                while not self._outbox and not self.closed.is_set():
                    self._cv.wait()
                if self.closed.is_set():
                    return
                due, data = self._outbox[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(min(wait, 0.5))
                    continue
                self._outbox.pop(0)
            self._write(data)

    def send(self, frame: wire.Frame) -> None:
        """Encode one frame for this session and hand it to the uplink (counted in
        ``bytes_sent``)."""
        if self.broken or self.closed.is_set():
            return
        with self._send_lock:  # the session's counter order is the wire order
            data = self.channel.encode(frame)
            self.bytes_sent += len(data)
            if self.direct:
                self._write(data)
                return
            self._queue(data)

    def _queue(self, data: bytes) -> None:
        due = self.link.deliver_at(UP, len(data))
        with self._cv:
            if not self._outbox and due <= time.monotonic():
                self._write(data)
                return
            self._outbox.append((due, data))
            self._cv.notify()

    def recv(self, timeout_s: float) -> wire.Frame:
        """Next delivered frame; ``LinkTimeout`` after ``timeout_s``, ``ConnectionBroken``."""
        deadline = time.monotonic() + timeout_s
        if self.direct:
            return self._recv_direct(deadline, timeout_s)
        if self._held is not None:
            item, self._held = self._held, None
        else:
            try:
                item = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise LinkTimeout(f"no frame within {timeout_s:.3f} s") from None
        due, frame = item
        if isinstance(frame, ConnectionBroken):
            self._inbox.put(item)  # stays broken for every later call
            raise frame
        if due > deadline:
            time.sleep(max(deadline - time.monotonic(), 0.0))
            self._held = item
            raise LinkTimeout(f"frame still in flight after {timeout_s:.3f} s")
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return frame

    def _take_frame(self) -> wire.Frame | None:
        """The first complete frame of the buffer (removed from it), or None."""
        if len(self._buf) < wire.LENGTH.size:
            return None
        (length,) = wire.LENGTH.unpack_from(self._buf)
        wire.check_length(length, self.max_frame)
        end = wire.LENGTH.size + length
        if len(self._buf) < end:
            return None
        frame = self.channel.decode(bytes(self._buf[: wire.LENGTH.size]),
                                    bytes(self._buf[wire.LENGTH.size : end]))
        del self._buf[:end]
        self.bytes_received += end
        return frame

    def _recv_direct(self, deadline: float, timeout_s: float) -> wire.Frame:
        while True:
            if self.broken:
                raise ConnectionBroken(self.broken)
            try:
                frame = self._take_frame()
            except wire.WireError as err:
                log.warning("edge: rejected frame from the cloud: %s", err.reason)
                self._fail(f"rejected frame: {err.reason}")
                continue
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkTimeout(f"no frame within {timeout_s:.3f} s")
            try:
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                raise LinkTimeout(f"no frame within {timeout_s:.3f} s") from None
            except OSError as err:
                self._fail(f"socket error: {err}")
                continue
            if not chunk:
                self._fail("cloud closed the connection" if not self._buf else
                           f"stream ended inside a frame ({len(self._buf)} bytes buffered)")
                continue
            self._buf += chunk

    def close(self) -> None:
        self.closed.set()
        with self._cv:
            self._cv.notify_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
