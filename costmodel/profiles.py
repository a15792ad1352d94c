"""Device profiles: the roofline and power constants of edge devices and of the two kinds of
"cloud" (a remote datacenter GPU and a nearby MEC edge server).

Every constant cites its public source in the `sources` mapping (field -> citation) or says it
is derived or assumed. Efficiency factors are fitted to public end-to-end measurements (see
`/shared/data/device-measurements.md` and `tests/costmodel/test_sanity.py`). Users add profiles
from a JSON or TOML file with the same keys (`load_profile`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax.numpy as jnp
from flax import struct

from costmodel import records


class ProfileError(ValueError):
    """A device profile is malformed; the message names the field."""


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Roofline, power, memory and price constants of one device.

    name: registry key.
    role: "edge" or "cloud".
    peak_tflops: peak throughput of the inference path (TFLOP/s or TOP/s of the dtype used).
    mem_bw_gbs: DRAM/HBM bandwidth, GB/s.
    eff_compute: achieved fraction of peak_tflops.
    eff_memory: achieved fraction of mem_bw_gbs.
    overhead_us: fixed cost of one phase (kernel launches, scheduling), microseconds.
    msg_overhead_us: software cost of sending or receiving one message over the link on this
      device (socket call, framing, (de)serialization), microseconds; a crossing pays the
      sender's and the receiver's (`CostSpec.msg_overhead_s`). Default `MSG_OVERHEAD_US`.
    weight_bits: bits per weight as stored on this device (scales included).
    kv_bits: bits per KV-cache element.
    power_active_w: power while computing, W (edge energy model).
    power_idle_w: power while waiting on the cloud, W.
    power_tx_w: extra radio power while transmitting, W.
    mem_budget_gb: memory available to the model (weights + KV cache), GB.
    rtt_ms: typical round-trip time to this device from an edge client (cloud roles).
    price_per_gpu_s: operating cost of one GPU-second, USD (cloud roles).
    price_per_gb: operating cost of one GB sent or received, USD (cloud roles).
    sources: citation per field.
    """

    name: str
    role: str
    peak_tflops: float
    mem_bw_gbs: float
    eff_compute: float
    eff_memory: float
    overhead_us: float
    weight_bits: float
    kv_bits: float
    power_active_w: float
    power_idle_w: float
    power_tx_w: float
    mem_budget_gb: float
    rtt_ms: float = 0.0
    price_per_gpu_s: float = 0.0
    price_per_gb: float = 0.0
    msg_overhead_us: float = 25.0
    sources: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.role not in ("edge", "cloud"):
            raise ProfileError(f"profile {self.name!r}: field 'role' must be 'edge' or 'cloud', "
                               f"got {self.role!r}")
        positive = ("peak_tflops", "mem_bw_gbs", "weight_bits", "kv_bits", "mem_budget_gb")
        fractions = ("eff_compute", "eff_memory")
        nonneg = ("overhead_us", "msg_overhead_us", "power_active_w", "power_idle_w",
                  "power_tx_w", "rtt_ms", "price_per_gpu_s", "price_per_gb")
        for field in positive + fractions + nonneg:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ProfileError(f"profile {self.name!r}: field {field!r} must be a number, "
                                   f"got {value!r}")
            if field in positive and not value > 0:
                raise ProfileError(f"profile {self.name!r}: field {field!r} must be > 0, "
                                   f"got {value!r}")
            if field in fractions and not 0 < value <= 1:
                raise ProfileError(f"profile {self.name!r}: field {field!r} must be in (0, 1], "
                                   f"got {value!r}")
            if field in nonneg and (value < 0 or math.isinf(value)):
                raise ProfileError(f"profile {self.name!r}: field {field!r} must be finite and "
                                   f">= 0, got {value!r}")

    def params(self) -> ProfileParams:
        """The numbers the JAX cost functions use, in SI units, as a pytree."""
        f = jnp.float32
        return ProfileParams(
            flops=f(self.peak_tflops * 1e12 * self.eff_compute),
            bw=f(self.mem_bw_gbs * 1e9 * self.eff_memory),
            overhead_s=f(self.overhead_us * 1e-6), msg_overhead_s=f(self.msg_overhead_us * 1e-6),
            weight_bytes=f(self.weight_bits / 8), kv_bytes=f(self.kv_bits / 8),
            p_active=f(self.power_active_w), p_idle=f(self.power_idle_w),
            p_tx=f(self.power_tx_w), mem_budget=f(self.mem_budget_gb * 1e9),
            price_gpu_s=f(self.price_per_gpu_s), price_byte=f(self.price_per_gb / 1e9))


@struct.dataclass
class ProfileParams:
    """Achieved throughputs and constants of one device (SI units), a JAX pytree."""

    flops: jnp.ndarray  # achieved FLOP/s
    bw: jnp.ndarray  # achieved bytes/s
    overhead_s: jnp.ndarray
    msg_overhead_s: jnp.ndarray  # per message sent or received
    weight_bytes: jnp.ndarray  # bytes per weight
    kv_bytes: jnp.ndarray  # bytes per KV element
    p_active: jnp.ndarray
    p_idle: jnp.ndarray
    p_tx: jnp.ndarray
    mem_budget: jnp.ndarray  # bytes
    price_gpu_s: jnp.ndarray
    price_byte: jnp.ndarray


MSG_OVERHEAD_US = 25.0
# The default of `msg_overhead_us` (every built-in profile uses it until the runtime's
# calibration measures the pair): a message through the Linux kernel TCP stack costs tens of
# microseconds of per-packet protocol and system-call work on each side (Menon & Zwaenepoel,
# USENIX ATC 2008, per-packet vs per-byte overhead; Kalia et al., eRPC, NSDI 2019: kernel-TCP
# RPCs in the tens of us, ~2 us with kernel bypass), plus framing and a tensor copy in the
# runtime. Published tensor-parallel runs on LANs are dominated by these per-message costs for
# small synchronisations (Ye et al., Galaxy, INFOCOM 2024).
_MSG_SRC = ("assumed 25 us per message and side: kernel TCP send/receive path (Menon & "
            "Zwaenepoel ATC 2008; Kalia et al. eRPC NSDI 2019) plus framing; measured by the "
            "runtime's calibration")

_PI5_SRC = {
    "peak_tflops": "derived: 4x Cortex-A76 @2.4 GHz, 2x128-bit NEON SDOT = 64 int8 op/cycle/core",
    "eff_compute": "fit: Llama-2-7B Q4_0 prefill ~8.1 tok/s (llama.cpp PR 6928)",
    "mem_bw_gbs": "LPDDR4X-4267 32-bit: ~17 GB/s theoretical; ~11.4 GB/s sustained measured",
    "eff_memory": "fit: ollama decode llama3.1 8B 2.17 tok/s, llama2 13B 1.36 tok/s "
                  "(geerlingguy/ai-benchmarks issue 7)",
    "weight_bits": "Q4_0 GGUF: 4 bits + fp16 scale per 32 weights = 4.5 bits",
    "power_active_w": "peak 10.9-11.9 W during LLM decode (geerlingguy/sbc-reviews issue 21)",
    "power_idle_w": "assumed: ~2.7 W idle (Raspberry Pi 5 board, geerlingguy sbc-reviews)",
    "power_tx_w": "assumed: Wi-Fi uplink radio ~1 W (Huang et al., MobiSys 2012 power model)",
    "mem_budget_gb": "8 GB board minus OS and runtime (assumed 1 GB)",
    "overhead_us": "assumed: llama.cpp CPU graph node dispatch, tens of us per phase",
}
_ORIN_SRC = {
    "peak_tflops": "derived: NVIDIA datasheet 100 TOPS int8 sparse (GPU+DLA) -> ~25 TFLOP/s "
                   "dense fp16-equivalent for the GPU path (halved for sparsity and int8->fp16)",
    "eff_compute": "assumed (prefill not published for NX); same order as AGX llama.cpp",
    "mem_bw_gbs": "NVIDIA datasheet: 102.4 GB/s LPDDR5",
    "eff_memory": "fit: proxy AGX Orin llama.cpp Llama-2-7B 4-bit 22.5 tok/s on 204.8 GB/s "
                  "(nvidia-holoscan/holohub issue 170)",
    "weight_bits": "4-bit group quantization (q4, MLC / llama.cpp): 4.5 bits with scales",
    "power_active_w": "NVIDIA datasheet: 10-25 W modes; 25 W mode",
    "power_idle_w": "assumed: ~5 W module idle",
    "power_tx_w": "assumed: Wi-Fi uplink radio ~1 W (Huang et al., MobiSys 2012)",
    "mem_budget_gb": "16 GB shared LPDDR5 minus OS/CUDA context (assumed 2 GB)",
    "overhead_us": "fit: TinyLlama-1.1B q4 30-45 tok/s with MLC (dusty-nv/NanoLLM issue 38): "
                   "~250 us per phase brings the 45-phase decode pass to ~40 tok/s",
}
_S23_SRC = {
    "peak_tflops": "no published NPU peak; effective rate fit to Qualcomm AI Hub Llama-v2-7B "
                   "prefill 1917.8 ms per 1024 tokens (eff_compute therefore 1.0)",
    "mem_bw_gbs": "derived: LPDDR5X 64-bit bus at 4200 MHz ~67 GB/s (not published)",
    "eff_memory": "fit: AI Hub Llama-2-7B w4a16 104.95 ms per generated token",
    "weight_bits": "w4a16 (Qualcomm AI Hub Llama-v2-7B-Chat card)",
    "power_active_w": "assumed: ~6 W SoC during NPU LLM inference (MELT, arXiv 2403.12844)",
    "power_idle_w": "assumed: ~0.6 W screen-off idle",
    "power_tx_w": "assumed: 5G/LTE uplink radio ~2.5 W (Huang et al., MobiSys 2012)",
    "mem_budget_gb": "8 GB phone; Android app budget assumed 4 GB",
    "overhead_us": "assumed: QNN graph per-phase dispatch",
}
_A100_SRC = {
    "peak_tflops": "NVIDIA A100 SXM datasheet: 312 TFLOP/s dense bf16",
    "mem_bw_gbs": "NVIDIA A100 80GB SXM datasheet: 2039 GB/s HBM2e",
    "eff_compute": "assumed 0.5 (typical achieved MFU for single-request prefill)",
    "eff_memory": "assumed 0.7 (typical achieved HBM bandwidth in decode)",
    "weight_bits": "fp16/bf16 serving",
    "power_active_w": "NVIDIA datasheet: 400 W board power (not charged to the edge)",
    "rtt_ms": "assumed: 40 ms WAN RTT to a regional datacenter (20-100 ms range)",
    "price_per_gpu_s": "AWS p4d.24xlarge on-demand 32.77 USD/h for 8 A100 -> 1.14e-3 USD/GPU-s",
    "price_per_gb": "AWS data transfer out to internet, first tier 0.09 USD/GB",
    "overhead_us": "assumed: CUDA kernel launches per phase (~10 us)",
    "mem_budget_gb": "NVIDIA datasheet: 80 GB",
}
_L4_SRC = {
    "peak_tflops": "NVIDIA L4 datasheet: 121 TFLOP/s fp16 dense (242 with sparsity)",
    "mem_bw_gbs": "NVIDIA L4 datasheet: 300 GB/s GDDR6",
    "eff_compute": "assumed 0.5",
    "eff_memory": "assumed 0.7",
    "weight_bits": "int8 weights so that LLaMA-13B fits in 24 GB",
    "power_active_w": "NVIDIA L4 datasheet: 72 W",
    "rtt_ms": "assumed: one Wi-Fi 6 / 5G hop, 0.5-10 ms; 5 ms typical",
    "price_per_gpu_s": "GCP g2-standard-4 (1x L4) ~0.71 USD/h -> 1.97e-4 USD/GPU-s",
    "price_per_gb": "assumed: bytes inside the access network are free",
    "overhead_us": "assumed: CUDA kernel launches per phase (~10 us)",
    "mem_budget_gb": "NVIDIA L4 datasheet: 24 GB",
}

_RTX4090_SRC = {
    "peak_tflops": "NVIDIA Ada Lovelace architecture whitepaper, Appendix A (GeForce RTX 4090): "
                   "165.2 TFLOP/s dense fp16 tensor with fp32 accumulate (330.3 with fp16 "
                   "accumulate, 82.6 TFLOP/s fp32 non-tensor)",
    "mem_bw_gbs": "NVIDIA RTX 4090 specifications: 24 GB GDDR6X, 384-bit, 21 Gbit/s = 1008 GB/s",
    "eff_compute": "assumed 0.5 (as the datacenter and MEC profiles)",
    "eff_memory": "assumed 0.7 (as the datacenter and MEC profiles)",
    "weight_bits": "int8 weights so that LLaMA-13B fits in 24 GB",
    "power_active_w": "NVIDIA RTX 4090 specifications: 450 W total graphics power",
    "mem_budget_gb": "24 GB GDDR6X minus desktop and CUDA context (assumed 2 GB)",
    "rtt_ms": "assumed: one Wi-Fi 6 (802.11ax) hop to a desktop on the same LAN, 1-5 ms; 2 ms",
    "price_per_gpu_s": "electricity only: 450 W at 0.15 USD/kWh = 1.9e-5 USD/GPU-s (assumed "
                       "tariff)",
    "price_per_gb": "bytes inside the home LAN are free",
    "overhead_us": "assumed: CUDA kernel launches per phase (~10 us)",
}


def _peer_src(base: dict, device: str, lan: str) -> dict:
    """Sources of a peer profile: the device's own, plus what being a peer changes."""
    return {**{k: f"same as {device}: {v}" for k, v in base.items()},
            "rtt_ms": lan,
            "price_per_gpu_s": "a second device of the user's own: not priced",
            "price_per_gb": "bytes inside the LAN are free"}


_BUILTIN = [
    DeviceProfile("rpi5", "edge", peak_tflops=0.614, mem_bw_gbs=17.0, eff_compute=0.17,
                  eff_memory=0.62, overhead_us=40.0, weight_bits=4.5, kv_bits=16,
                  power_active_w=11.0, power_idle_w=2.7, power_tx_w=1.0, mem_budget_gb=7.0,
                  sources=_PI5_SRC),
    DeviceProfile("orin-nx", "edge", peak_tflops=25.0, mem_bw_gbs=102.4, eff_compute=0.3,
                  eff_memory=0.41, overhead_us=250.0, weight_bits=4.5, kv_bits=16,
                  power_active_w=25.0, power_idle_w=5.0, power_tx_w=1.0, mem_budget_gb=14.0,
                  sources=_ORIN_SRC),
    DeviceProfile("galaxy-s23", "edge", peak_tflops=7.2, mem_bw_gbs=67.0, eff_compute=1.0,
                  eff_memory=0.47, overhead_us=100.0, weight_bits=4.0, kv_bits=16,
                  power_active_w=6.0, power_idle_w=0.6, power_tx_w=2.5, mem_budget_gb=4.0,
                  sources=_S23_SRC),
    DeviceProfile("datacenter", "cloud", peak_tflops=312.0, mem_bw_gbs=2039.0, eff_compute=0.5,
                  eff_memory=0.7, overhead_us=10.0, weight_bits=16, kv_bits=16,
                  power_active_w=400.0, power_idle_w=0.0, power_tx_w=0.0, mem_budget_gb=80.0,
                  rtt_ms=40.0, price_per_gpu_s=1.14e-3, price_per_gb=0.09, sources=_A100_SRC),
    DeviceProfile("mec", "cloud", peak_tflops=121.0, mem_bw_gbs=300.0, eff_compute=0.5,
                  eff_memory=0.7, overhead_us=10.0, weight_bits=8, kv_bits=16,
                  power_active_w=72.0, power_idle_w=0.0, power_tx_w=0.0, mem_budget_gb=24.0,
                  rtt_ms=5.0, price_per_gpu_s=1.97e-4, price_per_gb=0.0, sources=_L4_SRC),
    # A second device of the same kind used as the "cloud" (two-device tensor parallelism).
    DeviceProfile("pi5-peer", "cloud", peak_tflops=0.614, mem_bw_gbs=17.0, eff_compute=0.17,
                  eff_memory=0.62, overhead_us=40.0, weight_bits=4.5, kv_bits=16,
                  power_active_w=11.0, power_idle_w=2.7, power_tx_w=1.0, mem_budget_gb=7.0,
                  rtt_ms=0.5, sources=_peer_src(
                      _PI5_SRC, "rpi5", "assumed: Gigabit Ethernet LAN, 0.2-0.5 ms ping")),
    DeviceProfile("orin-peer", "cloud", peak_tflops=25.0, mem_bw_gbs=102.4, eff_compute=0.3,
                  eff_memory=0.41, overhead_us=250.0, weight_bits=4.5, kv_bits=16,
                  power_active_w=25.0, power_idle_w=5.0, power_tx_w=1.0, mem_budget_gb=14.0,
                  rtt_ms=0.5, sources=_peer_src(
                      _ORIN_SRC, "orin-nx", "assumed: Gigabit Ethernet LAN, 0.2-0.5 ms ping")),
    DeviceProfile("rtx4090-lan", "cloud", peak_tflops=165.2, mem_bw_gbs=1008.0,
                  eff_compute=0.5, eff_memory=0.7, overhead_us=10.0, weight_bits=8, kv_bits=16,
                  power_active_w=450.0, power_idle_w=0.0, power_tx_w=0.0, mem_budget_gb=22.0,
                  rtt_ms=2.0, price_per_gpu_s=1.9e-5, price_per_gb=0.0, sources=_RTX4090_SRC),
]
for _p in _BUILTIN:
    _p.sources.setdefault("msg_overhead_us", _MSG_SRC)

PROFILES: dict[str, DeviceProfile] = {p.name: p for p in _BUILTIN}


def get_profile(name: str, role: str | None = None) -> DeviceProfile:
    """Return a registered profile; an unknown name (or wrong role) lists the valid ones."""
    valid = sorted(n for n, p in PROFILES.items() if role is None or p.role == role)
    prof = PROFILES.get(name)
    if prof is None or (role is not None and prof.role != role):
        kind = f"{role} device" if role else "device"
        raise ProfileError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
    return prof


def profile_from_dict(data: dict, origin: str = "<dict>") -> DeviceProfile:
    """Build a profile from a mapping with the dataclass's field names; unknown keys are
    errors."""
    return records.from_dict(DeviceProfile, data, origin, "profile", ProfileError)


def load_profiles(path: str | Path, register: bool = True) -> list[DeviceProfile]:
    """Every profile in a .json or .toml file (optionally registering each by name): the file
    holds one profile's fields, or ``{"profiles": [...]}`` with several (``splitwise
    calibrate`` writes the local edge and its loopback cloud, ``local`` and ``local-cloud``)."""
    data = records.read_mapping(path, ProfileError)
    many = data.get("profiles") if isinstance(data, dict) else None
    if many is not None:
        if not isinstance(many, list) or not many or not all(isinstance(d, dict) for d in many):
            raise ProfileError(f"{path}: 'profiles' must be a non-empty list of profiles")
        if set(data) != {"profiles"}:
            raise ProfileError(f"{path}: a file with 'profiles' holds nothing else, got "
                               f"{sorted(set(data) - {'profiles'})}")
    profs = [profile_from_dict(d, origin=f"{path}[{i}]" if many is not None else str(path))
             for i, d in enumerate(many if many is not None else [data])]
    names = [q.name for q in profs]
    if len(set(names)) != len(names):
        raise ProfileError(f"{path}: profile names repeat: {names}")
    if register:
        PROFILES.update({q.name: q for q in profs})
    return profs


def load_profile(path: str | Path, register: bool = True) -> DeviceProfile:
    """The first profile of a .json or .toml file (``load_profiles``: every profile in it is
    registered by name when ``register``)."""
    return load_profiles(path, register)[0]
