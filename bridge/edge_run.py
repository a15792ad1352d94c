"""``splitwise run-edge``: requests arriving by a ``lyapunov.processes`` arrival process,
served one at a time through a ``bridge.edge_client.EdgeClient``, partitioned per slot by a
runtime policy, with the cost model's prediction of every request.
Design: ``docs/design.md §3 and §5``.

``run_edge(cloud_addr, requests, trace, policy, config)``: at the start of each slot with work,
the policy (``bridge.runtime_policy``) maps an ``Observation`` (last slot's measured bandwidth,
RTT, queue length, arrivals) to a ``costmodel`` partition used by the requests that start in
that slot (one at a time, FIFO: the edge serves its queue); each request's latency is
predicted by ``costmodel.costs.request_costs`` for the same partition and the link state of
the slot it started in, with the device profile of this machine (``profiles/local.json`` when
present, else ``LOCAL_DEFAULT``).
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
from bridge.runtime_policy import UNLIMITED_MBPS, Observation, make_policy, runtime_params
from bridge.transport import LinkConfig, LinkEmulator
from lyapunov.processes import ArrivalConfig

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


def local_profiles(path: str | Path = "profiles/local.json"):
    """(edge, cloud) ``DeviceProfile`` of this machine: the calibrated file if it exists, else
    ``LOCAL_DEFAULT``; both sides run on this machine, so they share the numbers."""
    from costmodel.profiles import load_profile, profile_from_dict

    p = Path(path)
    if p.exists():
        edge = load_profile(p, register=False)
        source = str(p)
    else:
        edge = profile_from_dict(dict(LOCAL_DEFAULT), origin="LOCAL_DEFAULT")
        source = "LOCAL_DEFAULT (assumed; no profiles/local.json)"
    cloud = dataclasses.replace(edge, role="cloud", name=f"{edge.name}-cloud")
    edge = dataclasses.replace(edge, role="edge", name=f"{edge.name}-edge")
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



NEVER_USABLE = ("auth", "unreachable", "model_mismatch", "protocol")  # fallback reasons


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """``splitwise run-edge`` settings (one frozen config; the CLI parses it).

    prompt_tokens, new_tokens: each request prefills S tokens then runs T decode steps
      (T + 1 generated tokens), as ``costmodel.link.Workload``.
    arrival: the arrival process, requests per slot (``lyapunov.processes.ArrivalConfig``:
      Poisson or bursty MMPP).
    slot_s: slot length, emulated seconds.
    link: RTT, burst, uplink ratio, time scale of the emulated link.
    client: timeouts, backoff, key, memory budget.
    precision: activation precision override ("fp32" for exactness runs); None: the
      policy's ``act_prec``.
    profile_path: device profile of this machine for the predictions.
    seed: arrivals, prompts and backoff jitter.
    allow_edge_fallback: when the cloud was never usable (no request served by it, and one
      fell back for a reason of ``NEVER_USABLE``: wrong or missing key, unreachable, model
      mismatch, protocol) and the policy needed it, keep running every request
      on the edge; False: stop after the first such request and report why
      (``cloud_unusable`` in the summary).
    """

    prompt_tokens: int = 16
    new_tokens: int = 8
    arrival: ArrivalConfig = ArrivalConfig(kind="poisson", rate=1.0)
    slot_s: float = 1.0
    link: LinkConfig = LinkConfig()
    client: ClientConfig = ClientConfig()
    precision: str | None = None
    profile_path: str = "profiles/local.json"
    seed: int = 0
    allow_edge_fallback: bool = True


def _percentile(xs, q) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.percentile(xs, q)) if xs else None


def arrival_times(n: int, arrival: ArrivalConfig, slot_s: float, seed: int) -> list[float]:
    """Emulated arrival times of ``n`` requests: counts per slot from the
    ``lyapunov.processes`` process of ``arrival``, spread uniformly inside each slot."""
    import jax

    from lyapunov.processes import arrival_mean_rate, make_arrivals, sample_path

    params = make_arrivals(arrival)
    rate = float(arrival_mean_rate(params))
    if not rate > 0:
        raise ValueError("the arrival process has mean rate 0: no request would ever arrive")
    rng = np.random.default_rng(seed)
    times: list[float] = []
    n_slots = max(8, int(2 * n / rate) + 8)
    key = jax.random.PRNGKey(seed)
    while len(times) < n:
        key, sub = jax.random.split(key)
        counts = np.asarray(sample_path(sub, params, n_slots))
        base = len(times) and (math.floor(times[-1] / slot_s) + 1)
        for k, c in enumerate(counts):
            slot = base + k
            times.extend(sorted((slot + rng.random(int(c))) * slot_s))
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
    from costmodel.accuracy import accuracy_profile
    from costmodel.link import Workload, make_link
    from costmodel.outage import RetryConfig, with_outage
    from costmodel.spec import edge_head_order

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
    edge_prof, cloud_prof, prof_source = local_profiles(config.profile_path)
    params = runtime_params(card, edge_prof, cloud_prof,
                            Workload(config.prompt_tokens, config.new_tokens), config.slot_s,
                            config.arrival, config.link.rtt_ms, config.link.up_ratio, trace)
    spec = params.spec
    order = edge_head_order(accuracy_profile(card).head_w, card.group_size)
    pol = make_policy(policy, params, card, config.link.up_ratio, config.seed)
    link_em = LinkEmulator(trace, config.link)
    rtt_ms = config.link.rtt_ms

    arrivals = arrival_times(n_req, config.arrival, config.slot_s, config.seed)
    results: dict[int, RequestResult] = {}
    records: list[dict] = []
    duplicated = 0
    lost_errors: list[str] = []
    not_run = served = 0
    unusable: dict | None = None
    cc = config.client
    wait_s = RetryConfig(cc.timeout_s, cc.backoff.base_s, cc.backoff.factor, cc.backoff.cap_s,
                         cc.backoff.max_retries, cc.backoff.jitter).expected_wait_s()
    partitions: Counter = Counter()
    queue_: deque[int] = deque()
    nxt = 0
    cur_slot, cur_part = None, None
    measured_upto = 0  # slots < measured_upto were reported to the policy
    t_wall0 = time.monotonic()

    def bw(t0: float, t1: float) -> float:
        return link_em.bandwidth_mbps(t0, t1)

    def arrived(j: int) -> int:
        """Arrivals during slot ``j`` (``arrivals`` is sorted)."""
        return (bisect.bisect_left(arrivals, (j + 1) * config.slot_s)
                - bisect.bisect_left(arrivals, j * config.slot_s))

    with EdgeClient(cloud_addr, ex, config.client, link_em) as client:
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
                    pol.measured(bw(j * config.slot_s, (j + 1) * config.slot_s), rtt_ms,
                                 arrived(j))
                measured_upto = slot
                s0 = slot * config.slot_s
                prev = (max(s0 - config.slot_s, 0.0), s0) if slot > 0 else (0.0, config.slot_s)
                obs = Observation(slot, bw(*prev), bw(s0, s0 + config.slot_s), rtt_ms,
                                  len(queue_), arrived(slot - 1) if slot > 0 else 0)
                cm_part = pol.decide(obs)
                if cm_part is None:  # no feasible partition for the policy: stay on the edge
                    from costmodel.partition import edge_only

                    cm_part = edge_only(ex.cfg.n_layers, ex.cfg.n_heads)
                cur_part = RunPartition.from_costmodel(cm_part, order, config.precision)
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
            cm = cur_part.to_costmodel()
            cm_spec = spec
            if cur_part.precision == "fp32":  # the cost model knows fp16/int8/int4 only
                cm_spec = spec.replace(act_bytes=spec.act_bytes.at[0].set(4.0))
            lk = make_link(min(bw_slot * config.link.up_ratio, UNLIMITED_MBPS), rtt_ms,
                           min(bw_slot, UNLIMITED_MBPS))
            caught = with_outage(cm, lk, cm_spec, wait_s)
            pred = float(caught.costs.latency_s)
            partitions[cur_part.describe()] += 1
            records.append({
                "index": i, "request_id": res.request_id, "status": res.status,
                "error": res.error, "arrival_s": arrivals[i], "start_s": start,
                "latency_s": res.latency_s,
                "sojourn_s": start - arrivals[i] + res.latency_s / config.link.time_scale,
                "predicted_s": pred if math.isfinite(pred) else None,
                "bw_mbps": bw_slot if math.isfinite(bw_slot) else None,
                "predicted_caught": bool(caught.caught),
                "partition": cur_part.describe(), "uses_cloud": cur_part.uses_cloud,
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
        "predicted_caught": sum(r["predicted_caught"] for r in records),
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
