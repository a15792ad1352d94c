"""docs/certify.md's worked example runs as written: a user-written toy policy checked with
lyapunov.testing's assertions (the Python block is extracted from the Markdown and executed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # long: CI runs it with the slow tests

DOC = Path(__file__).resolve().parents[1] / "docs" / "certify.md"


def test_certify_doc_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    ns: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), ns)  # noqa: S102 - the documented example
    cert = ns["cert"]
    assert cert.iid and cert.verdict == "theorem"
    assert cert.penalty_ok and cert.backlog_ok
    assert cert.C_mean >= 0.0
