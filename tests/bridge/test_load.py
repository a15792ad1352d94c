"""50 concurrent edge clients on loopback against one cloud server process: nothing lost,
every answer right, every step executed once, the server's memory within the bound its
``ServerLimits`` imply (docs/design.md §5). Runs ``benchmarks/server_load.py``'s load
(about 15 s here)."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # long: CI runs it with the slow tests

ROOT = Path(__file__).resolve().parents[2]


def test_fifty_concurrent_clients_nothing_lost_memory_bounded():
    spec = importlib.util.spec_from_file_location("server_load",
                                                  ROOT / "benchmarks" / "server_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.load_test(clients=50, requests=4)
    print("\n", out)
    assert (out["requests"], out["answered"], out["failed"], out["lost"]) == (200, 200, 0, 0)
    assert out["wrong_answers"] == 0 and out["fallbacks"] == 0 and not out["client_errors"]
    assert out["cloud_steps_duplicated"] == 0 and out["ledger_missing"] == 0
    assert out["cloud_steps_executed"] > 0
    assert 0 <= out["rss_growth_mib"] <= out["bound_mib"]
