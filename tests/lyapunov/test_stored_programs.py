"""Stored traced programs (lyapunov.stored_programs): a later call loads instead of tracing,
gives the traced program's results, keys on everything the program depends on, survives a
damaged entry, and `simulate` uses it only for policies whose program the key covers."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lyapunov import registry, stored_programs
from lyapunov.policies import edge_only
from lyapunov.simulate import _stored_key, simulate
from tests.agents.small import SCENARIO


@pytest.fixture
def store(tmp_path):
    stored_programs.enable(tmp_path)
    yield tmp_path
    stored_programs.enable(None)


def _counting(traces):
    def f(x, tree):
        traces.append(1)  # runs only while tracing
        return {"sum": x.sum() + tree["a"] * tree["b"].sum(), "double": 2 * x}
    return f


def _files(where):
    return sorted(p.name for p in (where / "programs").glob("*.jaxexport"))


ARGS = (jnp.arange(6.0).reshape(2, 3), {"a": jnp.float32(2.0), "b": jnp.ones(4)})


def test_a_stored_program_is_loaded_not_traced(store):
    traces = []
    first = stored_programs.stored_jit("f", _counting(traces), ("s", 1), *ARGS)
    out1 = first(*ARGS)
    assert len(traces) == 1 and len(_files(store)) == 1
    again = stored_programs.stored_jit("f", _counting(traces), ("s", 1), *ARGS)
    out2 = again(*ARGS)
    assert len(traces) == 1  # loaded from the file: the function was not traced again
    ref = jax.jit(_counting([]))(*ARGS)
    for a, b, c in zip(jax.tree.leaves(out1), jax.tree.leaves(out2), jax.tree.leaves(ref),
                       strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    assert set(out2) == {"sum", "double"}
    # other inputs of the same shapes go through the same program
    other = (ARGS[0] + 1.0, {"a": jnp.float32(-1.0), "b": jnp.arange(4.0)})
    np.testing.assert_allclose(again(*other)["sum"], jax.jit(_counting([]))(*other)["sum"])


@pytest.mark.parametrize("change", ["static", "shape", "dtype", "structure"])
def test_the_key_covers_static_shapes_dtypes_and_structure(store, change):
    traces = []
    stored_programs.stored_jit("f", _counting(traces), ("s", 1), *ARGS)
    static, args = ("s", 1), ARGS
    if change == "static":
        static = ("s", 2)
    elif change == "shape":
        args = (jnp.zeros((3, 3)), ARGS[1])
    elif change == "dtype":
        args = (ARGS[0].astype(jnp.int32), ARGS[1])
    else:
        args = (ARGS[0], {"a": ARGS[1]["a"], "b": ARGS[1]["b"], "c": jnp.zeros(())})
    stored_programs.stored_jit("f", _counting(traces), static, *args)
    assert len(traces) == 2 and len(_files(store)) == 2


def test_the_fingerprint_follows_every_source_file(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "table.csv").write_text("1,2\n")
    h0 = stored_programs.fingerprint(tmp_path, ("pkg",))
    assert stored_programs.fingerprint(tmp_path, ("pkg",)) == h0
    (tmp_path / "pkg" / "sub" / "table.csv").write_text("1,3\n")
    h1 = stored_programs.fingerprint(tmp_path, ("pkg",))
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    h2 = stored_programs.fingerprint(tmp_path, ("pkg",))
    assert len({h0, h1, h2}) == 3


def test_a_damaged_entry_is_a_miss_with_a_warning(store, caplog):
    traces = []
    stored_programs.stored_jit("f", _counting(traces), ("s", 1), *ARGS)
    [name] = _files(store)
    (store / "programs" / name).write_bytes(b"not a program")
    with caplog.at_level(logging.WARNING, logger="lyapunov.stored_programs"):
        f = stored_programs.stored_jit("f", _counting(traces), ("s", 1), *ARGS)
    assert "unreadable" in caplog.text and len(traces) == 2
    np.testing.assert_allclose(f(*ARGS)["sum"], jax.jit(_counting([]))(*ARGS)["sum"])
    # and the entry was written again, whole
    traces_after = []
    stored_programs.stored_jit("f", _counting(traces_after), ("s", 1), *ARGS)
    assert traces_after == []


def test_off_by_default_nothing_is_stored(tmp_path):
    assert stored_programs.directory() is None
    traces = []
    f = stored_programs.stored_jit("f", _counting(traces), ("s", 1), *ARGS)
    f(*ARGS)
    assert not (tmp_path / "programs").exists() and len(traces) == 1


@pytest.mark.slow
def test_simulate_stores_registered_policies_only(store):
    assert _stored_key("edge-only") == ("policy", "edge-only")
    assert _stored_key("checkpoint:/some/run") is None  # weights are constants of its program
    spec = registry.PolicySpec("outside-test", lambda: edge_only(), "outside", "k", (),
                               "baseline", "a policy from outside the packages")
    registry.register(spec)
    try:
        assert _stored_key("outside-test") is None
    finally:
        registry._SPECS.pop("outside-test")
    a = simulate("edge-only", SCENARIO, 6, seed=3)
    assert len(_files(store)) == 3  # reset, step and the policy's act (the timed decision's)
    b = simulate("edge-only", SCENARIO, 6, seed=3)
    stored_programs.enable(None)
    c = simulate("edge-only", SCENARIO, 6, seed=3)
    for k in a:
        if k != "decision_time_s":
            assert a[k] == b[k] == c[k] or (np.isnan(a[k]) and np.isnan(c[k])), k
