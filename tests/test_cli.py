"""The `splitwise` command line: output keys, sensible orderings, and errors that name fields."""

import json

import pytest

import splitwise_cli
from splitwise_cli import main

KEYS = {"strategy", "latency_s", "energy_j", "cloud_cost", "accuracy_drop", "edge_memory_gb",
        "feasible", "partition"}


def run_json(capsys, *argv):
    assert main(["costs", *argv, "--json"]) == 0
    return {r["strategy"]: r for r in json.loads(capsys.readouterr().out)}


def test_costs_json_rows_and_orderings(capsys):
    rows = run_json(capsys, "--model", "gpt2-xl", "--device", "orin-nx", "--bandwidth-mbps",
                    "50", "--rtt-ms", "20")
    assert set(rows) == {"edge-only", "cloud-only", "best-layer-cut", "best-layer-cut-acc1",
                         "best-headwise", "best-tp"}
    for r in rows.values():
        assert KEYS <= set(r)
    # The exact head-level optimum can never be slower than any special case it contains, and
    # the optimum with tensor-parallel FFNs never slower than the paper's space.
    best = rows["best-headwise"]["latency_s"]
    for name in ("edge-only", "cloud-only", "best-layer-cut", "best-layer-cut-acc1"):
        assert best <= rows[name]["latency_s"] * (1 + 1e-5)
    assert rows["best-tp"]["latency_s"] <= best * (1 + 1e-5)
    assert rows["cloud-only"]["edge_memory_gb"] == 0.0


@pytest.mark.extended
def test_privacy_floor_makes_cloud_only_infeasible(capsys):
    rows = run_json(capsys, "--privacy-layers", "2", "--bandwidth-mbps", "20")
    assert rows["cloud-only"]["feasible"] is False
    assert rows["best-headwise"]["feasible"] is True
    assert rows["best-headwise"]["partition"].startswith("emb=edge 0-1:h32/e")


@pytest.mark.parametrize("argv, field", [
    (["--bandwidth-mbps", "-1"], "bw_up_mbps"),
    (["--bandwidth-mbps", "nan"], "bw_up_mbps"),
    (["--rtt-ms", "-3"], "rtt_ms"),
    (["--cloud-share", "0"], "cloud_share"),
    (["--cloud-share", "1.5"], "cloud_share"),
    (["--prompt-tokens", "0"], "prompt_tokens"),
    (["--model", "gpt5"], "llama-7b"),
    (["--device", "toaster"], "rpi5"),
])
def test_bad_input_names_the_field(capsys, argv, field):
    assert main(["costs", *argv]) == 2
    assert field in capsys.readouterr().err


@pytest.mark.slow  # a second card's compile (20 s); the default run's 10-minute budget
def test_outage_leaves_only_edge_side(capsys):
    rows = run_json(capsys, "--model", "smollm2-135m", "--bandwidth-mbps", "0")
    assert rows["cloud-only"]["feasible"] is False
    assert rows["best-headwise"]["feasible"] is True
    assert rows["best-headwise"]["latency_s"] == pytest.approx(rows["edge-only"]["latency_s"])


def test_tp_between_orin_peers_beats_the_paper_space(capsys):
    # Two Orin NX on a 10 Gbit/s, 0.05 ms link: best-tp <= best-headwise <= every layer-wise row.
    rows = run_json(capsys, "--model", "llama-7b", "--device", "orin-nx", "--cloud", "orin-peer",
                    "--bandwidth-mbps", "10000", "--rtt-ms", "0.05")
    head = rows["best-headwise"]["latency_s"]
    assert rows["best-tp"]["latency_s"] <= head * (1 + 1e-5)
    for name in ("edge-only", "cloud-only", "best-layer-cut", "best-layer-cut-acc1"):
        assert head <= rows[name]["latency_s"] * (1 + 1e-5)
    assert "/t" in rows["best-tp"]["partition"]
    # At most the two-device bound: half of edge-only's time, and strictly better than 1.2x.
    speedup = rows["edge-only"]["latency_s"] / rows["best-tp"]["latency_s"]
    assert 1.2 < speedup <= 2.0


def test_one_commands_parser_imports_only_what_it_needs():
    """`COMMANDS` are the parser's subcommands; building the parser of `simulate` (or
    `costs`) imports neither the agents nor optax (a process's start-up time, measured in
    benchmarks/compile_cache.py), and the full parser still knows every command's flags."""
    import subprocess
    import sys

    full = splitwise_cli.build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert tuple(sub.choices) == splitwise_cli.COMMANDS
    assert "--steps" in sub.choices["train"].format_help()
    # ... and its --policy help still names the loaders no module has registered yet
    code = ("import sys, splitwise_cli; p = splitwise_cli.build_parser('simulate'); "
            "a = p.parse_args(['simulate', '--slots', '4']); "
            "h = p._actions[-1].choices['simulate'].format_help(); "
            "print(a.slots, 'checkpoint:ARG' in h and 'onnx:ARG' in h, "
            "sorted(m for m in sys.modules if m == 'optax' or m.startswith('agents')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=2)
    assert out == ["4", "True", "[]\n"]


def test_oracle_gaps_writes_a_row_per_decision(tmp_path, capsys):
    """`splitwise oracle-gaps`: the summary as JSON and the CSV of one row per decision, each
    with its own certified gap (SmolLM2 on a Pi 5: the oracle is exact there)."""
    import csv

    from lyapunov.oracle_gaps import FIELDS

    out = tmp_path / "gaps" / "g.csv"
    assert splitwise_cli.main(["oracle-gaps", "--model", "smollm2-135m", "--slots", "4",
                               "--out", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["decisions"] == 4 and s["certified"] == s["feasible"] == 4
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(FIELDS) and [r["slot"] for r in rows] == ["0", "1", "2", "3"]
    assert all(float(r["gap"]) <= 1e-3 and r["certified"] == "True" for r in rows)
