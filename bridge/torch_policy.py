"""The trained partitioning policy (``agents.networks.ActorCritic``) as a torch module.
Design: ``docs/design.md §4.5``.

``TorchPolicy`` reproduces the Flax network's forward pass and its greedy decision exactly:

- encoder: two VALID 1-D convolutions over the link history (channels-last in Flax, so the
  torch ``Conv1d`` sees ``[B, C, W]`` and the output is transposed back before flattening),
  ReLU, then ``tanh(torso2(tanh(torso1([scalars, hist]))))``;
- heads: the high-level logits (``high``), the low-level logits of the per-layer joint options
  and of the side transitions (``low1``/``low2``, conditioned on the one-hot high-level choice
  for the hierarchical kind), the critic (``critic1``/``critic2``);
- greedy decision: the sequential masked choices of ``agents.actions`` (embedding side,
  precision, group modes with their Markov chain, then the layers with theirs; or the cut of
  the layer-wise kind), with the memory masks computed from the mask-context inputs
  (``layer_mem``, ``emb_mem``, ``budget``, ``outage``: ``agents.actions.MaskContext``). Every
  loop is over a static count (groups, layers), so the module traces to a fixed ONNX graph.
- the tensor-parallel action space (``space.tp``, action-space version 2): group mode tp, per
  layer F = 3 + len(phi_grid) FFN options (the edge's shares of the FFN columns), the
  residual state both in the low level's chain, the LM head's memory on a tp last layer
  charged where the embedding is on the edge. A config with an action-space version this
  module cannot interpret is refused (``agents.checkpoint.READABLE_ACTION_SPACE_VERSIONS``).

Parameters come from an ``agents.checkpoint`` directory (``params.npz`` + ``config.json``):
``state_dict_from_flax`` maps the Flax leaves (``kernel [in, out]``, conv ``kernel [k, in,
out]``) to torch's layout (``weight [out, in]``, ``[out, in, k]``). The module's inputs and
outputs (batch-first) are ``bridge.policy_io.INPUT_NAMES`` and ``OUTPUT_NAMES``.

Imports torch (bridge only); nothing here imports JAX.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agents.space_geometry import FFN_EDGE, SpaceGeometry

EDGE, CLOUD = 0, 1
MODE_EDGE, MODE_CLOUD, MODE_SPLIT, MODE_TP = 0, 1, 2, 3
READABLE_ACTION_SPACE_VERSIONS = (1, 2)  # agents.checkpoint
NEG = -1e9  # agents.actions.NEG
_KEY = re.compile(r"\['(\w+)'\]\['(kernel|bias)'\](?:\.value)?")


class PolicyConfig(SpaceGeometry):
    """What the module needs from a checkpoint's config.json (``space``, ``net``, ``shapes``),
    as plain attributes; the sizes and option tables are ``SpaceGeometry``'s (NumPy only, the
    same as the JAX agents')."""

    def __init__(self, config: dict):
        sp = config["space"]
        version = config.get("action_space_version", 1)
        self.tp: bool = bool(sp.get("tp", False))
        if (isinstance(version, bool) or version not in READABLE_ACTION_SPACE_VERSIONS
                or (version == 1 and self.tp)):
            raise ValueError(f"action-space version {version!r} cannot be interpreted by this "
                             f"module (it reads versions {READABLE_ACTION_SPACE_VERSIONS})")
        self.phi_grid: tuple[int, ...] = tuple(int(j) for j in sp.get("phi_grid", ()))
        self.kind: str = sp["kind"]
        self.n_layers: int = int(sp["n_layers"])
        self.n_heads: int = int(sp["n_heads"])
        self.n_groups: int = int(sp["n_groups"])
        self.head_counts: tuple[int, ...] = tuple(int(c) for c in sp["head_counts"])
        self.group_of_layer: tuple[int, ...] = tuple(int(g) for g in sp["group_of_layer"])
        self.privacy_layers: int = int(sp["privacy_layers"])
        self.tied: bool = bool(sp["tied"])
        self.mask_outage: bool = bool(sp["mask_outage"])
        self.precisions: tuple[int, ...] = tuple(int(q) for q in sp.get("precisions", (0, 1, 2)))
        self.stay_bonus: float = float(sp.get("stay_bonus", 0.0))
        self.split_bias: float = float(sp.get("split_bias", 0.0))
        net = config["net"]
        self.hidden: int = int(net["hidden"])
        self.low_hidden: int = int(net["low_hidden"])
        self.conv_channels: int = int(net["conv_channels"])
        self.kernel: int = int(net["kernel"])
        self.n_scalars, self.hist_len, self.hist_ch = (int(s) for s in config["shapes"])

    @property
    def n_cond(self) -> int:
        return (2 + self.n_modes * self.n_groups + 3) if self.kind == "hier" else 0


def state_dict_from_flax(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Torch state dict of ``TorchPolicy`` from the arrays of a checkpoint's params.npz."""
    out = {}
    for key, a in arrays.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise ValueError(f"unexpected parameter {key!r} in the checkpoint")
        layer, kind = m.groups()
        a = np.asarray(a, np.float32)
        if kind == "bias":
            out[f"{layer}.bias"] = torch.from_numpy(a.copy())
        elif a.ndim == 3:  # conv [k, in, out] -> [out, in, k]
            out[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 1, 0)))
        else:  # dense [in, out] -> [out, in]
            out[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(a.T))
    return out


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.where(mask, logits, torch.full_like(logits, NEG)), dim=-1)


def _select(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``where(cond, a, b)`` for bool tensors as logic (onnxruntime has no bool Where)."""
    return (cond & a) | (~cond & b)


def step_mask(used, mem, rest, allowed, prefer, budget):
    """bool [B, M]: ``agents.actions.step_mask`` with a leading batch axis (used, budget [B])."""
    m = allowed & (used[:, None] + mem + rest <= budget[:, None])
    inf = torch.full_like(mem, float("inf"))
    tot = mem + rest
    least = allowed & (tot <= torch.where(allowed, tot, inf).min(dim=-1, keepdim=True).values)
    m = _select(m.any(dim=-1, keepdim=True), m, least)
    mp = m & prefer
    return _select(mp.any(dim=-1, keepdim=True), mp, m)


def masked_greedy(logits, mem, rest, allowed, prefer, used0, budget, trans=None, state_of=None,
                  prev0=None):
    """The mode of N sequential masked choices (``agents.actions.masked_choices`` with neither
    key nor actions), batched. logits, mem, rest, allowed, prefer: [B, N, M]; used0, budget
    [B]; optional Markov chain trans [B, S, M], state_of int [M], prev0 int [B].
    Returns int64 [B, N]."""
    used, prev = used0, prev0
    out = []
    for n in range(logits.shape[1]):
        mask = step_mask(used, mem[:, n], rest[:, n], allowed[:, n], prefer[:, n], budget)
        lg = logits[:, n]
        if trans is not None:
            idx = prev[:, None, None].expand(-1, 1, trans.shape[-1])
            lg = lg + torch.gather(trans, 1, idx)[:, 0]
        a = torch.argmax(_masked_log_softmax(lg, mask), dim=-1)
        out.append(a)
        used = used + torch.gather(mem[:, n], 1, a[:, None])[:, 0]
        if trans is not None:
            prev = state_of[a]
    return torch.stack(out, dim=1)


def _rest_after(min_mem: torch.Tensor) -> torch.Tensor:
    """[B, N]: sum of min_mem over the steps after each step (``agents.actions._rest_after``)."""
    return torch.flip(torch.cumsum(torch.flip(min_mem, [1]), 1), [1]) - min_mem


def _one_hot(idx: torch.Tensor, n: int) -> torch.Tensor:
    return (idx[..., None] == torch.arange(n)).to(torch.float32)


class TorchPolicy(nn.Module):
    """``agents.networks.ActorCritic`` and its greedy decision in torch (batch-first)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        k, ch = cfg.kernel, cfg.conv_channels
        out_len = cfg.hist_len - 2 * (k - 1)
        self.conv1 = nn.Conv1d(cfg.hist_ch, ch, k)
        self.conv2 = nn.Conv1d(ch, ch, k)
        self.torso1 = nn.Linear(cfg.n_scalars + out_len * ch, cfg.hidden)
        self.torso2 = nn.Linear(cfg.hidden, cfg.hidden)
        self.high = nn.Linear(cfg.hidden, cfg.n_high)
        if cfg.kind != "layerwise":
            self.low1 = nn.Linear(cfg.hidden + cfg.n_cond, cfg.low_hidden)
            self.low2 = nn.Linear(cfg.low_hidden, (cfg.n_layers + cfg.n_states) * cfg.n_low)
        self.critic1 = nn.Linear(cfg.hidden, cfg.hidden)
        self.critic2 = nn.Linear(cfg.hidden, 1)
        opts = torch.arange(cfg.n_low)
        self.register_buffer("opts", opts, persistent=False)
        side, _, is_tp = cfg.low_options()  # agents.space_geometry: one option table
        self.register_buffer("ffn_edge", torch.from_numpy(side == FFN_EDGE), persistent=False)
        self.register_buffer("is_tp", torch.from_numpy(is_tp), persistent=False)
        self.register_buffer("group_of_layer", torch.tensor(cfg.group_of_layer), persistent=False)
        self.register_buffer("privacy", torch.arange(cfg.n_layers) < cfg.privacy_layers,
                             persistent=False)
        onehot = np.eye(cfg.n_groups, dtype=np.float32)[list(cfg.group_of_layer)]
        self.register_buffer("group_onehot", torch.from_numpy(onehot), persistent=False)

    # ---- networks -----------------------------------------------------------------------

    def encode(self, scalars: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """float [B, hidden] from scalars [B, F] and history [B, W, C] (channels last)."""
        h = torch.relu(self.conv2(torch.relu(self.conv1(history.transpose(1, 2)))))
        h = h.transpose(1, 2).reshape(h.shape[0], -1)
        z = torch.cat([scalars, h], dim=-1)
        return torch.tanh(self.torso2(torch.tanh(self.torso1(z))))

    def low_logits(self, h: torch.Tensor, cond: torch.Tensor | None):
        """(float [B, L, K*F] per-layer logits, float [B, S, K*F] side transitions)."""
        z = torch.cat([h, cond], dim=-1) if cond is not None else h
        out = self.low2(torch.tanh(self.low1(z)))
        n_l = self.cfg.n_layers
        out = out.reshape(out.shape[0], n_l + self.cfg.n_states, self.cfg.n_low)
        return out[:, :n_l], out[:, n_l:]

    def value(self, h: torch.Tensor) -> torch.Tensor:
        return self.critic2(torch.tanh(self.critic1(h)))[:, 0]

    # ---- masks (agents.actions, batched) --------------------------------------------------

    def _lm_mem(self, emb_mem, embed):
        if self.cfg.tied:
            return torch.where(embed == EDGE, torch.zeros_like(emb_mem), emb_mem)
        return emb_mem

    def _layer_options(self, layer_mem, emb_mem, embed):
        c = self.cfg
        b = layer_mem.shape[0]
        mem = layer_mem.reshape(b, 1, c.n_low).expand(b, c.n_layers, c.n_low)
        last = torch.arange(c.n_layers)[:, None] == c.n_layers - 1
        last_edge = (last & self.ffn_edge[None, :])[None] | (
            (last & self.is_tp[None, :])[None] & (embed == EDGE)[:, None, None])
        lm = self._lm_mem(emb_mem, embed)[:, None, None]
        mem = mem + torch.where(last_edge, lm, torch.zeros_like(lm))
        only_full = self.opts[None, :] == c.full_edge
        allowed = (~self.privacy[:, None] | only_full)[None].expand(b, -1, -1)
        return mem, allowed

    def _least_layers(self, layer_mem, emb_mem, embed):
        mem, allowed = self._layer_options(layer_mem, emb_mem, embed)
        return torch.where(allowed, mem, torch.full_like(mem, float("inf"))).min(-1).values.sum(-1)

    def _layer_steps(self, layer_mem, emb_mem, outage, embed, modes):
        c = self.cfg
        mem, allowed = self._layer_options(layer_mem, emb_mem, embed)
        opts = self.opts[None, None, :]
        prefer = torch.ones_like(allowed)
        if modes is not None:
            mode_l = modes[:, self.group_of_layer][:, :, None]
            is_tp = self.is_tp[None, None, :]
            allowed = _select(mode_l == MODE_EDGE, opts == c.full_edge,
                              _select(mode_l == MODE_CLOUD, opts == c.full_cloud,
                                      _select(mode_l == MODE_TP, allowed & is_tp,
                                              allowed & ~is_tp)))
        else:
            prefer = ((opts == c.full_edge) | ~outage[:, None, None]).expand_as(allowed)
        min_mem = torch.where(allowed, mem, torch.full_like(mem, float("inf"))).min(-1).values
        rest = _rest_after(min_mem)[:, :, None].expand_as(mem)
        return mem, rest, allowed, prefer

    def _group_steps(self, layer_mem, emb_mem, outage, embed):
        c = self.cfg
        mem, priv_allowed = self._layer_options(layer_mem, emb_mem, embed)
        full = mem[:, :, c.full_edge]
        inf = torch.full_like(mem, float("inf"))
        is_tp = self.is_tp[None, None, :]
        least = torch.where(priv_allowed & ~is_tp, mem, inf).min(-1).values
        g_full, g_least = full @ self.group_onehot, least @ self.group_onehot
        priv = self.privacy.to(torch.float32) @ self.group_onehot
        size = self.group_onehot.sum(0)
        cols = [g_full, torch.zeros_like(g_full), g_least]
        ok = [torch.ones(c.n_groups, dtype=torch.bool), priv == 0, priv < size]
        if c.tp:
            cols.append(torch.where(is_tp.expand_as(mem), mem, inf).min(-1).values
                        @ self.group_onehot)
            ok.append(priv == 0)
        g_mem = torch.stack(cols, dim=2)
        allowed = torch.stack(ok, dim=1)[None].expand(g_mem.shape[0], -1, -1)
        prefer = ((torch.arange(c.n_modes) == MODE_EDGE)[None, None, :]
                  | ~outage[:, None, None]).expand_as(allowed)
        min_mem = torch.where(allowed, g_mem, torch.full_like(g_mem, float("inf"))).min(-1).values
        rest = _rest_after(min_mem)[:, :, None].expand_as(g_mem)
        return g_mem, rest, allowed, prefer

    def _prec_steps(self, b):
        z = torch.zeros(b, 1, 3)
        allowed = torch.tensor([q in self.cfg.precisions for q in range(3)])
        return z, z, allowed[None, None].expand(b, 1, 3), torch.ones(b, 1, 3, dtype=torch.bool)

    def _embed_steps(self, layer_mem, emb_mem, outage):
        b = emb_mem.shape[0]
        mem = torch.stack([emb_mem, torch.zeros_like(emb_mem)], dim=1)[:, None]
        edge = torch.zeros(b, dtype=torch.int64)
        rest = torch.stack([self._least_layers(layer_mem, emb_mem, edge),
                            self._least_layers(layer_mem, emb_mem, edge + CLOUD)], dim=1)[:, None]
        allowed = torch.tensor([[True, self.cfg.privacy_layers == 0]])[None].expand(b, 1, 2)
        prefer = torch.stack([torch.ones_like(outage), ~outage], dim=1)[:, None]
        return mem, rest, allowed, prefer

    def _cut_steps(self, layer_mem, emb_mem, outage):
        c = self.cfg
        n_l = c.n_layers
        full = layer_mem[:, -1, EDGE][:, None]
        cut = torch.arange(n_l + 2)[None].to(torch.float32)
        lm = self._lm_mem(emb_mem, torch.zeros_like(outage, dtype=torch.int64))[:, None]
        mem = (emb_mem[:, None] + torch.clamp(cut, max=n_l) * full
               + torch.where(cut == n_l, lm, torch.zeros_like(lm)))
        mem = torch.where(cut == n_l + 1, torch.zeros_like(mem), mem)
        cuts = np.arange(n_l + 2)
        allowed = (cuts >= c.privacy_layers) & ((cuts <= n_l) | (c.privacy_layers == 0))
        allowed = torch.from_numpy(allowed)[None].expand_as(mem)
        prefer = (cut == n_l) | ~outage[:, None]
        z = torch.zeros_like(mem)
        return mem[:, None], z[:, None], allowed[:, None], prefer[:, None]

    # ---- forward ----------------------------------------------------------------------------

    def forward(self, scalars, history, layer_mem, emb_mem, budget, outage):
        """Logits, value and greedy action of a batch of observations.

        scalars float [B, F], history float [B, W, C]; mask context: layer_mem float [B, K, F],
        emb_mem float [B], budget float [B], outage bool [B] (already and-ed with mask_outage,
        as ``agents.actions.mask_context`` does). Returns (high_logits [B, n_high],
        low_logits [B, L, K*F], trans_logits [B, S, K*F] (zeros for the layer-wise kind),
        value [B], embed [B], modes [B, G], prec [B], low [B, L], cut [B]); actions int64.
        """
        c = self.cfg
        b = scalars.shape[0]
        h = self.encode(scalars, history)
        flat = self.high(h)
        g, n_m = c.n_groups, c.n_modes
        i0, i1, i2, i3 = 2, 2 + n_m * g, 5 + n_m * g, flat.shape[-1] - n_m * n_m
        lg_embed, lg_modes = flat[:, :i0], flat[:, i0:i1].reshape(b, g, n_m)
        lg_prec, lg_cut = flat[:, i1:i2], flat[:, i2:i3]
        lg_trans = flat[:, i3:].reshape(b, n_m, n_m)
        zero_i = torch.zeros(b, dtype=torch.int64)
        prec = masked_greedy(lg_prec[:, None], *self._prec_steps(b), torch.zeros(b), budget)[:, 0]
        if c.kind == "layerwise":
            cut = masked_greedy(lg_cut[:, None], *self._cut_steps(layer_mem, emb_mem, outage),
                                torch.zeros(b), budget)[:, 0]
            z = torch.zeros(b, c.n_layers, c.n_low)
            return (flat, z, z[:, :2], self.value(h), zero_i,
                    torch.zeros(b, g, dtype=torch.int64), prec,
                    torch.zeros(b, c.n_layers, dtype=torch.int64), cut)
        embed = masked_greedy(lg_embed[:, None], *self._embed_steps(layer_mem, emb_mem, outage),
                              torch.zeros(b), budget)[:, 0]
        used0 = torch.where(embed == EDGE, emb_mem, torch.zeros_like(emb_mem))
        modes = None
        cond = None
        if c.kind == "hier":
            trans = lg_trans + c.stay_bonus * torch.eye(n_m)
            split_prior = torch.tensor([0.0, 0.0] + [c.split_bias] * (n_m - 2))
            modes = masked_greedy(lg_modes + split_prior,
                                  *self._group_steps(layer_mem, emb_mem, outage, embed),
                                  used0, budget, trans, torch.arange(n_m), embed)
            cond = torch.cat([_one_hot(embed, 2), _one_hot(modes, n_m).reshape(b, -1),
                              _one_hot(prec, 3)], dim=-1)
        ll, tr = self.low_logits(h, cond)
        rows = [self.opts == c.full_edge, self.opts == c.full_cloud]
        rows += [self.is_tp] if c.tp else []
        prior = c.stay_bonus * torch.stack(rows).to(torch.float32)
        # chain state after an option: 0 edge, 1 cloud (cloud or split FFN), 2 both (tp)
        state_of = torch.where(self.ffn_edge, 0, torch.where(self.is_tp, 2, 1)).to(torch.int64)
        low = masked_greedy(ll, *self._layer_steps(layer_mem, emb_mem, outage, embed, modes),
                            used0, budget, tr + prior, state_of, embed)
        modes = modes if modes is not None else torch.zeros(b, g, dtype=torch.int64)
        return flat, ll, tr, self.value(h), embed, modes, prec, low, zero_i


def from_checkpoint(path: str | Path) -> TorchPolicy:
    """``TorchPolicy`` with the parameters of an ``agents.checkpoint`` directory (read with
    NumPy and json only)."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    with np.load(path / "params.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return build(config, state_dict_from_flax(arrays))


def build(config: dict, state_dict: dict[str, torch.Tensor]) -> TorchPolicy:
    """A module from a checkpoint's config dict and a torch state dict (strict: every
    parameter present, every shape matching)."""
    module = TorchPolicy(PolicyConfig(config))
    module.load_state_dict(state_dict, strict=True)
    return module.eval()


def save(module: TorchPolicy, config: dict, path: str | Path) -> Path:
    """Write ``{"config": ..., "state_dict": ...}`` with ``torch.save`` (loadable with
    ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "config": config, "state_dict": module.state_dict()}, path)
    return path


def load(path: str | Path) -> TorchPolicy:
    """The module written by ``save`` (or by ``splitwise export --format torch``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return build(blob["config"], blob["state_dict"])
