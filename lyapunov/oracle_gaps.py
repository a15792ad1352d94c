"""The slot oracle's optimality gap, decision by decision, over a run (docs/design.md §4.3).

Each decision of ``lyapunov.oracle.solve_slot`` reports a certified gap: its objective less a
lower bound, over ``|objective|``. Where memory binds on a large card that bound comes from a
relaxation with the edge memory rounded, and can sit a per cent or more below the optimum
while the partition is within 0.1 % of it (docs/oracle-scaling.md). :func:`oracle_gaps` runs
the oracle policy through the slot environment exactly as ``simulate`` does (the same keys, so
the same arrivals, links and decisions) and records every decision's own gap; with ``check``,
every decision whose own gap exceeds ``target`` is checked after the run by
``lyapunov.oracle_check.check_slot`` (the edge memory exact; a fraction of a second to seconds
a decision), so every decision of the run carries a certified gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from lyapunov import env as E
from lyapunov.oracle_check import check_slot
from lyapunov.policies import slot_solution
from lyapunov.simulate import _keys

FIELDS = ("slot", "backlog", "feasible", "objective", "lower_bound", "gap", "exact", "checked",
          "checked_gap", "certified", "check_s")


def _oracle_rollout(params: E.EnvParams, n_slots: int, key: jax.Array, solver_kw=()):
    """(queues, link, solution) of every slot of the oracle's run, stacked on a leading axis:
    the oracle policy's own rollout (``lyapunov.simulate``'s keys, so ``simulate`` of the
    oracle with the same ``solver_kw`` makes the same run)."""
    k_reset, env_keys, _ = _keys(key, n_slots)
    _, state = E.reset(k_reset, params)

    def body(state, k_env):
        link = E.cost_link(state.link_t)
        sol = slot_solution(state.queues, link, params, **dict(solver_kw))
        _, nxt, _, _, _ = E.step(k_env, state, sol.partition, params)
        return nxt, (state.queues, link, sol)

    _, out = jax.lax.scan(body, state, env_keys)
    return out


_rollout = jax.jit(_oracle_rollout, static_argnums=(1, 3))


def oracle_gaps(params: E.EnvParams, n_slots: int, seed: int = 0, target: float = 1e-3,
                check: bool = True, progress: Callable[[int, int], None] | None = None,
                solver_kw: dict | None = None, check_kw: dict | None = None) -> list[dict]:
    """One row per slot of the oracle's run (``FIELDS``): the backlog at its start, whether a
    partition fit, its objective, the decision's lower bound and gap (``inf`` where nothing
    fit), whether it is exact; with ``check``, for each feasible decision whose gap exceeds
    ``target``, the checked gap (``lyapunov.oracle_check.check_slot``, with ``check_kw``) and
    whether it is at most ``target``; ``certified``: the decision's gap, or the checked one, is
    at most ``target``. ``solver_kw``: of the oracle (``lyapunov.policies.oracle``).
    ``check_s``: the check's seconds (the first pays its compiles). ``progress(done, total)``
    after each check."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    queues, link, sols = _rollout(params, int(n_slots), jax.random.PRNGKey(seed),
                                  tuple(sorted((solver_kw or {}).items())))
    queues, link, sols = jax.tree.map(np.asarray, (queues, link, sols))  # one transfer
    rows = []
    for t in range(int(n_slots)):
        ok = bool(sols.feasible[t])
        gap = float(sols.gap[t]) if ok else float("inf")
        rows.append(dict(slot=t, backlog=float(queues.q[t]), feasible=ok,
                         objective=float(sols.objective[t]),
                         lower_bound=float(sols.lower_bound[t]), gap=gap,
                         exact=bool(sols.exact[t]), checked=False, checked_gap=float("nan"),
                         certified=ok and gap <= target, check_s=0.0))
    todo = [r for r in rows if check and r["feasible"] and not r["certified"]]
    for i, r in enumerate(todo):
        t = r["slot"]
        at = jax.tree.map(lambda x, t=t: x[t], (queues, link, sols))
        t0 = time.perf_counter()
        chk = check_slot(*at[:2], params.spec, params.slot, at[2], tp=params.tp, target=target,
                         precisions=params.precisions, **(check_kw or {}))
        r.update(checked=True, checked_gap=float(chk.gap), certified=bool(chk.certified),
                 check_s=time.perf_counter() - t0)
        if progress is not None:
            progress(i + 1, len(todo))
    return rows


def summary(rows: list[dict], target: float = 1e-3) -> dict:
    """Counts over the rows of :func:`oracle_gaps`: decisions, feasible ones, those whose own
    gap is within ``target``, those checked, those certified (own or checked), the largest
    own and checked gaps and the slowest check (s)."""
    feas = [r for r in rows if r["feasible"]]
    checked = [r for r in feas if r["checked"]]
    return dict(
        decisions=len(rows), feasible=len(feas),
        own_within=sum(r["gap"] <= target for r in feas), checked=len(checked),
        certified=sum(r["certified"] for r in feas),
        own_gap_max=max((r["gap"] for r in feas), default=float("nan")),
        checked_gap_max=max((r["checked_gap"] for r in checked), default=float("nan")),
        check_s_max=max((r["check_s"] for r in checked), default=0.0))
