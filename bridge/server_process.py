"""The cloud server in its own process on this machine: what the runtime's measurements, the
benchmarks and the restart tests start (docs/design.md §5).

A split measured with the cloud in the edge's process shares one interpreter lock and one torch
thread pool between the two sides: on 2 cores the edge's and the cloud's blocks then slowed
each other, and figure 15's predictions missed by 24-43 % (the calibration measures one side
alone). In separate processes, each with the thread count the profile was calibrated with
(``bridge.calibrate.profile_threads``), they do not.

``ServerProcess`` starts ``python -m bridge.server_process`` (``serve_cloud`` with an executor
named as ``bridge.blocks.make_executor`` takes it), waits until its port accepts connections,
and stops it on exit; ``kill()`` and ``start()`` again restart it on the same port (the fault
tests' SIGKILL)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``serve_cloud`` for ``executor`` in a child process on ``host:port`` (a free port when
    None) with ``threads`` torch threads (None: torch's default); ``start_timeout_s``: how
    long to wait for the port (loading SmolLM2 takes seconds); ``quiet``: discard the child's
    output (its log goes to stderr otherwise)."""

    def __init__(self, executor: str = "toy", port: int | None = None,
                 threads: int | None = None, host: str = "127.0.0.1",
                 start_timeout_s: float = 300.0, quiet: bool = True):
        if threads is not None and int(threads) < 1:
            raise ValueError(f"ServerProcess: threads must be >= 1, got {threads}")
        self.executor, self.host = executor, host
        self.port = free_port(host) if port is None else int(port)
        self.threads, self.start_timeout_s, self.quiet = threads, start_timeout_s, quiet
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> tuple[str, int]:
        """Start the child and wait until it accepts connections."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        args = [sys.executable, "-m", "bridge.server_process", "--host", self.host,
                "--port", str(self.port), "--executor", self.executor]
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
            args += ["--threads", str(self.threads)]
        out = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                socket.create_connection(self.address, timeout=0.2).close()
                return self.address
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"cloud server process ({self.executor}) exited with "
                                       f"code {self.proc.returncode} before listening") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"cloud server process ({self.executor}) did not listen "
                                       f"on {self.host}:{self.port} within "
                                       f"{self.start_timeout_s:g} s") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the child (its request state is lost) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Terminate the child (SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="the cloud server of a ServerProcess")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--port", type=int, required=True, help="TCP port")
    ap.add_argument("--executor", default="toy",
                    help="block executor: toy, smollm2 or a model file path")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (count)")
    args = ap.parse_args(argv)
    from bridge.blocks import make_executor, set_torch_threads
    from bridge.cloud_server import serve_cloud

    if args.threads is not None and args.executor != "toy":
        set_torch_threads(args.threads)
    serve_cloud(args.host, args.port, None, make_executor(args.executor))


if __name__ == "__main__":
    main()
