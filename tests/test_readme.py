"""Every `splitwise ...` command that README.md shows runs as written, with tiny sizes.

The commands are read from README.md itself (indented code lines that start with
`splitwise `), optional `[...]` parts and trailing comments dropped, and run in order in one
scratch directory (so `train` leaves the run that `evaluate` and `export` read). Only the flags
that set a size are replaced (slots, steps, seeds, requests, which figures, the runtime's
model); a command the README
adds without an entry in `SIZE` fails `test_every_readme_command_is_covered`.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.server_process import free_port
from splitwise_cli import BRIDGE_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys, splitwise_cli; sys.exit(splitwise_cli.main())"]

# Per command: flags whose value is replaced (tiny sizes) and flags appended.
SIZE = {
    "costs": ({}, []),
    "simulate": ({"--slots": "4"}, []),
    "certify": ({"--slots": "8"}, ["--examples", "3", "--states", "4"]),
    "oracle-gaps": ({"--slots": "4"}, []),
    "train": ({"--steps": "64", "--seeds": "1"},
              ["--num-envs", "2", "--num-steps", "8", "--log-every", "1"]),
    "evaluate": ({"--slots": "4", "--seeds": "1"}, []),
    # the cheapest experiment, on one model, device and condition (make demo runs them all)
    "figures": ({}, ["--only", "memory", "--set", "memory.models=gpt2-xl", "--set",
                     "memory.devices=rpi5", "--set", "memory.conditions=dc-idle"]),
    "calibrate": ({}, ["--quick", "--clock", "cpu", "--threads", "1"]),  # CI may be busy
    "export": ({"--parity": "20"}, []),
    # the runtime's model: the NumPy toy instead of SmolLM2 (the slow run's bridge tests run
    # SmolLM2 itself, tests/bridge/test_runtime.py and test_exported_runtime.py)
    "serve-cloud": ({"--model": "toy"}, []),
    "run-edge": ({"--requests": "2", "--model": "toy"}, []),
}
FAST = ("costs",)


def readme_commands() -> list[list[str]]:
    """The README's `splitwise` command lines as argv lists (without the program name)."""
    out = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("    splitwise "):
            continue
        text = re.sub(r"\s#\s.*$", "", line.strip())
        text = re.sub(r"\[[^\]]*\]", "", text).replace("&", " ").strip()
        out.append(shlex.split(text)[1:])
    return out


def tiny(argv: list[str]) -> list[str]:
    replace, extra = SIZE[argv[0]]
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in replace:
            argv[i + 1] = replace[a]
    if argv[0] == "evaluate" and "--seeds" not in argv:
        argv += ["--seeds", "1"]
    return argv + extra


def _setup(tmp: Path) -> None:
    (tmp / "lyapunov" / "data").mkdir(parents=True)
    (tmp / "lyapunov" / "data" / "traces").symlink_to(ROOT / "lyapunov" / "data" / "traces")
    (tmp / "key.bin").write_bytes(os.urandom(32))
    (tmp / "key.bin").chmod(0o600)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(argv: list[str], cwd: Path, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *argv], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"splitwise {shlex.join(argv)}\n{proc.stderr[-3000:]}"
    return proc


def test_every_readme_command_is_covered():
    cmds = readme_commands()
    assert {c[0] for c in cmds} == set(SIZE), "README commands and SIZE disagree"


@pytest.mark.parametrize("argv", [c for c in readme_commands() if c[0] not in BRIDGE_COMMANDS],
                         ids=lambda a: " ".join(a[:3]))
def test_every_readme_command_parses(argv):
    """Every README command line (and its tiny-size variant) is accepted by the CLI's parser:
    a renamed or removed flag fails here, in the default run, without running the command.
    (calibrate, export and run-edge parse their flags in bridge/ when they run: the slow run's
    chain runs export and run-edge, tests/bridge/test_calibrate.py the calibrate CLI.)"""
    import splitwise_cli

    for line in (argv, tiny(argv)):
        args = splitwise_cli.build_parser().parse_args(line)
        assert args.command == line[0]


@pytest.mark.slow  # a CLI subprocess compiling `costs` (26 s); the default run parses it
@pytest.mark.parametrize("argv", [c for c in readme_commands() if c[0] in FAST],
                         ids=lambda a: a[0])
def test_fast_readme_commands(argv, tmp_path):
    _setup(tmp_path)
    out = _run(tiny(argv), tmp_path)
    assert out.stdout.strip()


def _reads(argv: list[str]) -> set[str]:
    """Paths a command reads from an earlier command (checkpoint:DIR, --checkpoint DIR)."""
    out = {a.split(":", 1)[1] for a in argv if a.startswith("checkpoint:")}
    out |= {b for a, b in zip(argv, argv[1:], strict=False) if a == "--checkpoint"}
    return out


def _out(argv: list[str]) -> str | None:
    return next((b for a, b in zip(argv, argv[1:], strict=False) if a == "--out"), None)


def chained(cmds: list[list[str]]) -> list[bool]:
    """Per command: whether it belongs to the ordered chain (it writes what a later command
    reads, it reads an earlier one's output, or it is the runtime's server/client pair)."""
    read = set().union(*(_reads(c) for c in cmds))
    return [c[0] in ("serve-cloud", "run-edge") or bool(_reads(c)) or _out(c) in read
            for c in cmds]


_CMDS = readme_commands()
ALONE = [c for c, ch in zip(_CMDS, chained(_CMDS), strict=True) if not ch and c[0] not in FAST]


@pytest.mark.extended
@pytest.mark.parametrize("argv", ALONE, ids=lambda a: " ".join(a[:3]))
def test_readme_command_alone(argv, tmp_path):
    """A README command that neither reads nor writes another's files, as written (tiny
    sizes); independent of the others, so a run spreads them over its workers. Extended (beyond
    CI's budget): CI runs the dependent chain below, and the default run parses every command
    (`test_every_readme_command_parses`)."""
    _setup(tmp_path)
    _run(tiny(argv), tmp_path)


def test_the_chain_holds_what_depends_on_order():
    cmds = readme_commands()
    chain = [c[0] for c, ch in zip(cmds, chained(cmds), strict=True) if ch]
    assert chain[:3] == ["train", "evaluate", "export"], chain
    assert chain[-2:] == ["serve-cloud", "run-edge"], chain
    assert len(ALONE) + len(chain) + sum(c[0] in FAST for c in cmds) == len(cmds)


@pytest.mark.slow
def test_readme_commands_in_order(tmp_path):
    """The README's dependent commands, in order: train -> evaluate -> export use the same
    run; serve-cloud runs in the background while run-edge sends it requests."""
    _setup(tmp_path)
    port = str(free_port())
    server = None
    cmds = readme_commands()
    try:
        for argv, in_chain in zip(cmds, chained(cmds), strict=True):
            if argv[0] in FAST or not in_chain:
                continue
            argv = [a.replace("7070", port) for a in tiny(argv)]
            if argv[0] == "serve-cloud":
                server = subprocess.Popen([*CLI, *argv], cwd=tmp_path, env=_env(),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)
                deadline = time.time() + 120
                while time.time() < deadline:
                    assert server.poll() is None, server.stderr.read()[-3000:]
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", int(port))) == 0:
                            break
                    time.sleep(0.5)
                continue
            _run(argv, tmp_path)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
