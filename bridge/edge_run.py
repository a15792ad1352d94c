"""``splitwise run-edge``: requests arriving by a ``lyapunov.processes`` arrival process,
served one at a time through a ``bridge.edge_client.EdgeClient``, partitioned per slot by a
runtime policy, with the cost model's prediction of every request.
Design: ``docs/design.md §3 and §5``.

``run_edge(cloud_addr, requests, trace, policy, config)``: at the start of each slot with work,
the policy (``bridge.runtime_policy``) maps an ``Observation`` (last slot's measured bandwidth,
RTT, queue length, arrivals) to a ``costmodel`` partition used by the requests that start in
that slot (one at a time, FIFO: the edge serves its queue); each request's latency is
predicted by ``costmodel.costs.request_costs`` for the same partition and the link state of
the slot it started in, with the device profiles of this machine (the ``splitwise calibrate``
file when present, else ``LOCAL_DEFAULT``).

An exported policy (``onnx:FILE``, ``torch:FILE``; ``bridge.exported_policy``) runs without
JAX: this module imports JAX only for registry policies, checkpoints and predictions, so with
an exported policy the predictions are left out of the loop (``predicted_s`` None,
``predictions`` "deferred") and ``add_predictions`` adds them afterwards in a process that has
JAX (``run-edge --predict``).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bridge.blocks import Executor, RunPartition
from bridge.edge_client import ClientConfig, EdgeClient, RequestResult
from bridge.exported_policy import is_exported, read_profile
from bridge.runtime_policy import UNLIMITED_MBPS, Observation
from bridge.transport import LinkConfig, LinkEmulator

LOCAL_DEFAULT = {
    "name": "local-default", "role": "edge", "peak_tflops": 0.05, "mem_bw_gbs": 10.0,
    "eff_compute": 0.5, "eff_memory": 0.5, "overhead_us": 60.0, "weight_bits": 32.0,
    "kv_bits": 32.0, "power_active_w": 15.0, "power_idle_w": 5.0, "power_tx_w": 0.0,
    "mem_budget_gb": 8.0,
    "sources": {"all": "assumed: one x86 core running NumPy/torch float32 blocks at batch 1; "
                       "overhead_us ~ the Python + kernel-dispatch cost of one block call. Run "
                       "`splitwise calibrate --device local --out profiles/local.json` to "
                       "measure this machine instead."},
}


def local_profiles(path: str | Path = "profiles/local.json",
                   edge_memory_gb: float | None = None):
    """(edge, cloud, source) ``DeviceProfile`` of this machine: from the ``splitwise
    calibrate`` file when it exists (its edge profile ``local`` and loopback cloud profile
    ``local-cloud``; a file with one profile serves both sides, as both run here), else
    ``LOCAL_DEFAULT``; ``edge_memory_gb`` replaces the edge's ``mem_budget_gb``."""
    from costmodel.profiles import load_profiles, profile_from_dict

    p = Path(path)
    if p.exists():
        profs = load_profiles(p, register=False)
        source = str(p)
    else:
        profs = [profile_from_dict(dict(LOCAL_DEFAULT), origin="LOCAL_DEFAULT")]
        source = f"LOCAL_DEFAULT (assumed; no {p})"
    edge = next((q for q in profs if q.role == "edge"), profs[0])
    cloud = next((q for q in profs if q.role == "cloud"), None)
    if cloud is None:
        cloud = dataclasses.replace(edge, role="cloud", name=f"{edge.name}-cloud")
    edge = dataclasses.replace(edge, role="edge")
    if edge_memory_gb is not None:
        edge = dataclasses.replace(edge, mem_budget_gb=float(edge_memory_gb))
    return edge, cloud, source


def executor_card(executor: Executor):
    """The ``costmodel`` model card of an executor's model."""
    from costmodel.cards import CARDS, ModelCard

    c = executor.cfg
    if executor.name in ("smollm2", "smollm2-135m") and "smollm2-135m" in CARDS:
        return CARDS["smollm2-135m"]
    return ModelCard(executor.name.replace("/", "_").lower(), c.n_layers, c.n_heads,
                     c.n_kv_heads, c.d_model, c.d_ff, c.vocab_size, "swiglu",
                     c.tied_embeddings, head_dim=c.head_dim, source="runtime executor")



@dataclasses.dataclass(frozen=True)
class Arrivals:
    """An arrival process with the fields of ``lyapunov.processes.ArrivalConfig`` (which
    ``runtime_params`` builds from it), importable without JAX: Poisson ``rate`` per slot,
    or a two-state MMPP (``rate_lo``, ``rate_hi``, switch probabilities per slot)."""

    kind: str = "poisson"
    rate: float = 1.0
    rate_lo: float = 0.5
    rate_hi: float = 4.0
    p_lo_to_hi: float = 0.05
    p_hi_to_lo: float = 0.2


NEVER_USABLE = ("auth", "unreachable", "model_mismatch", "protocol")  # fallback reasons


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """``splitwise run-edge`` settings (one frozen config; the CLI parses it).

    prompt_tokens, new_tokens: each request prefills S tokens then runs T decode steps
      (T + 1 generated tokens), as ``costmodel.link.Workload``.
    arrival: the arrival process, requests per slot (``Arrivals`` or a
      ``lyapunov.processes.ArrivalConfig``, the same fields: Poisson or bursty MMPP).
    slot_s: slot length, emulated seconds.
    link: RTT, burst, uplink ratio, time scale of the emulated link.
    client: timeouts, backoff, key, memory budget.
    precision: activation precision override ("fp32" for exactness runs); None: the
      policy's ``act_prec``.
    profile_path: the ``splitwise calibrate`` profile file of this machine (predictions; an
      exported policy's memory masks).
    seed: arrivals, prompts and backoff jitter.
    allow_edge_fallback: when the cloud was never usable (no request served by it, and one
      fell back for a reason of ``NEVER_USABLE``: wrong or missing key, unreachable, model
      mismatch, protocol) and the policy needed it, keep running every request
      on the edge; False: stop after the first such request and report why
      (``cloud_unusable`` in the summary).
    privacy_layers: the policy's privacy floor (the embedding and the first k layers stay on
      the edge; 0: none), as ``lyapunov.env.Scenario``'s. A learned policy (checkpoint or
      export) holds the floor it was trained with and refuses another.
    edge_memory_gb: the memory the edge may hold (weights and K/V cache, GB) instead of its
      profile's ``mem_budget_gb``: the policy plans within it and a request that falls back
      to the edge fails when the whole model does not fit it. The edge process still loads
      every weight: this emulates a device that could not hold the model. None: the
      profile's.
    """

    prompt_tokens: int = 16
    new_tokens: int = 8
    arrival: Arrivals = Arrivals()
    slot_s: float = 1.0
    link: LinkConfig = LinkConfig()
    client: ClientConfig = ClientConfig()
    precision: str | None = None
    profile_path: str = "profiles/local.json"
    seed: int = 0
    allow_edge_fallback: bool = True
    privacy_layers: int = 0
    edge_memory_gb: float | None = None

    def __post_init__(self):
        if isinstance(self.privacy_layers, bool) or not (isinstance(self.privacy_layers, int)
                                                         and self.privacy_layers >= 0):
            raise ValueError(f"privacy_layers must be an integer >= 0, got "
                             f"{self.privacy_layers!r}")
        if self.edge_memory_gb is not None and not (math.isfinite(self.edge_memory_gb)
                                                    and self.edge_memory_gb > 0):
            raise ValueError(f"edge_memory_gb must be a number > 0 (GB), got "
                             f"{self.edge_memory_gb!r}")


def _percentile(xs, q) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.percentile(xs, q)) if xs else None


def slot_counts(n_slots: int, arrival, rng: np.random.Generator) -> np.ndarray:
    """Arrivals in each of ``n_slots`` slots (NumPy): Poisson counts of the rate, or of the
    MMPP regime, whose chain starts from its stationary law."""
    if arrival.kind == "poisson":
        return rng.poisson(float(arrival.rate), n_slots)
    if arrival.kind != "mmpp":
        raise ValueError(f"arrival kind must be 'poisson' or 'mmpp', got {arrival.kind!r}")
    p_lh, p_hl = float(arrival.p_lo_to_hi), float(arrival.p_hi_to_lo)
    hi = rng.random() < p_lh / (p_lh + p_hl)
    out = np.empty(n_slots, np.int64)
    u = rng.random(n_slots)
    for k in range(n_slots):
        out[k] = rng.poisson(arrival.rate_hi if hi else arrival.rate_lo)
        hi = (u[k] >= p_hl) if hi else (u[k] < p_lh)
    return out


def arrival_times(n: int, arrival, slot_s: float, seed: int) -> list[float]:
    """Emulated arrival times of ``n`` requests: counts per slot (``slot_counts``), spread
    uniformly inside each slot. NumPy only, so an edge with an exported policy and one with
    a checkpoint see the same arrivals for the same seed."""
    from bridge.exported_policy import arrival_mean

    if not arrival_mean(arrival) > 0:
        raise ValueError("the arrival process has mean rate 0: no request would ever arrive")
    rng = np.random.default_rng([seed, 1])
    times: list[float] = []
    slot = 0
    while len(times) < n:
        for c in slot_counts(max(8, 2 * n), arrival, rng):
            times.extend(sorted((slot + rng.random(int(c))) * slot_s))
            slot += 1
            if len(times) >= n:
                break
    return times[:n]


def run_edge(cloud_addr: tuple[str, int] | str, requests: int | list[list[int]],
             trace=None, policy: str | Callable = "best-cut", config: EdgeConfig = EdgeConfig(),
             executor: Executor | None = None) -> dict:
    """Serve ``requests`` (a count, or the prompts' token ids) through the split runtime.

    cloud_addr: (host, port) or "host:port". trace: a ``lyapunov.traces.Trace``, a trace file
    path, or None (unlimited bandwidth). policy: a policy string of the registry
    (``lyapunov.registry``: a name, or ``checkpoint:DIR``; ``bridge.runtime_policy.make_policy``)
    or a function ``Observation -> costmodel Partition``. Returns the JSON-safe summary of
    ``splitwise run-edge --json`` (keys: submitted, answered, failed, lost, duplicated,
    latency_p50_s, latency_p95_s, predicted_p50_s, predicted_p95_s, bytes_sent, retries,
    fallbacks, fallback_reasons, cloud_steps_executed, cloud_unusable and more) with a
    ``requests`` list of per-request records.

    Accounting: ``lost`` = submitted - answered - failed - not_run, where a request counts as
    answered or failed only once its ``run_request`` returned an outcome; ``duplicated`` =
    outcomes recorded twice for one request + cloud steps executed more than once, from the
    cloud's execution ledger (returned in each CLOSE reply); ``ledger_missing`` counts split
    requests whose ledger the cloud could not report (its state was lost or the reply did
    not come). A request's prediction is ``costmodel.outage.with_outage`` of its partition on
    its slot's link with this client's retry schedule: a partition that crosses a link that
    is down is priced as the runtime handles it (waits, then the edge).
    """
    from bridge.blocks import make_executor

    if isinstance(cloud_addr, str):
        cloud_addr = parse_addr(cloud_addr)
    if isinstance(trace, str | Path):
        from lyapunov.traces import load_trace

        trace = load_trace(trace)
    ex = executor or make_executor("toy")
    rng = np.random.default_rng(config.seed)
    if isinstance(requests, int):
        prompts = [rng.integers(0, ex.cfg.vocab_size, config.prompt_tokens).tolist()
                   for _ in range(requests)]
    else:
        prompts = [list(p) for p in requests]
    n_req = len(prompts)
    n_out = config.new_tokens + 1

    card = executor_card(ex)
    exported = is_exported(policy)
    if exported:  # NumPy + onnxruntime / torch only: no JAX in this process
        from bridge.exported_policy import runtime_policy

        profile = read_profile(config.profile_path, "local")
        prof_source = config.profile_path if profile else "LOCAL_DEFAULT"
        profile = dict(profile or LOCAL_DEFAULT)
        if config.edge_memory_gb is not None:
            profile["mem_budget_gb"] = float(config.edge_memory_gb)
        pol = runtime_policy(policy, card, profile,
                             config.prompt_tokens, config.new_tokens, config.arrival,
                             config.link.rtt_ms, trace, config.slot_s, config.link.up_ratio,
                             config.precision, config.privacy_layers)
        predictor = None
    else:
        pol, predictor, prof_source = _jax_policy(policy, card, config, trace)
    cloud = read_profile(config.profile_path, "local-cloud") or LOCAL_DEFAULT
    client_cfg = config.client
    if config.edge_memory_gb is not None and client_cfg.edge_mem_budget_bytes is None:
        client_cfg = dataclasses.replace(client_cfg,
                                         edge_mem_budget_bytes=config.edge_memory_gb * 1e9)
    if client_cfg.cloud_flops is None:  # each step's wait follows its predicted compute
        client_cfg = dataclasses.replace(
            client_cfg, cloud_flops=cloud["peak_tflops"] * 1e12 * cloud["eff_compute"],
            cloud_overhead_s=cloud["overhead_us"] * 1e-6)
    link_em = LinkEmulator(trace, config.link)
    rtt_ms = config.link.rtt_ms

    arrivals = arrival_times(n_req, config.arrival, config.slot_s, config.seed)
    results: dict[int, RequestResult] = {}
    records: list[dict] = []
    duplicated = 0
    lost_errors: list[str] = []
    not_run = served = 0
    unusable: dict | None = None
    partitions: Counter = Counter()
    queue_: deque[int] = deque()
    nxt = 0
    cur_slot, cur_part = None, None
    measured_upto = 0  # slots < measured_upto were reported to the policy
    decisions: list[float] = []  # wall seconds of each decide()
    policy_log: list[list] = []  # what the policy was told and what it decided, in order
    t_wall0 = time.monotonic()

    def bw(t0: float, t1: float) -> float:
        return link_em.bandwidth_mbps(t0, t1)

    def arrived(j: int) -> int:
        """Arrivals during slot ``j`` (``arrivals`` is sorted)."""
        return (bisect.bisect_left(arrivals, (j + 1) * config.slot_s)
                - bisect.bisect_left(arrivals, j * config.slot_s))

    with EdgeClient(cloud_addr, ex, client_cfg, link_em) as client:
        while len(results) + len(lost_errors) + not_run < n_req:
            now = link_em.emulated_now()
            while nxt < n_req and arrivals[nxt] <= now:
                queue_.append(nxt)
                nxt += 1
            if not queue_:
                time.sleep(max(link_em.to_wall(arrivals[nxt]) - time.monotonic(), 0.0))
                continue
            slot = math.floor(now / config.slot_s)
            if slot != cur_slot:
                for j in range(measured_upto, slot):  # the finished slots, as measured
                    seen = (min(bw(j * config.slot_s, (j + 1) * config.slot_s),
                                UNLIMITED_MBPS), rtt_ms, arrived(j))
                    pol.measured(*seen)
                    policy_log.append(["measured", *seen])
                measured_upto = slot
                s0 = slot * config.slot_s
                prev = (max(s0 - config.slot_s, 0.0), s0) if slot > 0 else (0.0, config.slot_s)
                obs = Observation(slot, bw(*prev), bw(s0, s0 + config.slot_s), rtt_ms,
                                  len(queue_), arrived(slot - 1) if slot > 0 else 0)
                t_dec = time.perf_counter()
                cur_part = pol.decide(obs)
                decisions.append(time.perf_counter() - t_dec)
                policy_log.append(["decide", *_capped(obs),
                                   None if cur_part is None else cur_part.describe()])
                if cur_part is None:  # no feasible partition for the policy: stay on the edge
                    cur_part = RunPartition.edge_only(ex.cfg.n_layers, ex.cfg.n_heads,
                                                      config.precision or "fp16")
                cur_slot = slot
            i = queue_.popleft()
            s0 = cur_slot * config.slot_s
            bw_slot = bw(s0, s0 + config.slot_s)
            start = link_em.emulated_now()
            sent0, recv0 = client.traffic()
            try:
                res = client.run_request(prompts[i], cur_part, n_out)
            except Exception as err:  # no outcome: the request is lost, and counted so
                lost_errors.append(f"request {i}: {err!r}")
                continue
            sent1, recv1 = client.traffic()
            if i in results:
                duplicated += 1
                continue
            results[i] = res
            pred, caught = predictor(cur_part, bw_slot) if predictor else (None, None)
            partitions[cur_part.describe()] += 1
            records.append({
                "index": i, "request_id": res.request_id, "status": res.status,
                "error": res.error, "arrival_s": arrivals[i], "start_s": start,
                "latency_s": res.latency_s,
                "sojourn_s": start - arrivals[i] + res.latency_s / config.link.time_scale,
                "predicted_s": pred, "predicted_caught": caught,
                "bw_mbps": bw_slot if math.isfinite(bw_slot) else None,
                "partition": cur_part.describe(), "uses_cloud": cur_part.uses_cloud,
                "edge_heads": cur_part.head_on_edge.sum(1).tolist(),
                "ffn": cur_part.ffn.tolist(), "ffn_frac": cur_part.ffn_frac.tolist(),
                "precision": cur_part.precision,
                "embed_edge": cur_part.embed_edge, "slot": cur_slot,
                "retries": res.retries, "fallback_at": res.fallback_at,
                "fallback_reason": res.fallback_reason, "ledger": res.ledger,
                "tokens": res.tokens, "bytes_sent": sent1 - sent0,
                "bytes_received": recv1 - recv0})
            served += cur_part.uses_cloud and res.fallback_at is None
            if (cur_part.uses_cloud and res.fallback_reason in NEVER_USABLE and not served
                    and unusable is None):
                unusable = {"reason": res.fallback_reason, "error": res.error}
                if not config.allow_edge_fallback:
                    not_run = n_req - len(results) - len(lost_errors)
        sent, received = client.traffic()
        stats = dict(client.stats)

    answered = [r for r in records if r["status"] == "answered"]
    n_failed = sum(r["status"] == "failed" for r in records)
    split = [r for r in records if r["uses_cloud"] and r["fallback_at"] is None]
    ledgers = [r["ledger"] for r in records if r["ledger"] is not None]
    cloud_dup = sum(lg["duplicated"] for lg in ledgers)
    reasons = Counter(r["fallback_reason"] for r in records if r["fallback_reason"])
    if unusable is not None and served:
        unusable = None  # the cloud was used later in the run
    return {
        "submitted": n_req,
        "answered": len(answered),
        "failed": n_failed,
        "not_run": not_run,
        "lost": n_req - len(answered) - n_failed - not_run,
        "lost_errors": lost_errors,
        "duplicated": duplicated + cloud_dup,
        "cloud_steps_executed": sum(lg["executed"] for lg in ledgers),
        "cloud_steps_duplicated": cloud_dup,
        "ledger_missing": sum(r["ledger"] is None or not r["ledger"]["held"] for r in split),
        "cloud_sessions": client.sessions,
        "cloud_unusable": unusable,
        "latency_p50_s": _percentile([r["latency_s"] for r in answered], 50),
        "latency_p95_s": _percentile([r["latency_s"] for r in answered], 95),
        "predicted_p50_s": _percentile([r["predicted_s"] for r in answered], 50),
        "predicted_p95_s": _percentile([r["predicted_s"] for r in answered], 95),
        "sojourn_p50_s": _percentile([r["sojourn_s"] for r in answered], 50),
        "sojourn_p95_s": _percentile([r["sojourn_s"] for r in answered], 95),
        "bytes_sent": sent,
        "bytes_received": received,
        "retries": stats.get("retries", 0),
        "fallbacks": stats.get("fallbacks", 0),
        "fallback_reasons": dict(reasons),
        "predicted_caught": sum(bool(r["predicted_caught"]) for r in records),
        "predictions": "deferred" if predictor is None else "in the loop",
        "decision_mean_s": float(np.mean(decisions)) if decisions else None,
        "decision_p95_s": _percentile(decisions, 95),
        "decisions": len(decisions),
        "policy_log": policy_log,
        "replays": stats.get("replays", 0),
        "connections": stats.get("connections", 0),
        "duplicate_results_dropped": stats.get("duplicate_results_dropped", 0),
        "policy": policy if isinstance(policy, str) else pol.name,
        "policy_name": pol.name,
        "trace": getattr(trace, "name", None),
        "executor": ex.name,
        "profile": prof_source,
        "rtt_ms": rtt_ms,
        "time_scale": config.link.time_scale,
        "wall_s": time.monotonic() - t_wall0,
        "partitions": dict(partitions),
        "requests": records,
    }


def _capped(obs: Observation) -> tuple:
    """An observation's fields with bandwidths capped at ``UNLIMITED_MBPS`` (as the policies
    see them; JSON has no infinity)."""
    return dataclasses.astuple(dataclasses.replace(
        obs, bw_mbps=min(obs.bw_mbps, UNLIMITED_MBPS),
        bw_now_mbps=min(obs.bw_now_mbps, UNLIMITED_MBPS)))


def replay(pol, policy_log: list) -> list[str | None]:
    """The partitions (``RunPartition.describe()``) a ``RuntimePolicy`` decides when told what
    a run's policy was told (its summary's ``policy_log``, in order): the checkpoint and the
    ONNX export of one policy compared on the same observations in the loop."""
    out = []
    for kind, *fields in policy_log:
        if kind == "measured":
            pol.measured(*fields)
        else:
            rp = pol.decide(Observation(*fields[:-1]))
            out.append(None if rp is None else rp.describe())
    return out


def _jax_policy(policy, card, config: EdgeConfig, trace):
    """(RuntimePolicy deciding ``RunPartition``s, predictor, profile source) of a registry
    policy, a checkpoint or a function (JAX)."""
    from bridge.runtime_policy import make_policy, runtime_params
    from costmodel.accuracy import accuracy_profile
    from costmodel.link import Workload
    from costmodel.spec import edge_head_order

    edge_prof, cloud_prof, source = local_profiles(config.profile_path, config.edge_memory_gb)
    params = runtime_params(card, edge_prof, cloud_prof,
                            Workload(config.prompt_tokens, config.new_tokens), config.slot_s,
                            config.arrival, config.link.rtt_ms, config.link.up_ratio, trace,
                            config.privacy_layers)
    order = edge_head_order(accuracy_profile(card).head_w, card.group_size)
    pol = make_policy(policy, params, card, config.link.up_ratio, config.seed)
    inner = pol.decide

    def decide(obs):
        cm = inner(obs)
        return None if cm is None else RunPartition.from_costmodel(cm, order, config.precision)

    pol = dataclasses.replace(pol, decide=decide)
    return pol, predictor(params.spec, config), source


def predictor(spec, config: EdgeConfig):
    """``fn(run_partition, bw_mbps) -> (predicted latency s or None, caught)``: the cost
    model's latency of the partition on the slot's link (RTT and uplink ratio of
    ``config.link``) with outages priced by this client's retry schedule
    (``costmodel.outage.with_outage``)."""
    from costmodel.link import make_link
    from costmodel.outage import RetryConfig, with_outage

    cc = config.client
    wait_s = RetryConfig(cc.timeout_s, cc.backoff.base_s, cc.backoff.factor, cc.backoff.cap_s,
                         cc.backoff.max_retries, cc.backoff.jitter).expected_wait_s()
    fp32 = spec.replace(act_bytes=spec.act_bytes.at[0].set(4.0))

    def predict(rp: RunPartition, bw_mbps: float):
        cm_spec = fp32 if rp.precision == "fp32" else spec  # the cost model knows fp16..int4
        lk = make_link(min(bw_mbps * config.link.up_ratio, UNLIMITED_MBPS), config.link.rtt_ms,
                       min(bw_mbps, UNLIMITED_MBPS))
        caught = with_outage(rp.to_costmodel(), lk, cm_spec, wait_s)
        pred = float(caught.costs.latency_s)
        return (pred if math.isfinite(pred) else None), bool(caught.caught)

    return predict


def add_predictions(summary: dict, config: EdgeConfig, executor: Executor | None = None,
                    trace=None) -> dict:
    """Fill in the predictions of a run whose policy ran without JAX (``predictions``
    "deferred"): each request's ``predicted_s`` / ``predicted_caught`` from its recorded
    partition and slot bandwidth, and the summary's percentiles. Imports JAX."""
    from bridge.blocks import make_executor
    from bridge.runtime_policy import runtime_params
    from costmodel.link import Workload

    ex = executor or make_executor("toy")
    card = executor_card(ex)
    edge_prof, cloud_prof, source = local_profiles(config.profile_path)
    if isinstance(trace, str | Path):
        from lyapunov.traces import load_trace

        trace = load_trace(trace)
    params = runtime_params(card, edge_prof, cloud_prof,
                            Workload(config.prompt_tokens, config.new_tokens), config.slot_s,
                            config.arrival, config.link.rtt_ms, config.link.up_ratio, trace)
    predict = predictor(params.spec, config)
    for r in summary["requests"]:
        rp = RunPartition.from_counts(r["edge_heads"], r["ffn"], r["precision"],
                                      r["embed_edge"], _identity_order(card),
                                      r.get("ffn_frac"))
        bw_mbps = math.inf if r["bw_mbps"] is None else r["bw_mbps"]
        r["predicted_s"], r["predicted_caught"] = predict(rp, bw_mbps)
    answered = [r for r in summary["requests"] if r["status"] == "answered"]
    summary.update(
        predicted_p50_s=_percentile([r["predicted_s"] for r in answered], 50),
        predicted_p95_s=_percentile([r["predicted_s"] for r in answered], 95),
        predicted_caught=sum(bool(r["predicted_caught"]) for r in summary["requests"]),
        predictions="after the run", profile=source)
    return summary


def _identity_order(card) -> np.ndarray:
    """Any head order: the cost model counts heads, not which ones."""
    return np.tile(np.arange(card.n_heads), (card.n_layers, 1))


def parse_addr(text: str, resolve: bool = False) -> tuple[str, int]:
    """"host:port" -> (host, port); ``ValueError`` naming ``--cloud`` when it is not
    HOST:PORT with a port 1-65535 (or, with ``resolve``, when the host does not resolve)."""
    import socket

    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--cloud: expected HOST:PORT, got {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--cloud: port must be a number 1-65535, got {port!r} in {text!r}")
    if resolve:
        try:
            socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as err:
            raise ValueError(f"--cloud: cannot resolve host {host!r} ({err.strerror or err})") \
                from None
    return host, int(port)


# --------------------------------------------------------------------------------------------
# Command line (``splitwise run-edge``: parsed here, so that an exported policy's edge imports
# no JAX)


def add_args(ap) -> None:
    """The flags of ``splitwise run-edge``."""
    from bridge.backoff import BackoffConfig

    def positive(kind):
        def parse(text):
            import argparse

            try:
                v = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") \
                    from None
            if not (math.isfinite(v) and v > 0):
                raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
            return v
        return parse

    def nonneg_int(text):
        import argparse

        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
        return int(text)

    b0 = BackoffConfig()
    ap.add_argument("--cloud", required=True, help="host:port of serve-cloud")
    ap.add_argument("--requests", type=positive(int), default=20, help="requests to run (> 0)")
    ap.add_argument("--trace", help="bandwidth trace file (none: unlimited bandwidth)")
    ap.add_argument("--policy", default="best-cut",
                    help="a registered policy name (`splitwise simulate --help` lists them), "
                         "checkpoint:DIR, or an exported policy onnx:FILE / torch:FILE "
                         "(`splitwise export`; runs without JAX)")
    ap.add_argument("--model", default="toy", help="toy, smollm2, or a GGUF path (as the cloud)")
    ap.add_argument("--key-file", help="shared key file (as the cloud's)")
    ap.add_argument("--profile-file", default="profiles/local.json",
                    help="this machine's profiles from `splitwise calibrate` (predictions, "
                         "an exported policy's memory masks); default %(default)s")
    ap.add_argument("--rtt-ms", type=float, default=20.0, help="emulated round-trip time, ms")
    ap.add_argument("--prompt-tokens", type=positive(int), default=16,
                    help="prompt length S, tokens")
    ap.add_argument("--new-tokens", type=positive(int), default=8, help="decode steps T, tokens")
    ap.add_argument("--arrival-rate", type=positive(float), default=1.0,
                    help="mean arrivals, requests per slot")
    ap.add_argument("--slot-s", type=positive(float), default=1.0,
                    help="slot length, s (emulated)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4"], default=None,
                    help="crossing precision override (default: the policy's)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (arrivals, prompts)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--predict", action="store_true",
                    help="with an exported policy: add the cost model's predictions after the "
                         "run (imports JAX then); other policies predict in the loop")
    runtime = "default: costmodel.retry.RetryConfig's"
    ap.add_argument("--retries", type=nonneg_int, default=None,
                    help=f"retries without progress before a request falls back to the edge "
                         f"({runtime} max_retries, {b0.max_retries})")
    ap.add_argument("--backoff-base", type=positive(float), default=None,
                    help=f"ceiling of the first retry's delay, s ({runtime} base_s)")
    ap.add_argument("--backoff-cap", type=positive(float), default=None,
                    help=f"largest retry delay ceiling, s ({runtime} cap_s)")
    ap.add_argument("--timeout", type=positive(float), default=None,
                    help=f"wait for the cloud's next frame before retrying, s ({runtime} "
                         "timeout_s; each step waits at least a multiple of its predicted "
                         "compute)")
    ap.add_argument("--privacy-layers", type=nonneg_int, default=0,
                    help="privacy floor, layers: the embedding and the first K layers stay on "
                         "the edge (0: none; a learned policy must have been trained with it)")
    ap.add_argument("--edge-memory-gb", type=positive(float), default=None,
                    help="memory the edge may hold, GB (weights + K/V cache; default: the "
                         "profile's mem_budget_gb): the policy plans within it and an edge "
                         "fallback that does not fit fails")
    ap.add_argument("--allow-edge-fallback", action="store_true",
                    help="when the cloud can never be used (wrong key, unreachable, model "
                         "mismatch), run every request on the edge and exit 0 instead of "
                         "failing")


def cli(args) -> int:
    """Run ``splitwise run-edge``; 0 when nothing was lost or duplicated, 3 when the cloud
    could never be used (without ``--allow-edge-fallback``), else 1."""
    import json
    import sys

    from bridge.backoff import BackoffConfig
    from bridge.blocks import make_executor
    from bridge.wire import read_key_file

    cloud = parse_addr(args.cloud, resolve=True)
    key = read_key_file(args.key_file) if args.key_file else None
    b0, c0 = BackoffConfig(), ClientConfig()

    def pick(value, default):
        return default if value is None else value

    backoff = BackoffConfig(base_s=pick(args.backoff_base, b0.base_s), factor=b0.factor,
                            cap_s=pick(args.backoff_cap, max(b0.cap_s, args.backoff_base or 0)),
                            max_retries=pick(args.retries, b0.max_retries), jitter=b0.jitter)
    client = dataclasses.replace(c0, key=key, timeout_s=pick(args.timeout, c0.timeout_s),
                                 backoff=backoff)
    cfg = EdgeConfig(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                     arrival=Arrivals(kind="poisson", rate=args.arrival_rate),
                     slot_s=args.slot_s, link=LinkConfig(rtt_ms=args.rtt_ms), client=client,
                     seed=args.seed, precision=args.precision,
                     profile_path=args.profile_file,
                     allow_edge_fallback=args.allow_edge_fallback,
                     privacy_layers=args.privacy_layers, edge_memory_gb=args.edge_memory_gb)
    ex = make_executor(args.model)
    result = run_edge(cloud, args.requests, args.trace, args.policy, cfg, executor=ex)
    if args.predict and result["predictions"] == "deferred":
        add_predictions(result, cfg, ex, args.trace)
    summary = {k: v for k, v in result.items() if k not in ("requests", "policy_log")}
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        for k, v in summary.items():
            print(f"{k:18s} {v}")
    bad = result["cloud_unusable"]
    if bad is not None and not args.allow_edge_fallback:
        why = {"auth": "wrong or missing key", "unreachable": "cloud unreachable",
               "model_mismatch": "model mismatch"}.get(bad["reason"], bad["reason"])
        print(f"splitwise run-edge: error: the policy needed the cloud at {args.cloud} and it "
              f"could never be used ({why}): {' '.join(str(bad['error']).split())}; "
              "--allow-edge-fallback runs on the edge instead", file=sys.stderr)
        return 3
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(allow_abbrev=False, prog="splitwise run-edge",
                                 description="run requests split between this edge and a cloud")
    add_args(ap)
    return cli(ap.parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
