"""Everything but the bridge imports and works without torch (cvxpylayers'
`test_import_isolation.py` habit): torch is an optional extra that only `bridge/` uses.

1. In a subprocess whose import system refuses `torch` (a meta-path finder raising
   ImportError, as if it were not installed), every module of costmodel, lyapunov, agents,
   experiments and proofs, the `bridge` package itself and `splitwise_cli` import, and a
   request's costs, a scenario's parameters and the CLI's `costs` command run; the bridge
   commands' argument parsers (`bridge.calibrate`, `bridge.export`: torch only inside their
   functions) build, so the CLI can list them.
2. Imported normally, none of them pulls torch into `sys.modules`.
3. No Python file outside `bridge/`, `tests/bridge/` and `benchmarks/` (scripts that measure
   the bridge) contains an `import torch` / `from torch` statement.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("costmodel", "lyapunov", "agents", "experiments", "proofs")
ALLOWED = ("bridge", "tests/bridge", "benchmarks")
TORCH_IMPORT = re.compile(r"^\s*(import\s+torch\b|from\s+torch\b)", re.MULTILINE)

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
names = []
for pkg in {packages!r}:
    mod = importlib.import_module(pkg)
    names.append(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        importlib.import_module(info.name)
        names.append(info.name)
import bridge, splitwise_cli
names += ["bridge", "splitwise_cli"]
"""

_BLOCK_TORCH = """
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r} (blocked by the isolation test)")
        return None

sys.meta_path.insert(0, _NoTorch())
for k in [k for k in sys.modules if k == "torch" or k.startswith("torch.")]:
    del sys.modules[k]
"""

_WORKS = """
from costmodel.costs import request_costs
from costmodel.link import make_link
from costmodel.partition import layer_cut
from costmodel.spec import make_spec
spec = make_spec("smollm2-135m", "rpi5")
lat = float(request_costs(layer_cut(30, 9, 10), make_link(20.0, 40.0), spec).latency_s)
assert lat > 0, lat

from lyapunov.env import Scenario
assert Scenario(model="smollm2-135m").build().spec.n_layers == 30

import contextlib, io
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    assert splitwise_cli.main(["costs", "--model", "smollm2-135m", "--device", "rpi5",
                               "--json"]) in (0, None)
assert json.loads(buf.getvalue())

import argparse
from bridge import calibrate, export
ap = argparse.ArgumentParser()
sub = ap.add_subparsers()
calibrate.add_args(sub.add_parser("calibrate"))
export.add_args(sub.add_parser("export"))
assert ap.parse_args(["export", "--checkpoint", "d", "--format", "onnx", "--out", "f"]).parity
"""


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_everything_but_the_bridge_works_without_torch():
    code = (_BLOCK_TORCH + "\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('the torch blocker does not work')\n"
            + _IMPORT_ALL.format(packages=PACKAGES) + _WORKS
            + "print(json.dumps({'n': len(names), 'torch': 'torch' in sys.modules}))")
    out = _run(code)
    assert out["n"] > 40 and not out["torch"]


def test_importing_the_packages_loads_no_torch():
    code = (_IMPORT_ALL.format(packages=PACKAGES)
            + "print(json.dumps({'n': len(names), 'torch': sorted(k for k in sys.modules "
              "if k.split('.')[0] in ('torch', 'onnxruntime', 'onnx'))}))")
    out = _run(code)
    assert out["n"] > 40 and out["torch"] == []


def test_no_torch_import_outside_the_bridge():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or "site-packages" in rel.parts:
            continue
        if any(rel.as_posix().startswith(a + "/") for a in ALLOWED):
            continue
        if TORCH_IMPORT.search(path.read_text(errors="replace")):
            offenders.append(str(rel))
    assert not offenders, f"torch imported outside bridge/: {offenders}"
