"""The slot problem as a convex program (cvxpy), for comparison with the exact oracle.

For a fixed latency weight ``lam`` (the slot objective is concave in latency; a fixed ``lam``
is its tangent, see ``lyapunov.oracle``) the program minimizes ``lam * latency + c`` where
``c = w_E e + w_A a + w_C cost`` (weights ``V w_i + Z_i``) over

- **the block assignment**, relaxed: the cost model's critical-path terms (max of the two
  sides' head times, crossings that appear only when the heads of a layer are split) are not
  convex in the per-layer fractions of heads and FFN parts on each side, so the assignment is
  written in its *extended* (path) form: a flow ``x[q, s0, l, s_in, (k, f)] in [0, 1]`` over
  the layered graph of the exact DP (activation precision ``q``, embedding side ``s0``, layer
  ``l``, residual side ``s_in``, option ``k`` heads on the edge and FFN option ``f``; with
  ``tp=True`` the sides include both and the options every tensor-parallel share, as in
  ``costmodel.dp``) with flow conservation and one unit of flow; the per-layer head fractions
  ``sum x k / H``, FFN mode fractions and residual-side fractions are its marginals
  (``CvxResult.head_frac`` ...). Without the memory rows this polytope is integral (a
  shortest-path LP), so the relaxation gap comes from the edge- and cloud-memory budget rows
  ``sum x mem <= budget`` and from DVFS;
- **the edge DVFS frequency** ``f in [f_min, f_max]``, continuous: the edge compute of the
  partition, ``B`` seconds at ``f_max`` (``c_cycles = B f_max``), takes ``T = B f_max / f``
  and its dynamic energy is ``kappa f^2 c_cycles = p_dyn B^3 / T^2`` (``kappa = p_dyn /
  f_max^3``, ``p_dyn = p_active - p_idle``), while the device draws ``p_idle`` throughout.
  The slow-down is charged fully to the latency (exact when the edge compute is on the critical
  path, an upper bound otherwise), so relative to ``f_max`` the objective changes by
  ``(lam + w_E p_idle)(T - B) + w_E p_dyn (B^3/T^2 - B)``; ``B^3/T^2 <= E`` is the power cone
  ``B <= geo_mean(E, T, T)``, and ``B <= T <= B f_max / f_min`` are linear.

DPP: the per-option cost vector ``lam * latency + c - (lam + w_E p_idle + w_E p_dyn) * busy``
is combined in NumPy before it enters as one Parameter, and every other Parameter multiplies
a variable at most once, so re-solves reuse the compiled problem (``problem.is_dpp()``).
Solvers: HiGHS for the LP relaxations, CLARABEL (tight tolerances) for the cone form; HiGHS
(MILP, time limit) for the boolean version, which fixes ``f = f_max`` and must equal the exact
memory-constrained minimum of ``lam * l + c``.

Two forms of the DVFS part: ``cone`` (the power cone above) and ``eliminated``: the DVFS terms
are 1-homogeneous in ``(B, T)``, so the optimal slow-down ``T / B`` is the same for every
assignment (``SlotProgram._slowdown``) and the program reduces to an LP with the per-option
cost ``lam l + c + phi busy``; the two agree (tested), and ``auto`` uses the cone only for
small programs (cvxpy's conic reformulation reshapes the parametrized data to variables x
parameters, which does not fit in memory at LLaMA sizes).

Rounding: the best path (of the DVFS-adjusted ``lam l + c + phi busy``) of the exact DP
restricted to the relaxation's support (options with flow > 1e-6), with a multiplier on
memory when that path does not fit, then over all options the same way. The environment has
no DVFS, so the cvx *policy* uses the program without it (``DVFS(1.0)``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sps

from costmodel import dp
from costmodel.costs import endpoint_terms
from costmodel.link import LinkState
from costmodel.partition import CLOUD, EDGE, Partition, edge_only, make_partition
from costmodel.spec import CostSpec
from lyapunov.queues import Queues

# CLARABEL's tolerances for the cone form (``SlotProgram._solve_relaxed``).
CONE_TOL = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
# HiGHS's options for every solve: quiet and never warm-started (cvxpy's default is to start
# from the previous instance's solution: from there HiGHS had called a MILP "optimal" at 10^6
# times its value, a sequence of instances hypothesis found; cold, the right value).
HIGHS_KW = {"output_flag": False, "warm_start": False}


@dataclasses.dataclass(frozen=True)
class DVFS:
    """Edge DVFS range. f_min_ratio: f_min / f_max in (0, 1] (1 disables DVFS); assumed 0.5
    (Cortex-A76 class cores scale about 1.2-2.4 GHz)."""

    f_min_ratio: float = 0.5

    def __post_init__(self):
        if not 0 < self.f_min_ratio <= 1:
            raise ValueError(f"DVFS.f_min_ratio must be in (0, 1], got {self.f_min_ratio!r}")


@functools.partial(jax.jit, static_argnames=("precisions", "tp"))
def _option_arrays(link: LinkState, spec: CostSpec, cw: dp.Weights, precisions: tuple,
                   tp: bool = False):
    """Per-option latency, edge busy time, c, edge and cloud memory: [nq, L, S, H+1, F] (the
    option table of ``costmodel.dp``) and endpoint arrays [nq, 2, S] (s0, s_last); plus the
    privacy mask of the options."""
    n_s = dp.n_sides(tp)

    def per_q(q):
        tt = dp.option_terms(q, link, spec, tp)
        ends = endpoint_terms(jnp.arange(2)[:, None], jnp.arange(n_s)[None, :], link, spec)
        c_opt = dp.scalarize(tt, q, spec, cw)
        c_end = dp.scalarize(ends, q, spec, cw)
        return (tt.latency, tt.busy, c_opt, tt.mem, ends.latency, ends.busy, c_end, ends.mem,
                tt.mem_cloud, ends.mem_cloud)

    return jax.vmap(per_q)(jnp.asarray(precisions)), dp.option_allowed(spec, tp)


@dataclasses.dataclass
class CvxResult:
    """One cvxpy solve of ``min lam * latency + c`` (values in the objective's units).

    partition: the rounded partition (memory-feasible if any is); None if none is feasible.
    relaxed_value: optimum of the relaxation (with DVFS), a lower bound on the exact
      memory-constrained minimum; for the boolean version the MILP optimum.
    rounded_value: lam * latency + c of the rounded partition at f_max.
    rounded_dvfs_value: the same with its optimal edge frequency.
    freq_ratio: f / f_max of the relaxation (1 without DVFS); rounded_freq_ratio: of the
      rounded partition.
    head_frac, ffn_frac, side_cloud: marginals of the relaxed flow: float [L] fraction of the
      heads on the edge, float [L, 3] FFN side fractions, float [L] residual on the cloud.
    solve_time_s: solver wall time (cvxpy's solve call, compiled problem reused).
    status: cvxpy status string.
    """

    partition: Partition | None
    relaxed_value: float
    rounded_value: float
    rounded_dvfs_value: float
    freq_ratio: float
    rounded_freq_ratio: float
    head_frac: np.ndarray
    ffn_frac: np.ndarray
    side_cloud: np.ndarray
    solve_time_s: float
    status: str


class SlotProgram:
    """The compiled cvxpy problem of one cost spec (its sizes, privacy floor, precisions and
    per-option memory and edge compute time, which do not depend on the link).

    ``solve(link, spec, cw, lam)`` sets the Parameters (cost vector, option mask, memory
    budget, DVFS coefficients) and re-solves; build once per scenario.
    ``boolean=True`` builds the MILP (integral flows, f = f_max) solved with HiGHS.
    """

    def __init__(self, spec: CostSpec, precisions=(0, 1, 2), dvfs: DVFS = DVFS(),
                 boolean: bool = False, time_limit_s: float = 30.0, dvfs_form: str = "auto",
                 solver: str | None = None, tp: bool = False):
        if dvfs_form not in ("auto", "cone", "eliminated"):
            raise ValueError(f"dvfs_form must be 'auto', 'cone' or 'eliminated', got "
                             f"{dvfs_form!r}")
        self.precisions = tuple(int(q) for q in precisions)
        self.n_l, self.n_h = spec.n_layers, spec.n_heads
        self.privacy_layers = int(spec.privacy_layers)
        self.dvfs, self.boolean, self.time_limit_s = dvfs, boolean, time_limit_s
        self.tp = bool(tp)
        self.n_s, self.n_f = dp.n_sides(tp), dp.n_ffn_options(tp)
        n_s = self.n_s
        nq, n_l, n_o = len(self.precisions), self.n_l, self.n_f * (self.n_h + 1)
        self.shape_x = (nq, 2, n_l, n_s, n_o)
        self.shape_y = (nq, 2, n_s)
        n_x, n_y = int(np.prod(self.shape_x)), int(np.prod(self.shape_y))
        ix = np.arange(n_x).reshape(self.shape_x)
        iy = np.arange(n_y).reshape(self.shape_y)
        self._f_opt, self._j_opt, out_f = dp.option_grid(tp)
        out = np.tile(out_f, self.n_h + 1)
        rows, cols, vals, rhs = [], [], [], []

        def add(entries, b):
            r = len(rhs)
            for c, v in entries:
                rows.append(r)
                cols.append(c)
                vals.append(v)
            rhs.append(b)

        add([(int(ix[qi, s0, 0, s0, j]), 1.0) for qi in range(nq) for s0 in range(2)
             for j in range(n_o)], 1.0)
        for qi in range(nq):
            for s0 in range(2):
                for layer in range(1, n_l + 1):
                    for s_ in range(n_s):
                        inflow = [(int(ix[qi, s0, layer - 1, si, j]), -1.0) for si in range(n_s)
                                  for j in range(n_o) if out[j] == s_]
                        here = ([(int(ix[qi, s0, layer, s_, j]), 1.0) for j in range(n_o)]
                                if layer < n_l else [(n_x + int(iy[qi, s0, s_]), 1.0)])
                        add(here + inflow, 0.0)
        a_eq = sps.csr_matrix((vals, (rows, cols)), shape=(len(rhs), n_x + n_y))
        start = np.zeros(self.shape_x, bool)  # layer 0 must start on the embedding's side
        for s0 in range(2):
            for s_ in range(n_s):
                start[:, s0, 0, s_, :] = s_ != s0
        self._structural_zero = start.reshape(-1)
        self._out = out

        # Memory and edge busy time of an option depend on the spec only (not on the link):
        # they are constants of the program, so no Parameter multiplies the constraint matrix
        # (cvxpy's parametrized matrices scale with rows x columns).
        nominal = LinkState(*(jnp.float32(v) for v in (10.0, 10.0, 10.0, 1.0)))
        arr, _ = self._arrays(nominal, spec, dp.Weights())
        self._mem, self._busy, self._mem_c = arr["mem"], arr["busy"], arr["mem_c"]
        self.z = cp.Variable(n_x + n_y, boolean=boolean, name="flow")
        self.cost = cp.Parameter(n_x + n_y, name="cost")
        self.ub = cp.Parameter(n_x + n_y, nonneg=True, name="ub")
        self.budget = cp.Parameter(nonneg=True, name="budget_gb")
        self.budget_c = cp.Parameter(nonneg=True, name="cloud_budget_gb")
        cons = [a_eq @ self.z == np.asarray(rhs), self.z >= 0, self.z <= self.ub,
                self._mem @ self.z <= self.budget, self._mem_c @ self.z <= self.budget_c]
        obj = self.cost @ self.z
        self.use_dvfs = not boolean and dvfs.f_min_ratio < 1
        n_var = n_x + n_y
        if dvfs_form == "auto":  # cvxpy reshapes the cone program's data to n_var x n_params
            dvfs_form = "cone" if n_var * (2 * n_var) <= 2e7 else "eliminated"
        self.use_cone = self.use_dvfs and dvfs_form == "cone"
        # HiGHS for the LP forms (a simplex vertex: on a nearly infeasible instance CLARABEL's
        # interior point had reported "optimal" 3.8 normalized units below the LP's true value,
        # and it was 4x slower at LLaMA sizes: 0.84 against 0.21 s), CLARABEL for the cone.
        self.solver = cp.HIGHS if boolean else (
            solver or (cp.CLARABEL if self.use_cone else cp.HIGHS))
        if self.use_cone:
            self.t_coef = cp.Parameter(nonneg=True, name="t_coef")
            self.dyn_coef = cp.Parameter(nonneg=True, name="dyn_coef")
            self.T = cp.Variable(nonneg=True, name="edge_time")
            self.E = cp.Variable(nonneg=True, name="dyn_energy_s")
            b = self._busy @ self.z
            cons += [self.T >= b, self.T <= b / dvfs.f_min_ratio,
                     b <= cp.geo_mean(cp.hstack([self.E, self.T, self.T]))]
            obj = obj + self.t_coef * self.T + self.dyn_coef * self.E
        self.problem = cp.Problem(cp.Minimize(obj), cons)

    # ----------------------------------------------------------------------------------------
    def _arrays(self, link: LinkState, spec: CostSpec, cw: dp.Weights):
        (lat, busy, c, mem, e_lat, e_busy, e_c, e_mem, mem_c, e_mem_c), privacy = _option_arrays(
            link, spec, cw, self.precisions, self.tp)
        nq, n_l, n_s = len(self.precisions), self.n_l, self.n_s
        n_o = self.n_f * (self.n_h + 1)

        def opt(a):  # [nq, L, S, H+1, F] -> [nq, s0, L, S, n_o]
            a = np.asarray(a, np.float64).reshape(nq, 1, n_l, n_s, n_o)
            return np.broadcast_to(a, self.shape_x).reshape(-1)

        def end(a):
            return np.asarray(a, np.float64).reshape(-1)

        ok_x = np.broadcast_to(np.asarray(privacy).reshape(1, 1, n_l, n_s, n_o),
                               self.shape_x).reshape(-1) & ~self._structural_zero
        ok_y = np.ones(self.shape_y, bool)
        if self.privacy_layers:
            ok_y[:, CLOUD, :] = False
        arr = {
            "lat": np.concatenate([opt(lat), end(e_lat)]),
            "busy": np.concatenate([opt(busy), end(e_busy)]),
            "c": np.concatenate([opt(c), end(e_c)]),
            "mem": np.concatenate([opt(mem), end(e_mem)]) / 1e9,
            "mem_c": np.concatenate([opt(mem_c), end(e_mem_c)]) / 1e9,
        }
        ok = np.concatenate([ok_x, ok_y.reshape(-1)])
        ok &= np.isfinite(arr["lat"]) & (arr["c"] < dp.BIG)
        for key in arr:
            arr[key] = np.where(ok, arr[key], 0.0)
        return arr, ok

    def solve(self, link: LinkState, spec: CostSpec, cw: dp.Weights, lam: float) -> CvxResult:
        """Minimize ``lam * latency + c`` (``cw``: the weights of c, latency weight ignored).

        Presolve: an option whose memory alone exceeds the budget is fixed at 0 (exact, since
        memory is non-negative). If another solver than HiGHS fails or reports an inaccurate
        solution on an LP form, it is re-solved with HiGHS (``status`` then ends in
        ``+highs``); the cone form falls back to the eliminated one."""
        arr, ok = self._arrays(link, spec, cw)
        ok = ok & (arr["mem"] <= float(spec.edge.mem_budget) / 1e9 * (1 + 1e-9))
        ok = ok & (arr["mem_c"] <= float(spec.cloud.mem_budget) / 1e9 * (1 + 1e-9))
        lam = float(lam)
        w_e = float(cw.energy)
        p_idle, p_act = float(spec.edge.p_idle), float(spec.edge.p_active)
        p_dyn = max(p_act - p_idle, 0.0)
        combined = lam * arr["lat"] + arr["c"]
        t_coef, dyn_coef = lam + w_e * p_idle, w_e * p_dyn
        rho, phi = self._slowdown(t_coef, dyn_coef)
        if self.use_cone:
            combined = combined - (t_coef + dyn_coef) * arr["busy"]
        elif self.use_dvfs:
            combined = combined + phi * arr["busy"]
        # Normalize by the unconstrained shortest path's value, so the optimum is O(1).
        n_x = int(np.prod(self.shape_x))
        obj = np.where(ok, lam * arr["lat"] + arr["c"], np.inf)
        ref, _ = self._viterbi(obj[:n_x].reshape(self.shape_x), obj[n_x:].reshape(self.shape_y))
        scale = abs(ref) if np.isfinite(ref) and abs(ref) > 1e-12 else 1.0
        self.cost.value = combined / scale
        self.ub.value = ok.astype(np.float64)
        self.budget.value = float(spec.edge.mem_budget) / 1e9
        self.budget_c.value = float(spec.cloud.mem_budget) / 1e9
        if self.use_cone:
            self.t_coef.value = t_coef / scale
            self.dyn_coef.value = dyn_coef / scale
        t0 = time.perf_counter()
        if self.boolean:
            self.problem.solve(solver=cp.HIGHS, time_limit=float(self.time_limit_s),
                               mip_rel_gap=0.0, **HIGHS_KW)
        else:
            status = self._solve_relaxed()
            if self.use_cone and status != cp.OPTIMAL:
                return self._fallback_eliminated(link, spec, cw, lam)
        elapsed = time.perf_counter() - t0
        status = self.problem.status if self.boolean else status
        if self.z.value is None:
            n_l = self.n_l
            return CvxResult(None, np.inf, np.inf, np.inf, 1.0, 1.0, np.zeros(n_l),
                             np.zeros((n_l, 3)), np.zeros(n_l), elapsed, status)
        zval = np.clip(np.asarray(self.z.value), 0.0, None)
        relaxed = float(self.problem.value) * scale
        freq = 1.0
        if self.use_cone and self.T.value is not None and float(self.T.value) > 1e-12:
            freq = float(np.clip((arr["busy"] @ zval) / float(self.T.value),
                                 self.dvfs.f_min_ratio, 1.0))
        elif self.use_dvfs and arr["busy"] @ zval > 1e-12:
            freq = 1.0 / rho
        base = lam * arr["lat"] + arr["c"]
        path = self._round(zval, arr, ok, base + phi * arr["busy"])
        head_frac, ffn_frac, side = self._marginals(zval)
        if path is None:
            return CvxResult(None, relaxed, np.inf, np.inf, freq, 1.0, head_frac, ffn_frac,
                             side, elapsed, status)
        qi, s0, heads, opts = path
        part = make_partition(heads, self._f_opt[opts], self.precisions[qi], s0 == EDGE,
                              self._j_opt[opts])
        value = self._path_value(base, path)
        busy = self._path_value(arr["busy"], path)
        return CvxResult(part, relaxed, value, value + phi * busy, freq,
                         1.0 / rho if busy > 0 else 1.0, head_frac, ffn_frac, side, elapsed,
                         status)

    def _solve_relaxed(self) -> str:
        # The cone form subtracts (t + d) B from the option costs and adds t T + d E back, terms
        # far larger than the normalized optimum (O(1)) that cancel where the slow-down is 1:
        # at CLARABEL's default tolerances (1e-8) its optimum was 5e-4 below the eliminated
        # form's (an instance hypothesis found, tests/lyapunov/test_cvx.py), at 1e-10 6e-6.
        kw = {cp.CLARABEL: CONE_TOL if self.use_cone else {}, cp.HIGHS: HIGHS_KW}.get(
            self.solver, {})
        try:
            with warnings.catch_warnings():  # an inaccurate solution is handled below
                warnings.simplefilter("ignore", UserWarning)
                self.problem.solve(solver=self.solver, **kw)
            status = self.problem.status
        except cp.error.SolverError:
            status = "solver_error"
        if status != cp.OPTIMAL and not self.use_cone and self.solver != cp.HIGHS:
            self.problem.solve(solver=cp.HIGHS, **HIGHS_KW)
            status = f"{self.problem.status}+highs"
        return status

    def _fallback_eliminated(self, link, spec, cw, lam) -> CvxResult:
        """The cone form failed numerically: solve the equivalent eliminated form (an LP)."""
        if getattr(self, "_eliminated", None) is None:
            self._eliminated = SlotProgram(spec, self.precisions, self.dvfs,
                                           dvfs_form="eliminated",
                                           tp=self.tp)
        res = self._eliminated.solve(link, spec, cw, lam)
        res.status = f"{res.status}+eliminated"
        return res

    # ----------------------------------------------------------------------------------------
    def _marginals(self, zval):
        """Per layer: the fraction of heads on the edge, the FFN mode fractions [L, 4] (edge,
        cloud, split, tp: the tp shares summed) and the fraction of flow whose residual leaves
        the layer on the cloud only."""
        n_x = int(np.prod(self.shape_x))
        x = zval[:n_x].reshape(self.shape_x).sum(axis=(0, 1))  # [L, S, n_o]
        x = x.sum(axis=1).reshape(self.n_l, self.n_h + 1, self.n_f)  # [L, H+1, F]
        head_frac = (x.sum(-1) * np.arange(self.n_h + 1)).sum(-1) / self.n_h
        per_opt = x.sum(1)  # [L, F]
        ffn_frac = np.zeros((self.n_l, 4))
        for o, f in enumerate(self._f_opt):
            ffn_frac[:, f] += per_opt[:, o]
        side_cloud = ffn_frac[:, 1] + ffn_frac[:, 2]
        return head_frac, (ffn_frac if self.tp else ffn_frac[:, :3]), side_cloud

    def _viterbi(self, cost_x, cost_y):
        """Min-cost path of the layered graph; cost_x [nq, 2, L, S, n_o], cost_y [nq, 2, S]
        (inf = forbidden). Returns (value, (qi, s0, k [L], FFN option [L])) or (inf, None)."""
        nq, _, n_l, n_s, n_o = self.shape_x
        out = self._out
        v = np.full((nq, 2, n_s), np.inf)
        for s0 in range(2):
            v[:, s0, s0] = 0.0
        back = np.zeros((n_l, nq, 2, n_s), np.int64)  # argmin (s_in * n_o + j) per s0, s_out
        for layer in range(n_l):
            cand = v[:, :, :, None] + cost_x[:, :, layer]  # [nq, s0, s_in, n_o]
            new = np.full((nq, 2, n_s), np.inf)
            for s_out in range(n_s):
                c = np.where(out[None, None, None, :] == s_out, cand, np.inf).reshape(nq, 2, -1)
                back[layer, :, :, s_out] = c.argmin(-1)
                new[:, :, s_out] = c.min(-1)
            v = new
        total = v + cost_y
        if not np.isfinite(total).any():
            return np.inf, None
        qi, s0, s_last = np.unravel_index(int(np.argmin(total)), total.shape)
        heads, ffn = np.zeros(n_l, np.int64), np.zeros(n_l, np.int64)
        s_out = s_last
        for layer in range(n_l - 1, -1, -1):
            idx = back[layer, qi, s0, s_out]
            s_in, j = divmod(int(idx), n_o)
            heads[layer], ffn[layer] = divmod(j, self.n_f)
            s_out = s_in
        return float(total[qi, s0, s_last]), (qi, s0, heads, ffn)

    def _path_value(self, a, path):
        """Sum of a per-option array ``a`` [n_x + n_y] along a path."""
        qi, s0, heads, ffn = path
        n_x = int(np.prod(self.shape_x))
        ax = a[:n_x].reshape(self.shape_x)
        total, s_in = 0.0, s0
        for layer in range(self.n_l):
            j = heads[layer] * self.n_f + ffn[layer]
            total += ax[qi, s0, layer, s_in, j]
            s_in = self._out[j]
        return total + a[n_x:].reshape(self.shape_y)[qi, s0, s_in]

    def _round(self, zval, arr, ok, obj):
        """Path of least ``obj`` within the memory budget: on the relaxation's support first,
        then on all options; a multiplier on memory when the plain best path does not fit."""
        n_x = int(np.prod(self.shape_x))
        mem, budget = arr["mem"], float(self.budget.value)
        mem_c, budget_c = arr["mem_c"], float(self.budget_c.value)
        scale = max(float(np.abs(obj[ok]).max()) if ok.any() else 1.0, 1e-12)
        for support in (zval > 1e-6, np.ones_like(ok)):
            base = np.where(ok & support, obj, np.inf)
            for nu in [0.0, *(np.geomspace(1e-6, 1e6, 49) * scale)]:
                c = base + nu * mem
                _, path = self._viterbi(c[:n_x].reshape(self.shape_x),
                                        c[n_x:].reshape(self.shape_y))
                if path is None:
                    break
                if (self._path_value(mem, path) <= budget * (1 + 1e-9)
                        and self._path_value(mem_c, path) <= budget_c * (1 + 1e-9)):
                    return path
        return None

    def _slowdown(self, t_coef, dyn_coef):
        """Optimal edge slow-down rho = T / B = f_max / f and the DVFS term's coefficient phi.

        ``t (T - B) + d (B^3 / T^2 - B)`` is 1-homogeneous in (B, T) (a perspective), so for
        every partition the best ``T`` is ``rho B`` with ``rho = clip((2 d / t)^(1/3), 1,
        f_max / f_min)``, and the minimum is ``phi B`` with ``phi = t (rho - 1) + d (rho^-2 -
        1) <= 0``: the frequency does not depend on the assignment, and eliminating it leaves
        a linear cost on the edge compute time (the ``eliminated`` form).
        """
        if not self.use_dvfs or dyn_coef <= 0:
            return 1.0, 0.0
        rho = (2.0 * dyn_coef / max(t_coef, 1e-300)) ** (1.0 / 3.0)
        rho = float(np.clip(rho, 1.0, 1.0 / self.dvfs.f_min_ratio))
        return rho, t_coef * (rho - 1.0) + dyn_coef * (rho ** -2 - 1.0)



# --------------------------------------------------------------------------------------------
# Slot-level use: the concave slot objective by tangent (majorize-minimize) iterations


@dataclasses.dataclass
class CvxSlotResult:
    """cvx solution of the slot problem: the best rounded partition over the MM iterations,
    its lambda and the last relaxation; objective: its true slot DPP (A = 0, f_max)."""

    partition: Partition | None
    objective: float
    lam: float
    relaxed: CvxResult
    solve_time_s: float
    n_solves: int


def slot_weights(queues: Queues, sp) -> tuple[dp.Weights, float, float]:
    """(c weights, a, b) of the slot objective g(l) + c with g(l) = a l - b / l."""
    from lyapunov.oracle import c_weights

    cw = c_weights(queues, sp)
    a = float(sp.V) * float(sp.penalty.latency)
    b = max(float(queues.q), 0.0) * float(sp.tau)
    return cw, a, b


def solve_slot_cvx(program: SlotProgram, queues: Queues, link: LinkState, spec: CostSpec, sp,
                   iters: int = 3, lat0: float | None = None) -> CvxSlotResult:
    """Minimize the slot DPP by MM on the concave ``g``: solve at ``lam_k = g'(l_k)``, the
    tangent's slope at the last rounded latency (``l_0 = lat0`` or ``tau``), ``iters`` times;
    return the rounded partition with the best true objective."""
    from costmodel.costs import request_costs
    from lyapunov.oracle import slot_dpp

    cw, a, b = slot_weights(queues, sp)
    lat = float(lat0) if lat0 is not None else float(sp.tau)
    best = None
    total_t = 0.0
    res = None
    for _ in range(iters):
        lam = a + b / max(lat, 1e-9) ** 2
        res = program.solve(link, spec, cw, lam)
        total_t += res.solve_time_s
        if res.partition is None:
            break
        costs = request_costs(res.partition, link, spec)
        j = float(slot_dpp(costs, queues, 0.0, sp))
        if best is None or j < best[0]:
            best = (j, res.partition, lam)
        new_lat = float(costs.latency_s)
        if abs(new_lat - lat) <= 1e-6 * lat:
            break
        lat = new_lat
    if best is None:
        return CvxSlotResult(None, np.inf, np.nan, res, total_t, iters)
    return CvxSlotResult(best[1], best[0], best[2], res, total_t, iters)


def fallback_partition(spec: CostSpec) -> Partition:
    """What a cvx policy plays when nothing is feasible (the env then charges the penalty)."""
    return edge_only(spec.n_layers, spec.n_heads)


def compare_with_oracle(queues: Queues, link: LinkState, spec: CostSpec, sp,
                        precisions=(0, 1, 2), dvfs: DVFS = DVFS(), repeats: int = 3,
                        program: SlotProgram | None = None,
                        dvfs_program: SlotProgram | None = None, tp: bool = False) -> dict:
    """Relaxation gap and solve time of the cvxpy formulation against the exact oracle.

    At the oracle's lambda, with f = f_max (the environment has no DVFS):
    ``relaxation_gap = (oracle lam-objective - relaxed optimum) / |oracle lam-objective|``
    (>= 0 up to solver tolerance: it is a relaxation) and ``rounding_gap`` (rounded - oracle,
    same scale; >= 0 where the oracle is exact). With DVFS: the relaxed optimum and its
    frequency (``dvfs_*``). On the slot objective: ``slot_gap = (cvx MM slot DPP - oracle slot
    DPP) / |oracle|``. Times are seconds per solve: the oracle jitted and warmed up, cvxpy's
    solve call with the compiled problem reused (the first solve compiles it).
    """
    from lyapunov.oracle import solve_slot

    precisions = tuple(int(q) for q in precisions)
    program = program or SlotProgram(spec, precisions, DVFS(1.0), tp=tp)
    solve = jax.jit(solve_slot, static_argnames=("precisions", "tp"))
    sol = solve(queues, link, spec, sp, precisions=precisions, tp=tp)
    jax.block_until_ready(sol)
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(solve(queues, link, spec, sp, precisions=precisions, tp=tp))
    oracle_t = (time.perf_counter() - t0) / repeats
    cw, _, _ = slot_weights(queues, sp)
    lam = float(sol.lambda_)
    oracle_lam_obj = lam * float(sol.latency_s) + float(sol.c)
    program.solve(link, spec, cw, lam)  # the first solve compiles the parametrized problem
    times, res = [], None
    for _ in range(repeats):
        res = program.solve(link, spec, cw, lam)
        times.append(res.solve_time_s)
    out = {}
    if dvfs.f_min_ratio < 1:
        dvfs_program = dvfs_program or SlotProgram(spec, precisions, dvfs, tp=tp)
        rd = dvfs_program.solve(link, spec, cw, lam)
        out = {"dvfs_relaxed_lambda_objective": rd.relaxed_value,
               "dvfs_freq_ratio": rd.freq_ratio,
               "dvfs_rounded_lambda_objective": rd.rounded_dvfs_value}
    mm = solve_slot_cvx(program, queues, link, spec, sp)
    denom = max(abs(oracle_lam_obj), 1e-12)
    o_obj = float(sol.objective)
    return {
        "oracle_objective": o_obj,
        "oracle_exact": bool(sol.exact),
        "oracle_time_s": oracle_t,
        "lambda": lam,
        "oracle_lambda_objective": oracle_lam_obj,
        "relaxed_lambda_objective": res.relaxed_value,
        "rounded_lambda_objective": res.rounded_value,
        "relaxation_gap": (oracle_lam_obj - res.relaxed_value) / denom,
        "rounding_gap": (res.rounded_value - oracle_lam_obj) / denom,
        "cvx_time_s": float(np.median(times)),
        "cvx_slot_objective": mm.objective,
        "slot_gap": (mm.objective - o_obj) / max(abs(o_obj), 1e-12),
        "cvx_slot_time_s": mm.solve_time_s,
        **out,
    }
