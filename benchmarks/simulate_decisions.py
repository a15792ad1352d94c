"""The exact oracle's decision time inside ``splitwise simulate``, card by card, for one or more
checkouts run alternately (docs/oracle-scaling.md, "The issue's own table").

Each row runs ``splitwise simulate --json`` (Orin NX edge unless named, MEC cloud, cloud share
0.2) in every checkout given, one after the other, and reads its ``decision_time_s``: the mean
wall time of 10 jitted decisions, after a warm-up, at the state after the run's last slot; and
the run's whole wall time, cold (JAX's persistent compilation cache off, so every program
compiles: the issue's "compile before the first slot" plus the slots themselves). The
70B-shaped card is a user card (``--card-file``: 80 layers x 64 heads, 8 K/V heads), its
64 GB edge a profile file (the Orin NX with ``mem_budget_gb`` 64), ``mec160`` a MEC with
160 GB; each checkout writes these files with its own code (its own field names). To compare
with an older commit:

    git worktree add /tmp/before 80fcc43
    python benchmarks/simulate_decisions.py --repos /tmp/before . [--spaces paper tp]
        [--rows NAME ...] [--policies oracle dp-estimate] [--slots-binding 50]
        [--out results/simulate_decisions.json]

Timings on a shared machine are upper bounds; the checkouts alternate row by row so that a
drift of the machine's speed hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.oracle_scaling import BIG70, MEC160, SYNTH  # noqa: E402

# The cards' fields every checkout's ModelCard takes (later fields have defaults).
_CARD_FIELDS = ("name", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_ff", "vocab",
                "ffn_type", "tied_embeddings")

# name: (model, edge, cloud, binding: the 14 GB Orin NX cannot hold the 70B card)
ROWS = {
    "8x8": (SYNTH.name, "orin-nx", "mec", False),
    "gpt2-xl": ("gpt2-xl", "orin-nx", "mec", False),
    "llama-7b": ("llama-7b", "orin-nx", "mec", False),
    "llama-13b": ("llama-13b", "orin-nx", "mec", False),
    "70b/64gb": (BIG70.name, "orin-nx-64gb", "mec", False),
    "70b/orin-nx": (BIG70.name, "orin-nx", "mec", True),
    "70b/orin-nx/mec160": (BIG70.name, "orin-nx", MEC160.name, True),
    "llama-13b/rpi5": ("llama-13b", "rpi5", "mec", False),
}

# Written by each checkout's own code (run with that checkout as the working directory), from
# benchmarks/oracle_scaling.py's cards and its MEC 160 GB.
_FILES = """
import dataclasses, json, sys
sys.path.insert(0, '.')
from costmodel.cards import ModelCard
from costmodel.profiles import get_profile
out, cards, mec, mec_gb = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def profile(base, name, gb, why):
    p = dataclasses.asdict(get_profile(base))
    p.update(name=name, mem_budget_gb=gb)
    if 'sources' in p:
        p['sources'] = dict(p['sources'], mem_budget_gb=why)
    json.dump(p, open(f'{out}/{name}.json', 'w'))
profile('orin-nx', 'orin-nx-64gb', 64.0, 'benchmark: the Orin NX with 64 GB (memory free)')
profile('mec', mec, mec_gb, f'benchmark: a MEC with {mec_gb:g} GB')
for c in cards:
    json.dump(dataclasses.asdict(ModelCard(**c)), open(f'{out}/{c["name"]}.json', 'w'))
"""


def write_files(repo: Path, python: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cards = [{f: getattr(c, f) for f in _CARD_FIELDS} for c in (SYNTH, BIG70)]
    subprocess.run([python, "-c", _FILES, str(out), json.dumps(cards),
                    MEC160.name, str(MEC160.mem_budget_gb)], cwd=repo, check=True)


def decision(repo: Path, python: str, files: Path, row: str, policy: str, tp: bool,
             slots: int) -> dict:
    """One ``simulate`` run: its decision time (ms), wall time (s), or the error's last line."""
    model, edge, cloud, _ = ROWS[row]
    cmd = [python, "splitwise_cli.py", "simulate", "--model", model, "--device", edge,
           "--cloud", cloud, "--share", "0.2", "--policy", policy, "--slots", str(slots),
           "--json"] + (["--tp"] if tp else [])
    for name in (SYNTH.name, BIG70.name):
        cmd[3:3] = ["--card-file", str(files / f"{name}.json")]
    for name in ("orin-nx-64gb", MEC160.name):
        cmd[3:3] = ["--profile-file", str(files / f"{name}.json")]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True,
                         env=dict(os.environ, SPLITWISE_JAX_CACHE="off"))
    wall = time.perf_counter() - t0
    if run.returncode:
        lines = (run.stderr or run.stdout).strip().splitlines() or ["(no output)"]
        return dict(ms=None, wall_s=wall, error=lines[-1][:300])
    return dict(ms=1e3 * json.loads(run.stdout)["decision_time_s"], wall_s=wall, error=None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repos", nargs="+", default=[str(ROOT)],
                    help="checkouts to compare (directories; default: this one)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that runs every checkout's CLI (default: this one)")
    ap.add_argument("--spaces", nargs="+", default=["paper"], choices=["paper", "tp"],
                    help="option spaces: the paper's, and with tensor-parallel FFNs")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                    help="cards / devices to run (default: all)")
    ap.add_argument("--policies", nargs="+", default=["oracle", "dp-estimate"],
                    help="registered policy names")
    ap.add_argument("--slots", type=int, default=200, help="slots per run (>= 4)")
    ap.add_argument("--slots-binding", type=int, default=50,
                    help="slots per run where memory binds (the 70B card on 14 GB; >= 4): "
                         "an older oracle there took seconds a decision")
    ap.add_argument("--out", default="results/simulate_decisions.json", help="JSON output")
    args = ap.parse_args(argv)
    if min(args.slots, args.slots_binding) < 4:
        ap.error("--slots and --slots-binding must be at least 4")
    repos = [Path(r).resolve() for r in args.repos]
    for r in repos:
        if not (r / "splitwise_cli.py").is_file():
            ap.error(f"--repos: {r} holds no splitwise_cli.py")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / str(i) for i in range(len(repos))]
        for r, f in zip(repos, files, strict=True):
            write_files(r, args.python, f)
        for space in args.spaces:
            for row in args.rows:
                slots = args.slots_binding if ROWS[row][3] else args.slots
                for policy in args.policies:
                    got = [decision(r, args.python, f, row, policy, space == "tp", slots)
                           for r, f in zip(repos, files, strict=True)]
                    cells = [f"{g['ms']:.1f} ms ({g['wall_s']:.1f} s cold)" if g["ms"] is not None
                             else f"error: {g['error']}" for g in got]
                    print(f"{space:5s} {row:20s} {policy:12s} {slots:4d} slots  "
                          + "  ".join(cells), flush=True)
                    records.append(dict(space=space, row=row, policy=policy, slots=slots,
                                        runs=[dict(repo=str(r), **g)
                                              for r, g in zip(repos, got, strict=True)]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(repos=[str(r) for r in repos], rows=records), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
