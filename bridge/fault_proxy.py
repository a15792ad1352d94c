"""A fault-injecting TCP proxy for the runtime's tests (``tests/bridge/test_faults.py``).
Design: ``docs/design.md §5 (threat model)``.

``FaultProxy`` listens on 127.0.0.1 between edge clients and the cloud server, reads whole
frames (by their length prefix) in both directions and, with seeded per-frame probabilities
(``FaultPlan``), drops the connection, delays the frame beyond the client's timeout, flips one
byte after the length prefix, or forwards a prefix of the frame and closes. The runtime itself
never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import socket
import threading
from collections import Counter

from bridge import wire


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Per-frame fault probabilities of the proxy (a frame gets at most one fault).

    drop: close both sides instead of forwarding the frame (a connection lost mid-request).
    delay: hold the frame ``delay_s`` before forwarding it (longer than the client's timeout).
    corrupt: flip one random byte after the length prefix.
    truncate: forward a strict prefix of the frame, then close both sides.
    directions: "both", "up" (edge -> cloud) or "down".
    seed: of the proxy's random generator.
    """

    drop: float = 0.0
    delay: float = 0.0
    delay_s: float = 1.0
    corrupt: float = 0.0
    truncate: float = 0.0
    directions: str = "both"
    seed: int = 0

    def __post_init__(self):
        total = self.drop + self.delay + self.corrupt + self.truncate
        if min(self.drop, self.delay, self.corrupt, self.truncate) < 0 or total > 1:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")
        if self.directions not in ("both", "up", "down"):
            raise ValueError("directions must be 'both', 'up' or 'down'")


class FaultProxy:
    """TCP proxy on 127.0.0.1 that injects ``FaultPlan`` faults into whole frames.

    ``start()`` returns the listening port; ``counts`` holds the faults injected by kind;
    ``set_plan`` changes the plan for frames read afterwards; ``stop()`` closes everything.
    """

    def __init__(self, upstream: tuple[str, int], plan: FaultPlan = FaultPlan()):
        if upstream[0] not in ("127.0.0.1", "localhost"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.upstream, self.plan = upstream, plan
        self.rng = random.Random(plan.seed)
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self.rng = random.Random(plan.seed)

    def start(self) -> int:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self._listener.getsockname()[1]

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=1.0)
                server.settimeout(None)
            except OSError:
                self.counts["upstream_refused"] += 1
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._track(s)
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, "up", pair),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down", pair),
                             daemon=True).start()

    def _choose(self, direction: str) -> str | None:
        with self._lock:
            p = self.plan
            if p.directions not in ("both", direction):
                return None
            u = self.rng.random()
            for kind in ("drop", "delay", "corrupt", "truncate"):
                prob = getattr(p, kind)
                if u < prob:
                    self.counts[kind] += 1
                    return kind
                u -= prob
            return None

    @staticmethod
    def _close(pair) -> None:
        for s in pair:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, pair) -> None:
        try:
            while not self._stop.is_set():
                head = _recv_n(src, wire.LENGTH.size)
                if head is None:
                    break
                (length,) = wire.LENGTH.unpack(head)
                body = _recv_n(src, min(length, 1 << 30))
                if body is None:
                    break
                data = head + body
                kind = self._choose(direction)
                if kind == "drop":
                    break
                if kind == "truncate":
                    with self._lock:
                        cut = self.rng.randrange(1, len(data))
                    dst.sendall(data[:cut])
                    break
                if kind == "corrupt":
                    with self._lock:
                        i = self.rng.randrange(wire.LENGTH.size, len(data))
                        flip = self.rng.randrange(1, 256)
                    buf = bytearray(data)
                    buf[i] ^= flip
                    data = bytes(buf)
                if kind == "delay":
                    if self._stop.wait(self.plan.delay_s):
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(pair)

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            socks = list(self._socks)
        self._close(socks)


def _recv_n(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
