"""`splitwise calibrate --device local`: fit this machine's edge profile to SmolLM2's blocks and
check it on held-out end-to-end requests. Design: ``docs/design.md §2.1``.

1. Measure (``measure_blocks``): every block type of the real model at several token counts,
   with ``torch.set_num_threads(threads)``, warm-up rounds and the median over repeats: head
   groups ``attn_heads:<k>`` prefill-style over T tokens and decode-style (one token over a
   K/V cache of ``context`` tokens), ``ffn``, ``ffn_w1`` (gate/up), ``ffn_w2`` (down) and
   ``lm_head`` (one position, as the runtime's ``lm_head_last``). The blocks run through the
   runtime's torch executor, in rounds that visit the layers in turn and alternate the block
   types as a pass does. (``bridge.timing.time_blocks`` times one layer's block over and over:
   its 18 MB of fp32 weights then stay in a server's L3, which a real pass streaming 30
   layers never sees; and prefill-style only.) The rows go to a CSV in the format of
   ``costmodel.calibration`` (``block,side,tokens,precision,seconds,context``).
2. Fit (``costmodel.calibration.fit_profile``) the roofline factors (eff_compute, eff_memory,
   overhead_us) of a ``DeviceProfile`` named ``local`` with role ``edge``, fp32 weights and
   K/V cache, whose peak FLOP/s is derived from the CPU (cores x clock x FMA width) and whose
   memory bandwidth is measured (a large NumPy dot product); the model card is
   ``smollm2-135m``.
3. Validate on held-out requests (``validate``): real end-to-end prefill + decode of the model
   through the split runtime's request program (``bridge.blocks.run_local`` with the torch
   executor) on edge-only partitions at (prompt, new tokens) workloads that the fit never saw,
   against ``costmodel.costs.request_costs`` under the fitted profile; the score is the mean
   absolute percentage error (MAPE) of the end-to-end latency (goal: <= 15 %). Split
   partitions run with both sides on this machine are compared on the edge's compute time
   alone (the time inside the edge executor's blocks vs the predicted ``edge_compute_s``).

A request of S prompt tokens and T new tokens is one prefill pass and T decode passes of the
cost model, i.e. ``run_local(..., n_out=T + 1)``.

torch is imported inside the functions that run the model, so that the command line can
build its parser (``add_args``) without torch.

4. Exchange overhead (``exchange_cost``): one decode-step STEP / RESULT exchange of a
   576-wide activation on loopback through the runtime's wire format; half its median round
   trip is ``msg_overhead_us`` of both profiles.

Writes ``OUT`` with two profiles (``{"profiles": [local, local-cloud]}``, loadable by
``costmodel.profiles.load_profiles``; ``splitwise train --profile-file OUT --device local
--cloud local-cloud`` trains for this machine): ``local`` (role edge) and ``local-cloud``
(role cloud: the same roofline, as both processes share this machine, RTT 0 on loopback,
no prices),
``OUT.csv`` (the measurements, stem + ``.csv``) and ``OUT.validation.json`` (fit report and
held-out results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bridge.blocks import Executor, RunPartition, TorchLlamaExecutor, run_local
from costmodel.calibration import COLUMNS, OPTIONAL, FitReport, fit_profile
from costmodel.cards import ModelCard, get_card
from costmodel.profiles import DeviceProfile

if TYPE_CHECKING:
    from bridge.model import LlamaModel

CSV_COLUMNS = (*COLUMNS, *OPTIONAL)
MAPE_GOAL = 15.0
SHARED = 1.3  # wall / CPU time of the contention probe above which the machine counts as shared
SHARED_PREEMPT_RATE = 50.0  # involuntary context switches per second of a run, idem
MIN_ROWS = 6  # block rows the fit needs at least


class BusyMachine(RuntimeError):
    """Other jobs preempted too many block calls for a fit."""
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """What to measure.

    token_counts: prefill-style token counts T of the block rows.
    head_counts: head-group sizes k of the attention rows (clipped to the model's heads).
    contexts: K/V lengths of the decode-style attention rows (one token).
    warmup, repeats: untimed rounds, then timed rounds (median) per group of rows.
    threads: torch intra-op threads.
    workloads: held-out (prompt tokens S, new tokens T) of the end-to-end edge-only requests.
    split_workload: (S, T) of the split partitions run with both sides here (None: skip).
    e2e_repeats: runs per held-out request (median).
    clock: "wall" (time.perf_counter, the latency) or "cpu" (time.process_time: CPU seconds
      of this process, all threads; on a machine shared with other jobs it measures the work
      itself, which the wall clock mixes with the waiting for a core. Equal to the latency of
      an idle machine only with one thread).
    """

    token_counts: tuple[int, ...] = (1, 4, 16, 48, 128)
    head_counts: tuple[int, ...] = (1, 3, 5, 9)
    contexts: tuple[int, ...] = (24, 96, 192)
    warmup: int = 3
    repeats: int = 15
    threads: int = 2
    workloads: tuple[tuple[int, int], ...] = ((20, 12), (72, 6), (40, 24), (110, 4))
    split_workload: tuple[int, int] | None = (32, 8)
    e2e_repeats: int = 3
    clock: str = "wall"


QUICK = CalibrationConfig(token_counts=(1, 16), head_counts=(1, 9), contexts=(16,),
                          warmup=1, repeats=3,
                          workloads=((8, 3), (20, 1)), split_workload=(8, 2), e2e_repeats=1)


# --------------------------------------------------------------------------------------------
# The model card and the prior profile of this machine


def card_for(model: LlamaModel) -> ModelCard:
    """The ``smollm2-135m`` card when ``model`` has its shape, else a card built from the
    model's config (named ``local-model``)."""
    c = model.cfg
    card = ModelCard("local-model", c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_ff,
                     c.vocab_size, "swiglu", c.tied_embeddings, head_dim=c.head_dim,
                     source="bridge.model config")
    smol = get_card("smollm2-135m")
    same = all(getattr(card, f) == getattr(smol, f) for f in
               ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_ff", "vocab", "head_dim",
                "tied_embeddings"))
    return smol if same else card


def _cpu_info() -> tuple[float, int, str]:
    """(clock GHz, fp32 FLOP per cycle per core, model name) of this CPU: the highest clock
    the kernel reports (cpufreq maximum, else /proc/cpuinfo), the FMA width from the flags."""
    mhz, flags, name = [], set(), "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "cpu MHz":
            mhz.append(float(val))
        elif key == "flags":
            flags = set(val.split())
        elif key == "model name":
            name = val.strip()
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        mhz.append(int(khz) / 1e3)
    except (OSError, ValueError):
        pass
    ghz = max(mhz) / 1e3 if mhz else 2.0
    # two FMA pipes per core: 2 pipes x 2 FLOP x fp32 lanes per cycle
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    return ghz, per_cycle, name


def memory_bandwidth_gbs(mib: int = 128, repeats: int = 5, clock: str = "wall") -> float:
    """Read bandwidth of this machine: the best of ``repeats`` undisturbed NumPy dot products
    of two ``mib`` MiB float32 vectors (bytes read / seconds on ``clock``), a pure stream of
    reads like the weights of a matrix-vector product (torch's own matrix-vector products
    reach less, so this is an upper bound for the fit's eff_memory <= 1)."""
    a = np.ones(mib * 2**20 // 4, np.float32)
    b = np.ones_like(a)
    now = CLOCKS[clock]
    best = math.inf
    np.dot(a, b)
    for _ in range(3 * repeats):
        p0 = preemptions()
        t0 = now()
        np.dot(a, b)
        dt = now() - t0
        if preemptions() == p0 or best == math.inf:
            best = min(best, dt)
    return 2.0 * a.nbytes / best / 1e9


def contention(seconds: float = 0.3) -> float:
    """Wall time / CPU time of a single-threaded NumPy loop of about ``seconds``: about 1 on
    an idle machine, larger when other jobs share the cores."""
    a = np.ones(2**16, np.float64)
    w0, c0 = time.perf_counter(), time.process_time()
    while time.process_time() - c0 < seconds:
        for _ in range(50):
            a = np.sqrt(a + 1.0)
    return (time.perf_counter() - w0) / max(time.process_time() - c0, 1e-9)


def _mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return 4.0


def prior_profile(threads: int, bw_gbs: float | None = None, clock: str = "wall") -> DeviceProfile:
    """The local edge profile before the fit: peak from the CPU, measured read bandwidth,
    fp32 weights and K/V cache, assumed power figures."""
    ghz, per_cycle, name = _cpu_info()
    peak = threads * ghz * per_cycle / 1e3
    bw = memory_bandwidth_gbs(clock=clock) if bw_gbs is None else bw_gbs
    mem = _mem_available_gb()
    sources = {
        "peak_tflops": f"derived: {threads} threads x {ghz:.2f} GHz x {per_cycle} fp32 "
                       f"FLOP/cycle (two FMA pipes; /proc/cpuinfo: {name})",
        "mem_bw_gbs": f"measured: best undisturbed NumPy dot product of 2 x 128 MiB "
                      f"({clock} clock)",
        "weight_bits": "bridge.model runs the dequantized weights in float32",
        "kv_bits": "bridge.model keeps the K/V cache in float32",
        "power_active_w": f"assumed: ~4 W per active core x {threads}",
        "power_idle_w": "assumed: ~1 W per core idle",
        "power_tx_w": "assumed: Wi-Fi uplink radio ~1 W (Huang et al., MobiSys 2012)",
        "mem_budget_gb": "measured: MemAvailable at calibration time",
    }
    return DeviceProfile("local", "edge", peak_tflops=round(peak, 6), mem_bw_gbs=round(bw, 3),
                         eff_compute=0.5, eff_memory=0.5, overhead_us=50.0, weight_bits=32,
                         kv_bits=32, power_active_w=4.0 * threads, power_idle_w=1.0 * threads,
                         power_tx_w=1.0, mem_budget_gb=round(mem, 2), sources=sources)


# --------------------------------------------------------------------------------------------
# Block measurements


@dataclasses.dataclass(frozen=True)
class BlockJob:
    """One CSV row to measure: ``fn(layer)`` runs the block once on that layer (``record``
    False: run in the round, not timed, to keep the order of a real pass)."""

    block: str
    tokens: int
    context: int | None
    fn: Callable[[int], object]
    record: bool = True


def block_rounds(ex: Executor, cfg: CalibrationConfig, seed: int = 0) -> list[list[BlockJob]]:
    """The rows of ``cfg`` as groups that are timed together, in rounds (``measure_blocks``).

    One group per prefill token count T (every head group, the FFN and its gate/up half; for
    T = 1 also the LM head, on the last position as ``lm_head_last``), and one per decode
    context c (every head group over a K/V cache of c positions, then an untimed one-token
    FFN, as in a decode pass). Random inputs of the right shapes. The down projection of a
    split FFN (``ffn_w2``) runs on the cloud, never on the edge, so it is no row of the edge
    profile.
    """
    import torch

    mc = ex.cfg
    gen = torch.Generator().manual_seed(seed)
    heads = sorted({min(max(k, 1), mc.n_heads) for k in cfg.head_counts})

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    groups: list[list[BlockJob]] = []
    x1 = rand(1, 1, mc.d_model)
    for t in cfg.token_counts:
        x = rand(1, t, mc.d_model)
        group = [BlockJob(f"attn_heads:{k}", t, None,
                          lambda i, k=k, x=x: ex.attn(i, x, list(range(k)), 0, None))
                 for k in heads]
        group += [BlockJob("ffn", t, None, lambda i, x=x: ex.ffn(i, x)),
                  BlockJob("ffn_w1", t, None, lambda i, x=x: ex.ffn_up(i, x))]
        if t == 1:
            group.append(BlockJob("lm_head", 1, None, lambda i, x=x: ex.lm_head_last(x)))
        groups.append(group)
    for c in cfg.contexts:
        cache = {g: (rand(1, c, mc.head_dim), rand(1, c, mc.head_dim))
                 for g in range(mc.n_kv_heads)}
        group = [BlockJob(f"attn_heads:{k}", 1, c,
                          lambda i, k=k, c=c, cache=cache: ex.attn(i, x1, list(range(k)), c,
                                                                   cache))
                 for k in heads]
        group.append(BlockJob("ffn", 1, None, lambda i: ex.ffn(i, x1), record=False))
        groups.append(group)
    return groups


def preemptions() -> int:
    """Involuntary context switches of this process so far (all threads): a call during which
    it grows was preempted by another job (``getrusage``; 0 where unavailable)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def _stride(n_jobs: int, n_layers: int) -> int:
    """Layers a round advances: the smallest count >= n_jobs coprime with n_layers, so that
    the calls of a round run on consecutive layers and each job visits every layer."""
    s = n_jobs
    while math.gcd(s, n_layers) != 1:
        s += 1
    return s


def _time_group(ex: Executor, group: list[BlockJob], cfg: CalibrationConfig):
    """(undisturbed, preempted) seconds of each job over warm-up + timed rounds."""
    now = CLOCKS[cfg.clock]
    n_layers = ex.cfg.n_layers
    stride = _stride(len(group), n_layers)
    clean: list[list[float]] = [[] for _ in group]
    dirty: list[list[float]] = [[] for _ in group]
    for r in range(cfg.warmup + cfg.repeats):
        for j, job in enumerate(group):
            layer = (r * stride + j) % n_layers
            p0 = preemptions()
            t0 = now()
            job.fn(layer)
            dt = now() - t0
            if r >= cfg.warmup:
                (clean if preemptions() == p0 else dirty)[j].append(dt)
    return clean, dirty


def measure_blocks(ex: Executor, cfg: CalibrationConfig, tick=None) -> list[dict]:
    """Median seconds of every recorded job of ``block_rounds``; rows with the CSV's columns
    (and ``disturbed``: calls left out; ``ok``: False for a row with too few undisturbed
    calls, which the fit must not use).

    The blocks run through an executor of the runtime (``bridge.blocks.TorchLlamaExecutor``
    for the real model: the code path of a real request) in rounds, each job of a group once
    per round in the group's order, every call on the next layer (job j of round r on layer
    (r s + j) mod L, s >= the group's size and coprime with L), as a pass runs attention and
    FFN blocks layer after layer: a block's weights are not hot in the cache from the calls
    before, the interpreter alternates between block types as in a request, and each job
    visits every layer. ``cfg.warmup`` rounds, then ``cfg.repeats`` timed rounds (on
    ``cfg.clock``); the median of each job.

    On a machine shared with other jobs a call can be preempted (with several torch threads,
    one preempted thread stalls the others at the next barrier: a 1 ms block then takes tens
    or hundreds of ms). Calls during which the process had an involuntary context switch are
    left out of the median. A group in which some job kept fewer than a third of its calls
    is timed again once after the others (contention comes in bursts); a row still short of
    undisturbed calls gets ``ok`` False. ``tick(label)`` is called after each group."""
    import torch

    need = max(1, cfg.repeats // 3)
    groups = block_rounds(ex, cfg)
    results: dict[int, tuple] = {}
    with torch.inference_mode():
        order = list(range(len(groups)))
        for attempt in range(2):
            retry = []
            for g in order:
                clean, dirty = _time_group(ex, groups[g], cfg)
                if g not in results or sum(map(len, clean)) > sum(map(len, results[g][0])):
                    results[g] = (clean, dirty)
                if any(len(c) < need for c, job in zip(clean, groups[g], strict=True)
                       if job.record):
                    retry.append(g)
                if tick is not None and attempt == 0:
                    head = groups[g][0]
                    tick(f"T={head.tokens}" + (f" ctx={head.context}" if head.context else ""))
            order = retry
    rows = []
    for g, group in enumerate(groups):
        clean, dirty = results[g]
        for job, c, d in zip(group, clean, dirty, strict=True):
            if job.record:
                ok = len(c) >= need
                rows.append({"block": job.block, "side": "edge", "tokens": job.tokens,
                             "precision": "fp32", "seconds": statistics.median(c if ok else c + d),
                             "context": job.context, "disturbed": len(d), "ok": ok})
    return rows


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """The measurements as a ``costmodel.calibration`` CSV (context empty for prefill rows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(CSV_COLUMNS)]
    for r in rows:
        ctx = "" if r["context"] is None else str(r["context"])
        lines.append(f"{r['block']},{r['side']},{r['tokens']},{r['precision']},"
                     f"{r['seconds']:.9g},{ctx}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# End-to-end held-out requests


class TimedExecutor(Executor):
    """An executor that adds the time of every block call to ``busy`` (seconds, on ``clock``)
    and stamps the end of each LM-head call (``passes``: that clock's readings)."""

    def __init__(self, inner: Executor, clock: str = "wall"):
        self.inner, self.cfg, self.name = inner, inner.cfg, inner.name
        self.now = CLOCKS[clock]
        self.busy = 0.0
        self.passes: list[float] = []

    def _timed(self, fn, *args):
        t0 = self.now()
        out = fn(*args)
        t1 = self.now()
        self.busy += t1 - t0
        return out, t1

    def fingerprint(self):
        return self.inner.fingerprint()

    def embed(self, tokens):
        return self._timed(self.inner.embed, tokens)[0]

    def attn(self, layer, x, heads, offset, cache):
        return self._timed(self.inner.attn, layer, x, heads, offset, cache)[0]

    def ffn(self, layer, h):
        return self._timed(self.inner.ffn, layer, h)[0]

    def ffn_up(self, layer, h):
        return self._timed(self.inner.ffn_up, layer, h)[0]

    def ffn_down(self, layer, u):
        return self._timed(self.inner.ffn_down, layer, u)[0]

    def ffn_cols(self, layer, h, lo, hi):
        return self._timed(self.inner.ffn_cols, layer, h, lo, hi)[0]

    def lm_head_last(self, x):
        out, t1 = self._timed(self.inner.lm_head_last, x)
        self.passes.append(t1)
        return out

    def from_numpy(self, a):
        return self.inner.from_numpy(a)

    def to_numpy(self, t):
        return self.inner.to_numpy(t)

    def reference_logits(self, tokens):
        return self.inner.reference_logits(tokens)


@dataclasses.dataclass(frozen=True)
class Request:
    """One held-out request: measured vs predicted seconds.

    kind: "edge-only" (end-to-end latency, prefill and decode split at the first LM head) or
    "split" (the edge executor's compute time only); partition: a short description;
    preempted: involuntary context switches of the process during the median run (other jobs
    taking the cores: the measurement then includes waits that the model does not predict).
    """

    kind: str
    partition: str
    prompt_tokens: int
    new_tokens: int
    measured_s: float
    predicted_s: float
    measured_prefill_s: float | None = None
    predicted_prefill_s: float | None = None
    preempted: int = 0

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_s - self.measured_s) / self.measured_s


def _prompt(n: int, vocab: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(0, vocab, n)]


def run_request(ex: Executor, rp: RunPartition, s: int, t: int, repeats: int, seed: int = 0,
                clock: str = "wall"):
    """Medians (seconds, prefill seconds, edge compute seconds, preemptions) on ``clock`` of
    ``repeats`` runs of one request (S = s, T = t) through ``run_local`` with both sides on
    this machine."""
    now = CLOCKS[clock]
    runs = []
    prompt = _prompt(s, ex.cfg.vocab_size, seed)
    for _ in range(repeats):
        edge, cloud = TimedExecutor(ex, clock), TimedExecutor(ex, clock)
        p0 = preemptions()
        t0 = now()
        run_local(edge, rp, prompt, t + 1, cloud_ex=cloud)
        total = now() - t0
        runs.append((total, (edge.passes or cloud.passes)[0] - t0, edge.busy,
                     preemptions() - p0))
    return tuple(statistics.median(x) for x in zip(*runs, strict=True))


def predicted(profile: DeviceProfile, card: ModelCard, rp: RunPartition, s: int, t: int):
    """(latency, edge compute, edge-only prefill) seconds of ``costmodel`` for the request."""
    import jax.numpy as jnp

    from costmodel.costs import prefill_time, request_costs
    from costmodel.link import Workload, make_link
    from costmodel.spec import make_spec

    spec = make_spec(card, profile, "datacenter", Workload(s, t))
    link = make_link(1e6, 0.0)  # a transparent link: the edge's compute is what is compared
    rc = request_costs(rp.to_costmodel(), link, spec)
    pre = float(prefill_time(spec))
    return float(jnp.asarray(rc.latency_s)), float(rc.edge_compute_s), pre


def split_partitions(n_layers: int, n_heads: int, n_kv: int) -> dict[str, RunPartition]:
    """Two split partitions: a layer cut in the middle (the LM head on the cloud), and per
    layer a head group on each side with the FFN alternating edge / split."""
    cut = RunPartition.layer_cut(n_layers, n_heads, n_layers // 2, "fp32")
    k = (n_heads // n_kv) * max(1, n_kv // 2)  # whole K/V groups on the edge
    heads = np.zeros((n_layers, n_heads), bool)
    heads[:, :k] = True
    ffn = np.where(np.arange(n_layers) % 2 == 0, 0, 2)
    ffn[-1] = 0
    mixed = RunPartition(heads, ffn, "fp32")
    return {f"cut:{n_layers // 2}": cut, f"heads:{k}/{n_heads}+ffn:edge/split": mixed}


def validate(model: LlamaModel, profile: DeviceProfile, card: ModelCard,
             cfg: CalibrationConfig, tick=None) -> list[Request]:
    """Held-out requests: edge-only at ``cfg.workloads`` (end-to-end latency), and the split
    partitions at ``cfg.split_workload`` (edge compute time)."""
    mc = model.cfg
    ex = TorchLlamaExecutor(model, name="local")
    out = []
    edge = RunPartition.edge_only(mc.n_layers, mc.n_heads, "fp32")
    run_request(ex, edge, 4, 1, 1)  # warm-up (allocator, first calls)
    for i, (s, t) in enumerate(cfg.workloads):
        wall, pre, _, n_pre = run_request(ex, edge, s, t, cfg.e2e_repeats, seed=i,
                                          clock=cfg.clock)
        lat, _, pre_p = predicted(profile, card, edge, s, t)
        out.append(Request("edge-only", "edge-only", s, t, wall, lat, pre, pre_p, int(n_pre)))
        if tick is not None:
            tick(f"edge-only S={s} T={t}")
    if cfg.split_workload is not None:
        s, t = cfg.split_workload
        for name, rp in split_partitions(mc.n_layers, mc.n_heads, mc.n_kv_heads).items():
            _, _, busy, n_pre = run_request(ex, rp, s, t, cfg.e2e_repeats, seed=99,
                                            clock=cfg.clock)
            out.append(Request("split", name, s, t, busy, predicted(profile, card, rp, s, t)[1],
                               preempted=int(n_pre)))
            if tick is not None:
                tick(f"split {name}")
    return out


def mape(requests: list[Request], kind: str = "edge-only") -> float:
    errs = [abs(r.error_pct) for r in requests if r.kind == kind]
    return float(np.mean(errs)) if errs else float("nan")


# --------------------------------------------------------------------------------------------
# The whole calibration


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of ``calibrate``: the fitted profile, the fit report, the held-out requests,
    the files written, and the wall/CPU ratio of a probe before and after (``contention``)."""

    profile: DeviceProfile
    report: FitReport
    requests: tuple[Request, ...]
    paths: dict
    contention: tuple[float, float] = (1.0, 1.0)

    @property
    def mape(self) -> float:
        """MAPE (%) of the end-to-end latency of the held-out edge-only requests."""
        return mape(list(self.requests))

    @property
    def preemption_rate(self) -> float:
        """Most involuntary context switches per second of a held-out request's run."""
        return max((r.preempted / r.measured_s for r in self.requests), default=0.0)

    @property
    def shared(self) -> bool:
        """Other jobs competed for the cores while it measured (probe or preemptions)."""
        return max(self.contention) > SHARED or self.preemption_rate > SHARED_PREEMPT_RATE

    @property
    def split_mape(self) -> float:
        """MAPE (%) of the edge compute time of the held-out split requests."""
        return mape(list(self.requests), "split")

    def table(self) -> str:
        lines = [f"{'request':34s} {'S':>4s} {'T':>3s} {'measured s':>10s} "
                 f"{'predicted s':>11s} {'err %':>7s} {'preempt':>7s}  prefill meas/pred s"]
        for r in self.requests:
            pre = ("" if r.measured_prefill_s is None else
                   f"  {r.measured_prefill_s:.3f} / {r.predicted_prefill_s:.3f}")
            what = ("end-to-end " if r.kind == "edge-only" else "edge compute ") + r.partition
            lines.append(f"{what:34s} {r.prompt_tokens:4d} {r.new_tokens:3d} "
                         f"{r.measured_s:10.3f} {r.predicted_s:11.3f} {r.error_pct:7.1f} "
                         f"{r.preempted:7d}{pre}")
        lines.append(f"held-out end-to-end MAPE {self.mape:.1f} % (goal <= {MAPE_GOAL:g} %); "
                     f"split edge-compute MAPE {self.split_mape:.1f} %")
        return "\n".join(lines)


def profile_threads(profile_path: str | Path) -> int | None:
    """The torch thread count a ``calibrate`` profile file was measured with (from its
    validation JSON beside it), or None when there is none. A runtime predicted with the
    profile should run with as many threads on each side (``bridge.server_process``)."""
    val = Path(profile_path).with_suffix(".validation.json")
    try:
        threads = json.loads(val.read_text()).get("threads")
    except (OSError, ValueError):
        return None
    return int(threads) if isinstance(threads, int) and threads >= 1 else None


def profile_json(profile: DeviceProfile) -> dict:
    return dataclasses.asdict(profile)


def calibrate(model: LlamaModel, out: str | Path, cfg: CalibrationConfig = CalibrationConfig(),
              card: ModelCard | None = None, progress: bool = True,
              bw_gbs: float | None = None) -> Calibration:
    """Measure, fit, validate; write the profile (``out``), the CSV and the validation JSON.
    Runs with ``cfg.threads`` torch threads (the previous count is restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _calibrate(model, out, cfg, card or card_for(model), progress, bw_gbs)
    finally:
        torch.set_num_threads(threads)


def _calibrate(model, out, cfg, card, progress, bw_gbs) -> Calibration:
    from tqdm import tqdm

    out = Path(out)
    csv_path = out.with_suffix(".csv")
    val_path = out.with_suffix(".validation.json")
    n_split = 2 if cfg.split_workload is not None else 0
    total = len(cfg.token_counts) + len(cfg.contexts) + len(cfg.workloads) + n_split
    with tqdm(total=total, desc="calibrate", unit="row", disable=not progress,
              file=sys.stderr) as bar:
        def tick(label):
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        before = contention()
        prior = prior_profile(cfg.threads, bw_gbs, cfg.clock)
        rows = measure_blocks(TorchLlamaExecutor(model, name="local"), cfg, tick)
        usable = [r for r in rows if r["ok"]]
        if len(usable) < MIN_ROWS:
            raise BusyMachine(f"only {len(usable)} of {len(rows)} block rows had enough calls "
                              "that no other job preempted: this machine is too busy to time "
                              "blocks on the wall clock; try later or `--clock cpu --threads 1`")
        write_rows(usable, csv_path)
        fitted, report = fit_profile(csv_path, card, prior)
        requests = validate(model, fitted, card, cfg, tick)
        after = contention()
    exchange = exchange_cost()
    fitted = dataclasses.replace(
        fitted, msg_overhead_us=exchange["msg_overhead_us"],
        sources={**fitted.sources, "msg_overhead_us": "measured on loopback "
                 "(bridge.calibrate.exchange_cost)"})
    cloud = loopback_cloud(fitted, exchange["msg_overhead_us"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"profiles": [profile_json(fitted), profile_json(cloud)]},
                              indent=1) + "\n")
    cal = Calibration(fitted, report, tuple(requests),
                      {"profile": str(out), "csv": str(csv_path), "validation": str(val_path)},
                      (before, after))
    val = {"card": card.name, "config": dataclasses.asdict(cfg), "threads": cfg.threads,
           "contention_wall_over_cpu": [before, after], "load_average": os.getloadavg(),
           "block_calls_preempted": sum(r["disturbed"] for r in rows),
           "rows_left_out": [{k: r[k] for k in CSV_COLUMNS} for r in rows if not r["ok"]],
           "preemptions_per_s": cal.preemption_rate, "shared": cal.shared,
           "cpus": os.cpu_count(),
           "fit": {"rms_log_error": report.rms_log_error, "mape_rows": report.mape,
                   "eff_compute": report.eff_compute, "eff_memory": report.eff_memory,
                   "overhead_us": report.overhead_us, "identified": report.identified},
           "exchange": exchange,
           "mape_end_to_end": cal.mape, "mape_split_edge_compute": cal.split_mape,
           "requests": [dict(dataclasses.asdict(r), error_pct=r.error_pct) for r in requests]}
    val_path.write_text(json.dumps(val, indent=1, allow_nan=True) + "\n")
    return cal


# --------------------------------------------------------------------------------------------
# The exchange overhead of the transport and the framework


def _echo_peer(port: int, precision: str) -> None:
    """The peer of ``exchange_cost`` (a process of its own): connect to the edge's socket,
    then decode each STEP frame and send its activation back as a RESULT at ``precision``."""
    import socket

    from bridge import wire

    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                f, _ = wire.read_frame(conn)
                reply = wire.make_frame(wire.MsgType.RESULT, f.request_id, f.seq,
                                        layer=f.layer, tag=f.tag, array=f.activation(),
                                        precision=precision)
                conn.sendall(wire.encode_frame(reply))
        except (wire.PeerClosed, OSError):
            return


def exchange_cost(n: int = 300, width: int = 576, precision: str = "fp16",
                  warmup: int = 30) -> dict:
    """One decode-step exchange on loopback, as the runtime does it: the edge encodes a
    ``[1, 1, width]`` activation into a STEP frame (``bridge.wire``), sends it over TCP
    (``TCP_NODELAY``) to a peer *process* (as ``serve-cloud`` is one: a thread of this process
    would share its interpreter lock, and on two cores each hand-off then waits for the other
    core, which doubled the round trip), the peer reads and decodes it, encodes the reply and
    sends it back, the edge reads and decodes it. Returns the median and p90 round trip (us)
    over ``n`` exchanges and ``msg_overhead_us``: half the median round trip, the software
    cost of one message (sender's plus receiver's), the profile field of
    ``costmodel.profiles``."""
    import multiprocessing
    import socket

    from bridge import wire

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(60.0)
    peer = multiprocessing.get_context("spawn").Process(
        target=_echo_peer, args=(srv.getsockname()[1], precision), daemon=True)
    peer.start()
    x = np.random.default_rng(0).standard_normal((1, 1, width)).astype(np.float32)
    times = []
    try:
        cli, _ = srv.accept()
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with cli:
            for i in range(n + warmup):
                t0 = time.perf_counter()
                f = wire.make_frame(wire.MsgType.STEP, 1, i, layer=0, tag=2, array=x,
                                    precision=precision)
                cli.sendall(wire.encode_frame(f))
                r, _ = wire.read_frame(cli)
                r.activation()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    finally:
        srv.close()
        peer.join(timeout=10)
        if peer.is_alive():
            peer.kill()
    t = np.asarray(times) * 1e6
    return {"round_trip_median_us": float(np.median(t)), "round_trip_p90_us":
            float(np.percentile(t, 90)), "msg_overhead_us": float(np.median(t) / 2),
            "width": width, "precision": precision, "n": n}


def loopback_cloud(edge: DeviceProfile, overhead_us: float, rtt_ms: float = 0.0
                   ) -> DeviceProfile:
    """The ``local-cloud`` profile: this machine serving as the cloud over loopback (the same
    roofline as ``local``: both processes share its cores), no prices, the measured
    per-message overhead."""
    return dataclasses.replace(edge, name="local-cloud", role="cloud", rtt_ms=rtt_ms,
                               price_per_gpu_s=0.0, price_per_gb=0.0,
                               msg_overhead_us=overhead_us,
                               sources={**edge.sources, "msg_overhead_us":
                                        "measured: half the median loopback round trip of one "
                                        "576-wide fp16 STEP / RESULT exchange "
                                        "(bridge.calibrate.exchange_cost)",
                                        "rtt_ms": "loopback (the link emulator adds any RTT)"})


# --------------------------------------------------------------------------------------------
# Command line


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="local", choices=("local",),
                    help="the machine to calibrate (this one)")
    ap.add_argument("--out", default="profiles/local.json", help="profile JSON to write")
    ap.add_argument("--model", default=None,
                    help="Llama .gguf / .safetensors file (default: SmolLM2-135M)")
    ap.add_argument("--quick", action="store_true", help="few rows and requests (tests)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per block row")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall (latency) or cpu (process CPU time: for a shared machine)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")


def cli(args) -> int:
    from bridge.model import load_model

    cfg = QUICK if args.quick else CalibrationConfig()
    cfg = dataclasses.replace(cfg, threads=args.threads, clock=args.clock)
    if args.repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    t0 = time.perf_counter()
    try:
        cal = calibrate(load_model(args.model), args.out, cfg, progress=not args.no_progress)
    except BusyMachine as err:
        print(f"splitwise calibrate: {err}", file=sys.stderr)
        return 1
    print(cal.report.table())
    print(cal.table())
    if cal.shared and cfg.clock == "wall":
        print(f"warning: other jobs share this machine (wall / CPU time of a one-thread probe "
              f"{max(cal.contention):.2f}, up to {cal.preemption_rate:.0f} preemptions/s in "
              f"the held-out runs, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
              "CPUs): the wall clock mixes the work with the waits for a core, and with "
              "several threads each parallel region waits for all of them; "
              "`--clock cpu --threads 1` measures the work itself", file=sys.stderr)
    p = cal.profile
    print(f"profile {p.name}: peak {p.peak_tflops:.4g} TFLOP/s x eff_compute "
          f"{p.eff_compute:.3g}, {p.mem_bw_gbs:.3g} GB/s x eff_memory {p.eff_memory:.3g}, "
          f"overhead {p.overhead_us:.3g} us; wrote {', '.join(cal.paths.values())} "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitwise calibrate", description=__doc__.split("\n")[0],
                                 allow_abbrev=False)
    add_args(ap)
    return cli(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
