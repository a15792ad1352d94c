"""Loads this directory's helper modules under names unique to the test suite.

Test directories have no __init__.py, so a bare `import reference` could pick up another
directory's module of the same name; here they are `costmodel_reference` and
`costmodel_testkit`.
"""

import importlib.util
import sys
from pathlib import Path


def _load(name: str, filename: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("costmodel_reference", "reference.py")
_load("costmodel_testkit", "testkit.py")
