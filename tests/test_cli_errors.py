"""Bad input on the command line: one line naming the argument, file or field, a non-zero exit,
no traceback (one case per row)."""

from __future__ import annotations

import json
import os

import pytest

from splitwise_cli import main


def _files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "words.txt").write_text("0 1.0\n1 fast\n")
    (tmp_path / "nan.txt").write_text("0 1.0\n1 nan\n2 3.0\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "card.json").write_text(json.dumps({"name": "c", "tied_embeddings": "no"}))
    (tmp_path / "garbage.npz").write_bytes(os.urandom(64))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "params.npz").write_bytes(b"")
    return tmp_path


SIM = ["simulate", "--model", "smollm2-135m", "--device", "rpi5", "--slots", "4"]
CASES = [
    # (argv, text that the one line must contain)
    (["simulate", "--slots", "0"], "--slots"),
    (["oracle-gaps", "--slots", "0"], "--slots"),
    (["oracle-gaps", "--target", "2"], "--target"),
    (["oracle-gaps", "--target", "nan"], "--target"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--requests", "-1"], "--requests"),
    (["serve-cloud", "--port", "70000"], "--port"),
    (["serve-cloud", "--port", "abc"], "--port"),
    (["costs", "--profile-file", "{tmp}/missing.json"], "missing.json"),
    (["costs", "--profile-file", "{tmp}/dir"], "dir"),
    (["costs", "--card-file", "{tmp}/card.json"], "card.json"),
    (["costs", "--bandwidth-mbps", "-1"], "bw_up_mbps"),
    (["costs", "--model", "gpt5"], "gpt5"),
    ([*SIM, "--trace", "{tmp}/empty.txt"], "empty.txt"),
    ([*SIM, "--trace", "{tmp}/words.txt"], "words.txt"),
    ([*SIM, "--trace", "{tmp}/nan.txt"], "nan.txt"),
    ([*SIM, "--trace", "{tmp}/dir"], "dir"),
    ([*SIM, "--trace", "{tmp}/nothere.txt"], "nothere.txt"),
    ([*SIM, "--policy", "no-such-policy"], "no-such-policy"),
    ([*SIM, "--policy", "checkpoint:{tmp}/nonexistent"], "nonexistent"),
    ([*SIM, "--policy", "checkpoint:{tmp}/ckpt"], "ckpt"),
    (["run-edge", "--cloud", "nohost"], "--cloud"),
    (["run-edge", "--cloud", "host:abc"], "--cloud"),
    (["run-edge", "--cloud", "no-such-host.invalid:7070"], "--cloud"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--key-file", "{tmp}/nothere.key"], "nothere.key"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--key-file", "{tmp}/empty.txt"], "empty.txt"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--key-file", "{tmp}/dir"], "dir"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--retries", "-1"], "--retries"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--timeout", "0"], "--timeout"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--privacy-layers", "-1"], "--privacy-layers"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--edge-memory-gb", "nan"], "--edge-memory-gb"),
    (["serve-cloud", "--model", "{tmp}/nothere.gguf"], "nothere.gguf"),
    (["serve-cloud", "--key-file", "{tmp}/words.txt"], "words.txt"),
    (["figures", "--only", "memory", "--set", "memory.modles=x"], "modles"),
    (["figures", "--only", "memory", "--set", "memory.bw_mbps=fast"], "bw_mbps"),
    (["figures", "--only", "memory", "--set", "memroy.models=x"], "memroy"),
    (["figures", "--only", "memory", "--set", "memory"], "--set"),
    (["figures", "--only", "memory", "--config", "{tmp}/words.txt"], "words.txt"),
    (["figures", "--only", "memory", "--config", "{tmp}/nothere.json"], "nothere.json"),
    (["figures", "--only", "memory", "--jobs", "0"], "--jobs"),
    # No abbreviations: a prefix of a flag is not that flag (--out is not --outage-prob).
    ([*SIM, "--out", "x.json"], "--out"),
    (["train", "--out", "{tmp}/run", "--step", "3"], "--step"),
    (["figures", "--only", "memory", "--quic"], "--quic"),
    (["run-edge", "--cloud", "127.0.0.1:7070", "--request", "1"], "--request"),
]


@pytest.mark.parametrize("argv, needle", CASES, ids=lambda x: " ".join(x) if isinstance(x, list)
                         else None)
def test_bad_input_is_one_line(argv, needle, tmp_path, capsys):
    tmp = _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejects the value
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("usage:")
             and not ln.startswith("  ")]
    assert len(lines) == 1, err
    assert needle in lines[0], err


@pytest.mark.slow
def test_costs_at_zero_bandwidth_prints_no_inf_or_nan(capsys):
    assert main(["costs", "--model", "smollm2-135m", "--bandwidth-mbps", "0", "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out)  # allow_nan=False upstream: Infinity/NaN would not parse back
    assert "Infinity" not in out and "NaN" not in out
    cloud = next(r for r in rows if r["strategy"] == "cloud-only")
    assert cloud["feasible"] is False and cloud["latency_s"] is None


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("splitwise ")
