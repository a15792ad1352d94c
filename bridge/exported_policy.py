"""Exported policies in the runtime, without JAX: ``--policy onnx:FILE`` and ``torch:FILE``
(files written by ``splitwise export``). Design: ``docs/design.md §4.5`` and ``§5``.

An edge that runs an exported policy needs NumPy and onnxruntime (or torch) only: this module,
``bridge.runtime_policy`` and ``bridge.edge_run`` import neither JAX nor Flax on that path
(``tests/bridge/test_exported_runtime.py`` checks ``sys.modules`` in a fresh process). What the
policy sees is built with the simulator's semantics:

- features: ``observe_features`` is the NumPy mirror of ``agents.slot_env.observe_features``
  (the same 17 scalars and ``[W, 4]`` history, float32), over a ``NumpyObserver`` that records
  the measured slots exactly as ``bridge.runtime_policy.SlotObserver`` does (EWMA of the
  link, bandwidth history, arrival-rate EWMA, slots since the last slot without throughput;
  the edge's heat and latency history as ``SlotObserver`` leaves them: the env's reset values);
- masks: ``mask_context`` mirrors ``agents.actions.mask_context`` (edge bytes of one layer per
  head-count bin and FFN side, the embedding matrix, the budget less its safety margin);
- the action: ``to_run_partition`` mirrors ``agents.actions.to_partition`` and
  ``bridge.blocks.RunPartition.from_costmodel`` (heads moved to the edge in the card's
  importance order).

The tests feed one history to both and compare features and masks. Constants that come from
the JAX side are written into the exported file by the exporter (``RUNTIME_KEY``: the card's
head order, the scenario's V, EWMA weights, history window and outage horizon, the activation
precisions and the budget margin), so nothing is copied by hand; the rest follows from the
runtime's own settings (card, edge profile file, request size, arrivals, RTT, trace).

One policy string resolves the same way everywhere: importing this module registers the
``onnx`` and ``torch`` loaders with ``lyapunov.registry`` (which imports no JAX itself); there
they give a ``lyapunov.policies.Policy`` (not jittable: the network runs in onnxruntime or
torch) for the simulator, and ``load_exported`` here is the one parser both use.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bridge.policy_io import INPUT_NAMES, OUTPUT_NAMES

PREFIXES = ("onnx", "torch")
CONFIG_KEY = "splitwise_config"  # the checkpoint's config.json (ONNX metadata / torch blob)
RUNTIME_KEY = "splitwise_runtime"  # the constants above (ONNX metadata / torch blob)
UNLIMITED_MBPS = 1e6  # bridge.runtime_policy.UNLIMITED_MBPS
EDGE, CLOUD = 0, 1


class ExportedPolicyError(ValueError):
    """An exported policy file that cannot drive this runtime (the message says why)."""


def is_exported(policy) -> bool:
    """Whether a ``--policy`` value names an exported file (``onnx:`` / ``torch:``)."""
    return isinstance(policy, str) and policy.split(":", 1)[0] in PREFIXES and ":" in policy


@dataclasses.dataclass(frozen=True)
class Exported:
    """A loaded exported policy: ``run(inputs) -> outputs`` on batch-first NumPy arrays
    (``bridge.policy_io`` names), the checkpoint's config and the runtime constants."""

    name: str
    fmt: str
    path: Path
    config: dict
    runtime: dict
    run: Callable[[dict], dict]

    @property
    def space(self) -> dict:
        return self.config["space"]

    @property
    def model(self) -> str | None:
        return self.runtime.get("model")


def load_exported(text: str, threads: int = 1) -> Exported:
    """``onnx:FILE`` or ``torch:FILE`` -> ``Exported``. ONNX runs in onnxruntime (the
    config and constants are the graph's metadata), torch loads the ``torch.save`` blob."""
    fmt, sep, arg = text.partition(":")
    if fmt not in PREFIXES or not sep or not arg:
        raise ExportedPolicyError(f"{text!r}: expected onnx:FILE or torch:FILE")
    path = Path(arg)
    if not path.is_file():
        raise ExportedPolicyError(f"{fmt}:{arg}: no such file")
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportedPolicyError(f"{text}: onnxruntime is not installed") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ExportedPolicyError(f"{text}: not a loadable ONNX file: {err}") from None
        meta = sess.get_modelmeta().custom_metadata_map
        config, runtime = meta.get(CONFIG_KEY), meta.get(RUNTIME_KEY)
        if config is None or runtime is None:
            raise ExportedPolicyError(f"{text}: no {CONFIG_KEY}/{RUNTIME_KEY} metadata: export "
                                      "it again with this version's `splitwise export`")
        config, runtime = json.loads(config), json.loads(runtime)

        def run(inputs: dict) -> dict:
            outs = sess.run(list(OUTPUT_NAMES), {k: inputs[k] for k in INPUT_NAMES})
            return dict(zip(OUTPUT_NAMES, outs, strict=True))
    else:
        try:
            import torch

            from bridge import torch_policy
        except ImportError:
            raise ExportedPolicyError(f"{text}: torch is not installed") from None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises pickle / runtime errors
            raise ExportedPolicyError(f"{text}: not a torch policy file: {err}") from None
        if not isinstance(blob, dict) or RUNTIME_KEY not in blob:
            raise ExportedPolicyError(f"{text}: no {RUNTIME_KEY} entry: export it again with "
                                      "this version's `splitwise export`")
        config, runtime = blob["config"], blob[RUNTIME_KEY]
        module = torch_policy.build(config, blob["state_dict"])

        def run(inputs: dict) -> dict:
            with torch.inference_mode():
                outs = module(*(torch.from_numpy(np.asarray(inputs[k])) for k in INPUT_NAMES))
            return {k: v.numpy() for k, v in zip(OUTPUT_NAMES, outs, strict=True)}
    return Exported(f"{fmt}:{path.name}", fmt, path, config, runtime, run)


# --------------------------------------------------------------------------------------------
# The runtime's constants (NumPy)


@dataclasses.dataclass(frozen=True)
class Constants:
    """What the features and masks need besides the measurements (``lyapunov.env.EnvParams``
    and ``costmodel.spec.CostSpec`` fields of the runtime scenario, as floats).

    bw_mean, rtt_mean: the scenario's mean downlink bandwidth (Mbit/s, capped) and RTT (ms);
    lam_mean: stationary mean arrivals per slot; V, ewma, lam_ewma, history, outage_horizon:
    the scenario's; headroom: edge budget / edge-only memory (capped at 2); layer_mem [K, 3],
    emb_mem, budget: the mask context; head_order [L, H]; precisions: activation precision
    names by index.
    """

    bw_mean: float
    rtt_mean: float
    lam_mean: float
    V: float
    ewma: float
    lam_ewma: float
    history: int
    outage_horizon: int
    headroom: float
    layer_mem: np.ndarray
    emb_mem: float
    budget: float
    head_order: np.ndarray
    precisions: tuple[str, ...]


def read_profile(path: str | Path | None, name: str | None = None) -> dict | None:
    """The edge profile (a dict of ``costmodel.profiles.DeviceProfile`` fields) in a profile
    file: the one named ``name``, else the first with role ``edge``, else the first; a file
    holds one profile or ``{"profiles": [...]}`` (``splitwise calibrate``). None: no file."""
    if path is None or not Path(path).is_file():
        return None
    p = Path(path)
    if p.suffix == ".toml":
        import tomllib

        data = tomllib.loads(p.read_text())
    else:
        data = json.loads(p.read_text())
    profiles = data["profiles"] if isinstance(data.get("profiles"), list) else [data]
    for pick in (lambda d: d.get("name") == name, lambda d: d.get("role", "edge") == "edge",
                 lambda d: True):
        for d in profiles:
            if pick(d):
                return d
    raise ExportedPolicyError(f"{path}: no profile in the file")


def arrival_mean(arrival) -> float:
    """Stationary mean arrivals per slot of an arrival config (``lyapunov.processes.
    ArrivalConfig`` fields: Poisson ``rate``; MMPP the chain's stationary mix)."""
    if arrival.kind == "mmpp":
        p_lh, p_hl = arrival.p_lo_to_hi, arrival.p_hi_to_lo
        return (p_hl * arrival.rate_lo + p_lh * arrival.rate_hi) / (p_lh + p_hl)
    return float(arrival.rate)


def layer_memory(card, profile: dict, tokens: int, heads, ffn) -> np.ndarray:
    """Edge bytes of one layer with ``heads`` query heads on the edge and FFN side ``ffn``
    (0 edge, 1 cloud, 2 split: (m - 1)/m of the FFN weights): weights at the edge's
    precision and the K/V cache of its K/V heads for ``tokens`` tokens (mirror of
    ``costmodel.costs.structure_terms``)."""
    d, dh, m = card.d_model, card.head_dim, card.n_ffn_mats
    group = card.n_heads // card.n_kv_heads
    wb, kb = profile["weight_bits"] / 8.0, profile["kv_bits"] / 8.0
    k = np.asarray(heads, np.float64)
    f = np.asarray(ffn)
    g_e = np.floor((k + group - 1) / group)
    frac = np.select([f == 0, f == 2], [1.0, (m - 1.0) / m], 0.0)
    return wb * ((k + g_e) * 2.0 * d * dh + frac * m * d * card.d_ff) + g_e * 2.0 * dh * tokens * kb


def constants(exported: Exported, card, profile: dict, prompt_tokens: int, new_tokens: int,
              arrival, rtt_ms: float, trace=None, slot_s: float = 1.0) -> Constants:
    """The ``Constants`` of the runtime scenario (as ``bridge.runtime_policy.runtime_params``
    builds its ``EnvParams``)."""
    rt = exported.runtime
    if trace is None:
        bw_mean = UNLIMITED_MBPS
    else:
        from lyapunov.traces import resample  # NumPy only

        bw_mean = float(np.mean(resample(trace, slot_s)))
    tokens = prompt_tokens + new_tokens
    wb = profile["weight_bits"] / 8.0
    emb = wb * card.vocab * card.d_model
    full = card.n_layers * float(layer_memory(card, profile, tokens, card.n_heads, 0)) + 2 * emb
    budget = profile["mem_budget_gb"] * 1e9
    counts = np.asarray(exported.space["head_counts"])
    mem = layer_memory(card, profile, tokens, counts[:, None], np.arange(3)[None, :])
    f32 = np.float32
    return Constants(
        bw_mean=float(f32(min(bw_mean, UNLIMITED_MBPS))), rtt_mean=float(f32(rtt_ms)),
        lam_mean=float(f32(arrival_mean(arrival))), V=float(rt["V"]), ewma=float(rt["ewma"]),
        lam_ewma=float(rt["lam_ewma"]), history=int(rt["history"]),
        outage_horizon=int(rt["outage_horizon"]), headroom=float(min(budget / full, 2.0)),
        layer_mem=mem.astype(f32), emb_mem=float(f32(emb)),
        budget=float(f32(budget * (1.0 - rt["mem_rtol"]))),
        head_order=np.asarray(rt["head_order"], np.int64),
        precisions=tuple(rt["act_precisions"]))


# --------------------------------------------------------------------------------------------
# Observation and features (NumPy mirrors)


@dataclasses.dataclass
class Link:
    """A measured link (``lyapunov.processes.LinkSample`` / ``costmodel.link.LinkState``)."""

    bw_up: float
    bw_down: float
    rtt: float
    share: float = 1.0
    up: bool = True


class NumpyObserver:
    """``bridge.runtime_policy.SlotObserver`` without JAX: ``measured`` records a finished
    slot, ``observation(slot, queue, bw_now, rtt)`` gives the causal observation's fields."""

    def __init__(self, c: Constants, up_ratio: float = 1.0):
        self.c, self.up_ratio = c, float(up_ratio)
        self.last: Link | None = None
        self.ewma: Link | None = None
        self.bw_hist: deque[float] = deque(maxlen=c.history)
        self.lam_hat = float(np.float32(c.lam_mean))
        self.since_outage = int(c.history)
        # ``lyapunov.env`` Obs.heat / Obs.lat_hist. The runtime scenario has no throttling
        # mismatch (throttle_max 1), where the env defines heat as 0; ``SlotObserver`` keeps
        # the latency history at its reset value (zeros), so the mirror does too.
        self.heat = 0.0
        self.lat_hist = np.zeros(c.history, np.float32)

    def sample(self, bw_mbps: float, rtt_ms: float) -> Link:
        bw = float(np.float32(min(float(bw_mbps), UNLIMITED_MBPS)))
        return Link(float(np.float32(bw * self.up_ratio)), bw, float(np.float32(rtt_ms)), 1.0,
                    bw > 0)

    @staticmethod
    def carried(s: Link) -> bool:
        return s.up and s.bw_up > 0 and s.bw_down > 0

    def measured(self, bw_mbps: float, rtt_ms: float, arrivals: int) -> None:
        s = self.sample(bw_mbps, rtt_ms)
        self.since_outage = (min(self.since_outage + 1, self.c.outage_horizon)
                             if self.carried(s) else 0)
        a = np.float32(self.c.ewma)
        if self.ewma is None:
            self.ewma = dataclasses.replace(s)
        else:
            o = self.ewma
            mix = [float((np.float32(1.0) - a) * np.float32(x) + a * np.float32(y))
                   for x, y in ((o.bw_up, s.bw_up), (o.bw_down, s.bw_down), (o.rtt, s.rtt),
                                (o.share, s.share))]
            self.ewma = Link(*mix)
        self.last = s
        self.bw_hist.append(s.bw_down)
        b = float(self.c.lam_ewma)
        self.lam_hat = (1.0 - b) * self.lam_hat + b * float(arrivals)

    def observation(self, slot: int, queue: int, bw_now_mbps: float, rtt_ms: float) -> dict:
        """The causal observation at the start of ``slot`` (``lyapunov.env.observe`` of
        ``SlotObserver.state``): queue, last link, EWMA link, bandwidth history, share
        history, arrival estimate, heat, latency history."""
        link_t = self.sample(bw_now_mbps, rtt_ms)
        last = self.last if self.last is not None else link_t
        ewma = self.ewma if self.ewma is not None else link_t
        n = self.c.history
        hist = list(self.bw_hist) or [last.bw_down]
        hist = [hist[0]] * (n - len(hist)) + hist
        return {"queue": float(queue), "last": last, "ewma": ewma,
                "bw_hist": np.asarray(hist, np.float32), "share_hist": np.ones(n, np.float32),
                "lam_hat": float(np.float32(self.lam_hat)), "t": slot,
                "heat": float(np.float32(self.heat)), "lat_hist": self.lat_hist.copy()}


def _log_share(share):
    return 1.0 + np.log(np.maximum(np.asarray(share, np.float32), np.float32(1e-4))) / 3.5


def observe_features(ob: dict, c: Constants) -> tuple[np.ndarray, np.ndarray]:
    """(scalars [17], history [W, 4]) float32: ``agents.slot_env.observe_features`` of the
    observation (virtual queues 0: the runtime has no budgets)."""
    f = np.float32
    bw_s, rtt_s = f(max(c.bw_mean, 1e-3)), f(max(c.rtt_mean, 1e-3))
    last, ewma = ob["last"], ob["ewma"]
    scalars = np.array([
        np.log1p(f(ob["queue"])), 0.0, 0.0, 0.0, np.log1p(f(c.V)),
        f(ob["lam_hat"]) / f(max(c.lam_mean, 1e-6)),
        np.log1p(f(last.bw_down) / bw_s), np.log1p(f(ewma.bw_down) / bw_s),
        np.log1p(f(last.bw_down)) / f(5.0), np.log1p(f(ewma.bw_down)) / f(5.0),
        f(last.rtt) / rtt_s, f(ewma.rtt) / rtt_s,
        _log_share(last.share), _log_share(ewma.share), f(last.up), f(c.headroom),
        f(ob.get("heat", 0.0)),
    ], np.float32)
    bw = ob["bw_hist"].astype(np.float32)
    lat = np.asarray(ob.get("lat_hist", np.zeros_like(bw)), np.float32)
    hist = np.stack([np.log1p(bw / bw_s), _log_share(ob["share_hist"]),
                     (bw <= 0).astype(np.float32), np.log1p(lat / f(10.0))],
                    axis=-1).astype(np.float32)
    return scalars, hist


def legacy_inputs(scalars: np.ndarray, hist: np.ndarray, shapes) -> tuple:
    """The features a network of feature ``shapes`` (n_scalars, hist_len, hist_ch) was trained
    on: the entries appended since (the thermal state, the latency channel) dropped, as
    ``agents.policy_loader.legacy_features`` does; ExportedPolicyError for any other mismatch."""
    if shapes is None:
        return scalars, hist
    n_s, n_w, n_c = (int(v) for v in shapes)
    if (16 <= n_s <= scalars.shape[-1] and 3 <= n_c <= hist.shape[-1]
            and n_w == hist.shape[-2]):
        return scalars[..., :n_s], hist[..., :n_c]
    raise ExportedPolicyError(
        f"exported policy expects {n_s} scalars and a [{n_w}, {n_c}] history; this runtime "
        f"observes {scalars.shape[-1]} and {list(hist.shape[-2:])}: re-export the checkpoint")


def policy_inputs(ob: dict, c: Constants, mask_outage: bool, shapes=None) -> dict:
    """The exported network's inputs (batch 1) for one observation; ``shapes``: the
    checkpoint's (n_scalars, hist_len, hist_ch), older feature sets trimmed to it."""
    scalars, hist = legacy_inputs(*observe_features(ob, c), shapes)
    outage = (not ob["last"].up) and mask_outage
    return {"scalars": scalars[None], "history": hist[None],
            "layer_mem": c.layer_mem[None].astype(np.float32),
            "emb_mem": np.asarray([c.emb_mem], np.float32),
            "budget": np.asarray([c.budget], np.float32), "outage": np.asarray([outage])}


def to_counts(out: dict, space: dict) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """(edge_heads [L], ffn [L], act_prec, embed_edge) of the network's greedy action
    (``agents.actions.to_partition``)."""
    n_l, n_h = int(space["n_layers"]), int(space["n_heads"])
    prec = int(np.asarray(out["prec"]).reshape(-1)[0])
    if space["kind"] == "layerwise":
        cut = int(np.asarray(out["cut"]).reshape(-1)[0])
        cloud_only = cut == n_l + 1
        on_edge = (np.arange(n_l) < cut) & (not cloud_only)
        return (np.where(on_edge, n_h, 0), np.where(on_edge, EDGE, CLOUD), prec,
                not cloud_only)
    low = np.asarray(out["low"]).reshape(-1)
    counts = np.asarray(space["head_counts"], np.int64)
    embed = int(np.asarray(out["embed"]).reshape(-1)[0])
    return counts[low // 3], low % 3, prec, embed == EDGE


# --------------------------------------------------------------------------------------------
# The runtime policy


def check_model(exported: Exported, card, text: str) -> None:
    """ExportedPolicyError unless the exported policy was trained for ``card``."""
    sp = exported.space
    shape = (int(sp["n_layers"]), int(sp["n_heads"]))
    if (exported.model not in (None, card.name)) or shape != (card.n_layers, card.n_heads):
        raise ExportedPolicyError(
            f"--policy {text}: trained for model {exported.model or 'unrecorded'} "
            f"({shape[0]} layers x {shape[1]} heads); the runtime runs {card.name} "
            f"({card.n_layers} layers x {card.n_heads} heads): train one for {card.name}")


def runtime_policy(text: str, card, profile: dict, prompt_tokens: int, new_tokens: int,
                   arrival, rtt_ms: float, trace=None, slot_s: float = 1.0,
                   up_ratio: float = 1.0, precision: str | None = None,
                   privacy_layers: int = 0):
    """The ``bridge.runtime_policy.RuntimePolicy`` of ``onnx:FILE`` / ``torch:FILE``; its
    ``decide`` returns a ``bridge.blocks.RunPartition`` (heads in the card's order).
    ``privacy_layers``: the runtime's privacy floor, which must be the one the policy was
    trained with (its masks hold that floor)."""
    from bridge.blocks import RunPartition
    from bridge.runtime_policy import Observation, RuntimePolicy

    exp = load_exported(text)
    check_model(exp, card, text)
    trained = int(exp.space.get("privacy_layers", 0))
    if trained != int(privacy_layers):
        raise ExportedPolicyError(f"{text}: trained with a privacy floor of {trained} layers, "
                                  f"the runtime asks for {privacy_layers} (--privacy-layers)")
    c = constants(exp, card, profile, prompt_tokens, new_tokens, arrival, rtt_ms, trace,
                  slot_s)
    obs = NumpyObserver(c, up_ratio)
    mask_outage = bool(exp.space.get("mask_outage", True))

    def decide(o: Observation):
        ob = obs.observation(o.slot, o.queue, o.bw_now_mbps, o.rtt_ms)
        heads, ffn, prec, embed = to_counts(
            exp.run(policy_inputs(ob, c, mask_outage, exp.config.get("shapes"))), exp.space)
        return RunPartition.from_counts(heads, ffn, precision or c.precisions[prec], embed,
                                        c.head_order)

    decide(Observation(0, UNLIMITED_MBPS, UNLIMITED_MBPS, float(rtt_ms), 1, 0))
    return RuntimePolicy(exp.name, decide, obs.measured, False)


# --------------------------------------------------------------------------------------------
# The registry's loaders (simulator side: JAX is imported when a loader runs)


def _registry_policy(text: str):
    """``lyapunov.policies.Policy`` of an exported file on ``lyapunov.env`` observations: the
    JAX features and masks (``agents``), the exported network, ``agents.actions.
    to_partition``."""
    import jax.numpy as jnp

    from agents.actions import Action, mask_context, to_partition
    from agents.checkpoint import space_and_net
    from agents.slot_env import observe_features as jax_features
    from agents.slot_env import observed_outage
    from lyapunov.policies import Policy

    exp = load_exported(text)

    space, _, _ = space_and_net(exp.config, text)

    def act(key, obs, params):
        x = jax_features(obs, params)
        scalars, hist = legacy_inputs(np.asarray(x.scalars), np.asarray(x.history),
                                      exp.config.get("shapes"))
        ctx = mask_context(params.spec, space, observed_outage(obs))
        inputs = {"scalars": scalars[None], "history": hist[None],
                  "layer_mem": np.asarray(ctx.layer_mem)[None],
                  "emb_mem": np.asarray(ctx.emb_mem)[None],
                  "budget": np.asarray(ctx.budget)[None],
                  "outage": np.asarray(ctx.outage)[None]}
        out = exp.run(inputs)
        a = Action(*(jnp.asarray(np.asarray(out[k])[0], jnp.int32)
                     for k in ("embed", "modes", "prec", "low", "cut")))
        return to_partition(a, space)

    return Policy(exp.name, act, clairvoyant=False, jittable=False)


def _register() -> None:
    from lyapunov import registry  # imports no JAX

    for prefix in PREFIXES:
        if prefix not in registry.loaders():
            registry.register_loader(  # help: registry.KNOWN_LOADERS
                prefix, lambda arg, _p=prefix, **kw: [_registry_policy(f"{_p}:{arg}")])


_register()

