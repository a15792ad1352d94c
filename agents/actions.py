"""Action spaces of the learned partitioners and their mapping to `costmodel.partition.Partition`
(the partition of docs/design.md §1; the learned policies of §4.5).

Three kinds, one `Action` pytree (fields a kind does not use stay 0):

- ``hier`` (the hierarchical actor): the L layers are cut into G groups of consecutive layers
  (layer l is in group ``l * G // L``, so group sizes differ by at most one). The *high level*
  picks the embedding side, per group a mode in {edge, cloud, split} (and tp in a
  tensor-parallel space), and one activation precision. The *low level* picks, for every
  layer of a split (tp) group, one joint option ``j = b * F + o``: the edge head count
  ``head_counts[b]`` and the FFN option o: o < 3 the FFN side f = o in {edge, cloud, split}
  (split groups), o >= 3 the tensor-parallel FFN with the edge's share of the columns
  ``phi_grid[o - 3] / TP_GRID`` (tp groups; the residual stream then lives on both sides,
  docs/design.md §2.8). F = 3 in the paper's space, 3 + len(phi_grid) with tp. Layers of
  edge (cloud) groups are forced to (H heads, FFN edge) ((0, FFN cloud)).
- ``flat_head`` (ablation, no hierarchy): embedding side, precision and the per-layer joint
  option for every layer, from one actor.
- ``layerwise`` (the layer-wise DRL baseline): one categorical over L + 2 cuts (cut c < L+1:
  embedding and layers < c on the edge, the rest on the cloud, c = L is edge-only; c = L + 1 is
  cloud-only with the embedding on the cloud) and the precision. It never has tp options.

The tensor-parallel space (``ActionSpace.tp``) follows the scenario's option space
(``lyapunov.env.EnvParams.tp``) unless ``ActionConfig.tp`` forces it. Its shares of the FFN
columns are the grid ``phi_grid``: ``phi_bins = P > 0`` takes the P interior points of
``round(linspace(0, TP_GRID, P + 2))`` (P = 7: eighths of the columns, j = 2, 4, .., 14 in
units of 1/TP_GRID); ``phi_bins = 0`` every share 1..TP_GRID-1 of the cost model. The same
argument as for the head counts: the costs are piecewise linear in the share, and a 15-way
share on top of the head bins would spread exploration thin.

Head counts. ``head_bins = K > 0`` uses the grid ``round(linspace(0, H, K))`` (0 and H always
in it); ``head_bins = 0`` uses every count 0..H. The default K = 9 (eighths of the heads):
latency and energy are piecewise linear in the count (the roofline of the two sides), so the
best count on the grid is within H/16 heads of the exact optimum, while a 33- or 41-way
categorical per layer spreads exploration over many near-equivalent options and quadruples
the low-level output layer. The exact grid is one flag away for comparison.

Masks (infeasible options are never sampled). Edge memory couples the layers (it is additive
over them plus the embedding and the LM head), so masking is *sequential and autoregressive*:
choices are made in a fixed order (embedding, groups, precision, then layers in order), and at
each step an option is allowed only if the memory already committed plus the option's memory
plus the least memory any completion needs (``rest``: layers forced onto the edge by the
privacy floor, and forced groups) fits the budget. This is exact: every sampled action fits,
and every action that fits has positive probability (no conservative per-layer share). The LM
head runs on the side of the last layer's output (on the embedding's side when the output is on
both sides, after a tp layer), so its memory is charged to the last layer's FFN-on-edge options
(and to its tp options when the embedding is on the edge), after the embedding side is known. A
tp layer's edge memory is its edge heads plus its share phi of the FFN weights
(``costmodel.costs.structure_terms``). The cloud's memory budget is not masked (the built-in
clouds hold the whole model; the environment charges an infeasible partition). The privacy
floor (embedding and the first ``privacy_layers`` layers on the edge) is a hard mask. An outage
observed in the previous slot is a soft preference (``mask_outage``): only options without a
link crossing are allowed (edge-only), unless that is memory-infeasible, in which case the
memory mask alone applies. Each step keeps at least one option (the least-memory allowed one)
so a distribution always exists. Forced steps have one option: log-probability 0, entropy 0.

The log-probability of an action is the sum over all steps of the masked log-softmax of the
option taken; entropies are summed likewise (the entropy of the factored, masked
distribution along the sampled path).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.space_geometry import SpaceGeometry
from costmodel.costs import structure_terms
from costmodel.partition import CLOUD, EDGE, SPLIT, TP, TP_GRID, Partition
from costmodel.spec import CostSpec

MODE_EDGE, MODE_CLOUD, MODE_SPLIT, MODE_TP = 0, 1, 2, 3
KINDS = ("hier", "flat_head", "layerwise")
NEG = -1e9  # logit of a masked option (finite: no NaN in gradients or entropies)
MEM_RTOL = 1e-5  # safety margin of the budget check against float32 summation order


@dataclasses.dataclass(frozen=True)
class ActionConfig:
    """Action space of a learned partitioner.

    kind: "hier" (hierarchical), "flat_head" (per-layer heads and FFN, no hierarchy) or
      "layerwise" (one cut point + precision).
    n_groups: G, groups of consecutive layers of the hierarchical high level (clipped to L).
    head_bins: K head-count options per layer on the grid round(linspace(0, H, K)); 0 = all H+1.
    mask_outage: after a slot in outage, allow only actions without link crossings.
    stay_bonus: prior logit added to staying on the side of the previous group (layer):
      mode edge after edge, cloud after cloud; for layers, (H, edge) after the residual ended
      on the edge and (0, cloud) after it ended on the cloud. Crossings cost at least an RTT,
      so runs of one side are likelier to be good; the learned transition logits start at 0.
    split_bias: prior logit added to the split mode (and the tp mode) of every group (hier).
      Negative: the high level starts out preferring whole-group placements and refines into
      splits as it learns; random splits at WAN RTTs are so slow that, explored too often
      early on, they teach the policy to stay on the edge before it finds the cloud.
    tp: the tensor-parallel options (group mode tp, FFN shares phi; hier and flat_head): None
      follows the scenario (``EnvParams.tp``), True / False force them on / off.
    phi_bins: P edge shares of a tp FFN on the grid of the module docstring; 0 = all
      TP_GRID - 1 shares of the cost model.
    """

    kind: Literal["hier", "flat_head", "layerwise"] = "hier"
    n_groups: int = 4
    head_bins: int = 9
    mask_outage: bool = True
    stay_bonus: float = 1.0
    split_bias: float = -1.0
    tp: bool | None = None
    phi_bins: int = 7

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ActionConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_groups < 1:
            raise ValueError(f"ActionConfig.n_groups must be >= 1, got {self.n_groups}")
        if self.head_bins == 1 or self.head_bins < 0:
            raise ValueError(f"ActionConfig.head_bins must be 0 or >= 2, got {self.head_bins}")
        if self.tp is not None and not isinstance(self.tp, bool):
            raise ValueError(f"ActionConfig.tp must be None, True or False, got {self.tp!r}")
        if not 0 <= self.phi_bins < TP_GRID:
            raise ValueError(f"ActionConfig.phi_bins must be in [0, {TP_GRID - 1}], got "
                             f"{self.phi_bins}")


@dataclasses.dataclass(frozen=True)
class ActionSpace(SpaceGeometry):
    """Static sizes of an action space (hashable; derived once from a CostSpec and a config).

    head_counts: the K edge head counts a layer option can take (ascending, 0 and H included).
    group_of_layer: the group index of each layer.
    precisions: the activation precisions the scenario allows (others are masked).
    tp: the tensor-parallel options are in the space; phi_grid: their edge shares of the FFN
      columns in units of 1/TP_GRID (empty without tp). Checkpoints written before tp
      existed have neither (a paper-space policy).
    The derived sizes and option tables (n_ffn, n_low, full_edge, ffn_options, ...) are
    ``agents.space_geometry.SpaceGeometry``'s, shared with the exported torch policy.
    """

    kind: str
    n_layers: int
    n_heads: int
    n_groups: int
    head_counts: tuple[int, ...]
    group_of_layer: tuple[int, ...]
    privacy_layers: int
    tied: bool
    mask_outage: bool
    precisions: tuple[int, ...] = (0, 1, 2)
    stay_bonus: float = 0.0
    split_bias: float = 0.0
    tp: bool = False
    phi_grid: tuple[int, ...] = ()


def phi_grid(phi_bins: int) -> tuple[int, ...]:
    """Edge shares of a tp FFN in units of 1/TP_GRID (module docstring)."""
    if phi_bins == 0:
        return tuple(range(1, TP_GRID))
    pts = np.unique(np.round(np.linspace(0, TP_GRID, phi_bins + 2)).astype(int))
    return tuple(int(j) for j in pts if 0 < j < TP_GRID)


def make_space(spec: CostSpec, cfg: ActionConfig, precisions=(0, 1, 2),
               tp: bool = False) -> ActionSpace:
    """The action space of `cfg` for the model of `spec` and the allowed precisions; `tp`: the
    scenario's option space (``EnvParams.tp``), used unless ``cfg.tp`` forces one (the
    layer-wise kind never has tp options)."""
    n_l, n_h = spec.n_layers, spec.n_heads
    if cfg.head_bins == 0:
        counts = np.arange(n_h + 1)
    else:
        counts = np.unique(np.round(np.linspace(0, n_h, cfg.head_bins)).astype(int))
    g = min(cfg.n_groups, n_l)
    groups = tuple(int(l * g // n_l) for l in range(n_l))
    use_tp = bool(tp if cfg.tp is None else cfg.tp) and cfg.kind != "layerwise"
    return ActionSpace(cfg.kind, n_l, n_h, g, tuple(int(c) for c in counts), groups,
                       int(spec.privacy_layers), spec.tied, cfg.mask_outage,
                       tuple(sorted(int(q) for q in precisions)), float(cfg.stay_bonus),
                       float(cfg.split_bias), use_tp, phi_grid(cfg.phi_bins) if use_tp else ())


@struct.dataclass
class Action:
    """A sampled action (any kind; unused fields are 0).

    embed: int32 [] 0 = embedding on the edge, 1 = on the cloud.
    modes: int32 [G] per-group mode (hier; MODE_TP only in a tp space).
    prec: int32 [] activation precision index.
    low: int32 [L] per-layer joint option b * F + o (hier, flat_head; ActionSpace.n_ffn).
    cut: int32 [] cut index in [0, L + 1] (layerwise).
    """

    embed: jnp.ndarray
    modes: jnp.ndarray
    prec: jnp.ndarray
    low: jnp.ndarray
    cut: jnp.ndarray


@struct.dataclass
class MaskContext:
    """What the masks need from one slot: memory of the options and the constraints.

    layer_mem: float [K, F] edge bytes of one layer per (head bin, FFN option).
    emb_mem: float [] edge bytes of the embedding (or of the LM head) matrix.
    budget: float [] edge memory budget, bytes (with the MEM_RTOL margin).
    outage: bool [] the previous slot was in outage (and mask_outage is on).
    """

    layer_mem: jnp.ndarray
    emb_mem: jnp.ndarray
    budget: jnp.ndarray
    outage: jnp.ndarray


def mask_context(spec: CostSpec, space: ActionSpace, outage=False) -> MaskContext:
    """Memory tables of `space` under `spec`; `outage`: bool [] link down in the last slot."""
    k = jnp.asarray(space.head_counts)[:, None]
    f, j, _ = space.ffn_options()
    _, mem = structure_terms(k, jnp.asarray(f)[None, :], spec, 0.0, 0.0, jnp.asarray(j)[None, :])
    emb = spec.edge.weight_bytes * spec.vocab * spec.d_model
    return MaskContext(jnp.broadcast_to(mem, (space.n_bins, space.n_ffn)).astype(jnp.float32),
                       jnp.asarray(emb, jnp.float32),
                       jnp.asarray(spec.edge.mem_budget * (1.0 - MEM_RTOL), jnp.float32),
                       jnp.asarray(outage, bool) & space.mask_outage)


@struct.dataclass
class Steps:
    """A sequence of N categorical choices of up to M options each.

    mem: float [N, M] memory the option commits; rest: float [N, M] least memory any
    completion needs after choosing it; allowed: bool [N, M] hard mask (structure, privacy);
    prefer: bool [N, M] soft mask (outage), applied when it leaves an option.
    """

    mem: jnp.ndarray
    rest: jnp.ndarray
    allowed: jnp.ndarray
    prefer: jnp.ndarray


@struct.dataclass
class Choices:
    """Result of a sequence of masked choices: actions int32 [N], logp float [N],
    entropy float [N], mask bool [N, M]."""

    actions: jnp.ndarray
    logp: jnp.ndarray
    entropy: jnp.ndarray
    mask: jnp.ndarray


def step_mask(used, mem, rest, allowed, prefer, budget):
    """bool [M]: options of one step that fit (used + mem + rest <= budget), with fallbacks."""
    m = allowed & (used + mem + rest <= budget)
    least = allowed & (mem + rest <= jnp.min(jnp.where(allowed, mem + rest, jnp.inf)))
    m = jnp.where(m.any(), m, least)
    mp = m & prefer
    return jnp.where(mp.any(), mp, m)


def masked_log_softmax(logits, mask):
    """float [M]: log-probabilities of the categorical restricted to `mask` (NEG elsewhere)."""
    return jax.nn.log_softmax(jnp.where(mask, logits, NEG))


def masked_entropy(logp, mask):
    return -jnp.sum(jnp.where(mask, jnp.exp(logp) * logp, 0.0))


@struct.dataclass
class Chain:
    """Markov coupling of a sequence of choices: step n's logits get ``trans[prev]`` added,
    where prev = ``state_of[a_{n-1}]`` (prev0 before the first step).

    trans: float [S, M]; state_of: int [M] (the chain state an option leads to); prev0: int [].
    """

    trans: jnp.ndarray
    state_of: jnp.ndarray
    prev0: jnp.ndarray


def masked_choices(logits, steps: Steps, used0, budget, key=None, actions=None,
                   noise=None, chain: Chain | None = None) -> Choices:
    """Sample (key or Gumbel noise float [N, M] given), score (actions given) or take the mode
    (none given) of N sequential masked categorical choices.

    logits: float [N, M]. The memory committed so far (and, with a `chain`, the chain state)
    is carried through a `lax.scan`, so the mask and logits of step n depend on the choices
    before it; replaying the stored actions reproduces them exactly, which makes the
    recomputed log-probability equal the sampled one.
    """
    n, m = logits.shape
    # Gumbel-max: argmax(log p + Gumbel noise) is a sample of p; one noise draw for all steps
    # (fewer PRNG calls to compile than a categorical per step).
    if key is not None:
        noise = jax.random.gumbel(key, logits.shape)
    sample = noise is not None
    noise = noise if sample else jnp.zeros(logits.shape)
    given = actions if actions is not None else jnp.zeros((n,), jnp.int32)
    if chain is None:
        chain = Chain(jnp.zeros((1, m)), jnp.zeros((m,), jnp.int32), jnp.int32(0))

    def body(carry, x):
        used, prev = carry
        lg, mem, rest, allowed, prefer, gum, a_given = x
        mask = step_mask(used, mem, rest, allowed, prefer, budget)
        logp_all = masked_log_softmax(lg + chain.trans[prev], mask)
        if sample:
            a = jnp.argmax(jnp.where(mask, logp_all + gum, -jnp.inf))
        elif actions is not None:
            a = a_given
        else:
            a = jnp.argmax(logp_all)
        a = a.astype(jnp.int32)
        out = (a, logp_all[a], masked_entropy(logp_all, mask), mask)
        return (used + mem[a], chain.state_of[a]), out

    xs = (logits, steps.mem, steps.rest, steps.allowed, steps.prefer, noise, given)
    carry = (jnp.asarray(used0, jnp.float32), jnp.asarray(chain.prev0, jnp.int32))
    if actions is not None and not sample:
        # Scoring: the carried memory and chain state of every step follow from the given
        # actions (prefix sums), so all steps are evaluated at once (no scan to differentiate).
        mem_a = jnp.take_along_axis(steps.mem, given[:, None], axis=1)[:, 0]
        used = carry[0] + jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(mem_a)[:-1]])
        prev = jnp.concatenate([carry[1][None], chain.state_of[given][:-1]])
        mask = jax.vmap(step_mask, in_axes=(0, 0, 0, 0, 0, None))(
            used, steps.mem, steps.rest, steps.allowed, steps.prefer, budget)
        logp_all = jax.vmap(masked_log_softmax)(logits + chain.trans[prev], mask)
        logp = jnp.take_along_axis(logp_all, given[:, None], axis=1)[:, 0]
        ent = jax.vmap(masked_entropy)(logp_all, mask)
        return Choices(given.astype(jnp.int32), logp, ent, mask)
    if n == 1:  # one step: no scan (less to compile)
        _, out = body(carry, jax.tree.map(lambda v: v[0], xs))
        a, logp, ent, mask = jax.tree.map(lambda v: v[None], out)
    else:
        _, (a, logp, ent, mask) = jax.lax.scan(body, carry, xs)
    return Choices(a, logp, ent, mask)


def _rest_after(min_mem):
    """float [N]: sum of min_mem over the steps after each step."""
    return jnp.cumsum(min_mem[::-1])[::-1] - min_mem


def _privacy_layer(space: ActionSpace):
    return np.arange(space.n_layers) < space.privacy_layers


def _lm_mem(ctx: MaskContext, space: ActionSpace, embed):
    """Extra edge bytes of the LM head when the last layer ends on the edge."""
    if space.tied:
        return jnp.where(embed == EDGE, 0.0, ctx.emb_mem)
    return ctx.emb_mem


def layer_options(ctx: MaskContext, space: ActionSpace, embed):
    """float [L, K*F] memory of each joint layer option (LM head charged to the last layer's
    FFN-on-edge options, and to its tp options when the embedding is on the edge: the LM head
    runs on the embedding's side when the residual ends on both), and bool [L, K*F] the
    privacy mask."""
    mem = jnp.broadcast_to(ctx.layer_mem.reshape(-1), (space.n_layers, space.n_low))
    f, _, is_tp = space.low_options()
    last = np.arange(space.n_layers)[:, None] == space.n_layers - 1
    lm_edge = jnp.asarray(last & (f == EDGE)[None, :]) | (
        jnp.asarray(last & is_tp[None, :]) & (embed == EDGE))
    mem = mem + jnp.where(lm_edge, _lm_mem(ctx, space, embed), 0.0)
    only_full = np.arange(space.n_low)[None, :] == space.full_edge
    allowed = ~_privacy_layer(space)[:, None] | only_full
    return mem, jnp.asarray(allowed)


def layer_steps(ctx: MaskContext, space: ActionSpace, embed, modes=None) -> Steps:
    """Per-layer steps of the low level (hier: layers of non-split groups are forced) or of the
    flat per-head action (modes None: every layer free; outage prefers edge-only)."""
    mem, allowed = layer_options(ctx, space, embed)
    opts = jnp.arange(space.n_low)[None, :]
    is_tp = jnp.asarray(space.low_options()[2])[None, :]
    prefer = jnp.ones_like(allowed)
    if modes is not None:
        mode_l = modes[jnp.asarray(space.group_of_layer)][:, None]
        allowed = jnp.select([mode_l == MODE_EDGE, mode_l == MODE_CLOUD, mode_l == MODE_TP],
                             [opts == space.full_edge, opts == space.full_cloud,
                              allowed & is_tp], allowed & ~is_tp)
    else:
        prefer = jnp.broadcast_to((opts == space.full_edge) | ~ctx.outage, allowed.shape)
    min_mem = jnp.min(jnp.where(allowed, mem, jnp.inf), axis=1)
    rest = jnp.broadcast_to(_rest_after(min_mem)[:, None], mem.shape)
    return Steps(mem, rest, allowed, prefer)


def group_steps(ctx: MaskContext, space: ActionSpace, embed) -> Steps:
    """Per-group steps of the high level: options (edge, cloud, split) and tp with tp (a
    group's memory under a mode: the least its layers can take in that mode)."""
    mem, priv_allowed = layer_options(ctx, space, embed)
    is_tp = space.low_options()[2][None, :]
    full = mem[:, space.full_edge]  # [L]
    # split: the paper's options (privacy-forced or 0); tp: the least tp share of each layer
    least = jnp.min(jnp.where(priv_allowed & ~is_tp, mem, jnp.inf), axis=1)
    onehot = np.eye(space.n_groups, dtype=np.float32)[list(space.group_of_layer)]  # [L, G]
    g_full, g_least = full @ onehot, least @ onehot
    priv = _privacy_layer(space).astype(np.float32) @ onehot  # privacy layers per group
    size = onehot.sum(0)
    cols = [g_full, jnp.zeros_like(g_full), g_least]
    ok = [np.ones(space.n_groups, bool), priv == 0, priv < size]
    if space.tp:
        least_tp = jnp.min(jnp.where(is_tp, mem, jnp.inf), axis=1)
        cols.append(least_tp @ onehot)
        ok.append(priv == 0)  # the privacy floor's layers run whole on the edge
    g_mem = jnp.stack(cols, axis=1)
    allowed = jnp.asarray(np.stack(ok, 1))
    prefer = jnp.broadcast_to((jnp.arange(space.n_modes) == MODE_EDGE)[None, :] | ~ctx.outage,
                              g_mem.shape)
    min_mem = jnp.min(jnp.where(allowed, g_mem, jnp.inf), axis=1)
    rest = jnp.broadcast_to(_rest_after(min_mem)[:, None], g_mem.shape)
    return Steps(g_mem, rest, allowed, prefer)


def _least_layers(ctx: MaskContext, space: ActionSpace, embed):
    mem, allowed = layer_options(ctx, space, embed)
    return jnp.min(jnp.where(allowed, mem, jnp.inf), axis=1).sum()


def embed_steps(ctx: MaskContext, space: ActionSpace) -> Steps:
    """One step, options (edge, cloud); rest = least layer memory given that embedding side."""
    mem = jnp.stack([ctx.emb_mem, 0.0])[None, :]
    rest = jnp.stack([_least_layers(ctx, space, EDGE), _least_layers(ctx, space, CLOUD)])[None]
    allowed = jnp.asarray([[True, space.privacy_layers == 0]])
    prefer = jnp.stack([True, ~ctx.outage])[None, :]
    return Steps(mem, rest, allowed, prefer)


def prec_steps(space: ActionSpace) -> Steps:
    """One step over the three activation precisions (those the scenario forbids masked)."""
    z = jnp.zeros((1, 3))
    allowed = jnp.asarray(np.isin(np.arange(3), space.precisions))[None]
    return Steps(z, z, allowed, jnp.ones((1, 3), bool))


def cut_steps(ctx: MaskContext, space: ActionSpace) -> Steps:
    """One step over cuts 0..L (embedding on the edge) and L + 1 (cloud-only)."""
    n_l = space.n_layers
    full = ctx.layer_mem[-1, EDGE]
    c = jnp.arange(n_l + 2)
    mem = ctx.emb_mem + jnp.minimum(c, n_l) * full + jnp.where(c == n_l, _lm_mem(ctx, space, EDGE),
                                                                 0.0)
    mem = jnp.where(c == n_l + 1, 0.0, mem)
    allowed = (c >= space.privacy_layers) & ((c <= n_l) | (space.privacy_layers == 0))
    prefer = (c == n_l) | ~ctx.outage
    z = jnp.zeros_like(mem)
    return Steps(mem[None], z[None], allowed[None], prefer[None])


@struct.dataclass
class HighLogits:
    """Logits of the high level (or of the flat actors' global choices).

    embed: float [2]; modes: float [G, M]; prec: float [3]; cut: float [L + 2];
    trans: float [M, M] added to group g's mode logits given group g-1's mode (the embedding
    side before group 0); M = ActionSpace.n_modes (3, or 4 with tp): the group modes form
    a Markov chain, like the residual side in the DP, so "stay on the cloud" can be learned
    as one thing rather than G independent ones.
    """

    embed: jnp.ndarray
    modes: jnp.ndarray
    prec: jnp.ndarray
    cut: jnp.ndarray
    trans: jnp.ndarray


@struct.dataclass
class Factors:
    """Log-probabilities and entropies of an action, split by level (floats [])."""

    logp_high: jnp.ndarray
    logp_low: jnp.ndarray
    ent_high: jnp.ndarray
    ent_low: jnp.ndarray

    @property
    def logp(self):
        return self.logp_high + self.logp_low

    @property
    def entropy(self):
        return self.ent_high + self.ent_low


def _choose(logits, steps, used0, budget, noise, given):
    return masked_choices(logits, steps, used0, budget, actions=given, noise=noise)


def high_level(space: ActionSpace, ctx: MaskContext, logits: HighLogits, key=None,
               action: Action | None = None, noise: HighLogits | None = None):
    """Sample (key, or Gumbel `noise` shaped like the logits), score (action) or take the mode
    (none given) of the high level / global choices of any kind.

    Returns (embed, modes, prec, cut) int32 arrays, logp float [], entropy float [].
    """
    if key is not None:
        noise = gumbel_like(key, logits)
    nz = noise if noise is not None else HighLogits(None, None, None, None, None)
    a = action
    z = jnp.zeros((), jnp.int32)

    def row(x):
        return None if x is None else x[None]

    if space.kind == "layerwise":
        cut = _choose(logits.cut[None], cut_steps(ctx, space), 0.0, ctx.budget, row(nz.cut),
                      None if a is None else a.cut[None])
        prec = _choose(logits.prec[None], prec_steps(space), 0.0, ctx.budget, row(nz.prec),
                       None if a is None else a.prec[None])
        return (z, jnp.zeros((space.n_groups,), jnp.int32), prec.actions[0], cut.actions[0],
                cut.logp.sum() + prec.logp.sum(), cut.entropy.sum() + prec.entropy.sum())
    emb = _choose(logits.embed[None], embed_steps(ctx, space), 0.0, ctx.budget, row(nz.embed),
                  None if a is None else a.embed[None])
    embed = emb.actions[0]
    prec = _choose(logits.prec[None], prec_steps(space), 0.0, ctx.budget, row(nz.prec),
                   None if a is None else a.prec[None])
    logp, ent = emb.logp.sum() + prec.logp.sum(), emb.entropy.sum() + prec.entropy.sum()
    modes = jnp.zeros((space.n_groups,), jnp.int32)
    if space.kind == "hier":
        n_m = space.n_modes
        prior = space.stay_bonus * jnp.eye(n_m)
        chain = Chain(logits.trans + prior, jnp.arange(n_m, dtype=jnp.int32), embed)
        split_prior = jnp.asarray([0.0, 0.0] + [space.split_bias] * (n_m - 2))
        grp = masked_choices(logits.modes + split_prior, group_steps(ctx, space, embed),
                             jnp.where(embed == EDGE, ctx.emb_mem, 0.0), ctx.budget,
                             actions=None if a is None else a.modes, noise=nz.modes,
                             chain=chain)
        modes, logp, ent = grp.actions, logp + grp.logp.sum(), ent + grp.entropy.sum()
    return embed, modes, prec.actions[0], z, logp, ent


def low_level(space: ActionSpace, ctx: MaskContext, logits, embed, modes, key=None,
              low=None, noise=None, trans=None) -> Choices:
    """Sample (key or Gumbel noise), score (low) or take the mode (none given) of the
    per-layer joint options.

    logits: float [L, K*F]; trans: float [S, K*F] added given the side the residual stream
    left the previous layer on (edge, cloud, and both with tp; the embedding's side before
    layer 0), plus the stay prior (full edge after edge, full cloud after cloud, any tp option
    after both).
    """
    steps = layer_steps(ctx, space, embed, modes if space.kind == "hier" else None)
    used0 = jnp.where(embed == EDGE, ctx.emb_mem, 0.0)
    opts = jnp.arange(space.n_low)
    f, _, is_tp = space.low_options()
    rows = [opts == space.full_edge, opts == space.full_cloud] + ([is_tp] if space.tp else [])
    prior = space.stay_bonus * jnp.stack([jnp.asarray(r) for r in rows])
    trans = prior if trans is None else trans + prior
    state_of = np.select([f == EDGE, is_tp], [0, 2], 1).astype(np.int32)
    chain = Chain(trans, jnp.asarray(state_of), embed)
    return masked_choices(logits, steps, used0, ctx.budget, key=key, actions=low, noise=noise,
                          chain=chain)


def n_high(space: ActionSpace) -> int:
    """Size of the flat high-level output (``SpaceGeometry.n_high``)."""
    return space.n_high


def high_from_flat(flat, n_groups: int, n_modes: int = 3) -> HighLogits:
    """Split float [..., 2 + MG + 3 + (L + 2) + M^2] into HighLogits (the network's layout)."""
    g, m = n_groups, n_modes
    i = [2, 2 + m * g, 5 + m * g, flat.shape[-1] - m * m]
    lead = flat.shape[:-1]
    return HighLogits(flat[..., :i[0]], flat[..., i[0]:i[1]].reshape(*lead, g, m),
                      flat[..., i[1]:i[2]], flat[..., i[2]:i[3]],
                      flat[..., i[3]:].reshape(*lead, m, m))


def gumbel_like(key, logits: HighLogits) -> HighLogits:
    """Gumbel noise shaped like `logits` from one PRNG draw."""
    leaves, treedef = jax.tree.flatten(logits)
    sizes = [x.size for x in leaves]
    flat = jax.random.gumbel(key, (sum(sizes),))
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    return jax.tree.unflatten(treedef, [p.reshape(x.shape)
                                        for p, x in zip(parts, leaves, strict=True)])


def to_partition(action: Action, space: ActionSpace) -> Partition:
    """The Partition an action stands for (one sample; vmap for batches)."""
    n_l, n_h = space.n_layers, space.n_heads
    if space.kind == "layerwise":
        layer = jnp.arange(n_l)
        cloud_only = action.cut == n_l + 1
        on_edge = (layer < action.cut) & ~cloud_only
        return Partition(jnp.where(on_edge, n_h, 0).astype(jnp.int32),
                         jnp.where(on_edge, EDGE, CLOUD).astype(jnp.int32),
                         action.prec.astype(jnp.int32), ~cloud_only,
                         jnp.zeros(n_l, jnp.int32))
    counts = jnp.asarray(space.head_counts, jnp.int32)
    f, j, _ = space.ffn_options()
    o = action.low % space.n_ffn
    return Partition(counts[action.low // space.n_ffn], jnp.asarray(f)[o],
                     action.prec.astype(jnp.int32), action.embed == EDGE, jnp.asarray(j)[o])


def from_partition(p: Partition, space: ActionSpace) -> Action:
    """An action of `space` close to a partition (head counts rounded to the nearest bin, tp
    shares to the nearest of phi_grid, a tp layer in a paper space to split; for hier, groups
    whose layers are all (H, edge) or all (0, cloud) get that mode, all tp the tp mode, else
    split; for layerwise, the cut = number of leading full-edge layers). Used to score
    reference partitions (e.g. the oracle's) under a policy; exact when the partition is
    representable (a hier group mixing tp and other layers is not).
    """
    counts = jnp.asarray(space.head_counts)
    b = jnp.argmin(jnp.abs(p.edge_heads[:, None] - counts[None, :]), axis=1)
    tp_layer = p.ffn == TP
    if space.tp:
        grid = jnp.asarray(space.phi_grid)
        o = jnp.where(tp_layer, 3 + jnp.argmin(jnp.abs(p.ffn_frac[:, None] - grid[None, :]),
                                               axis=1), p.ffn)
    else:
        o = jnp.where(tp_layer, SPLIT, p.ffn)
    low = (b * space.n_ffn + o).astype(jnp.int32)
    full_e, full_c = low == space.full_edge, low == space.full_cloud
    onehot = np.eye(space.n_groups, dtype=bool)[list(space.group_of_layer)]  # [L, G]
    all_e = jnp.all(full_e[:, None] | ~onehot, axis=0)
    all_c = jnp.all(full_c[:, None] | ~onehot, axis=0)
    all_tp = jnp.all(tp_layer[:, None] | ~onehot, axis=0) & space.tp
    modes = jnp.select([all_e, all_c, all_tp], [MODE_EDGE, MODE_CLOUD, MODE_TP],
                       MODE_SPLIT).astype(jnp.int32)
    lead = jnp.cumprod(full_e).sum()
    cut = jnp.where(~p.embed_edge & jnp.all(full_c), space.n_layers + 1, lead)
    return Action(jnp.where(p.embed_edge, EDGE, CLOUD).astype(jnp.int32), modes,
                  p.act_prec.astype(jnp.int32), low, cut.astype(jnp.int32))


def high_onehot(space: ActionSpace, embed, modes, prec):
    """float [2 + MG + 3]: the high-level choice as the low-level actor's conditioning input."""
    return jnp.concatenate([jax.nn.one_hot(embed, 2),
                            jax.nn.one_hot(modes, space.n_modes).reshape(-1),
                            jax.nn.one_hot(prec, 3)])
