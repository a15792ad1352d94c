"""The LAN condition of the trace-level runs in the tensor-parallel space (issue (b) of figure
13): its oracle partitions are interior on most slots, and the paper-space conditions are the
same as before it existed."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel import partition as P
from experiments import fig13_learning as fig13
from experiments.conditions import CONDITIONS, LAN_CONDITIONS, NAMES, LanCondition, condition
from experiments.sim import partition_kinds


def test_paper_conditions_are_unchanged():
    """The three paper-space conditions keep their numbers and stay the ones the figures
    iterate; the LAN ones are apart, reachable by name, and run in the tp space."""
    assert NAMES == ("dc-idle", "dc-contended", "mec-contended")
    pinned = {"dc-idle": ("datacenter", 40.0, 5.0, 0.99, 0.0, 0.95),
              "dc-contended": ("datacenter", 40.0, 5.0, 0.02, 1.5, 0.95),
              "mec-contended": ("mec", 2.0, 0.5, 0.1, 1.5, 0.95)}
    for name, c in CONDITIONS.items():
        assert type(c) is not LanCondition
        assert (c.cloud, c.rtt_ms, c.rtt_jitter_ms, c.share_median, c.share_logit_std,
                c.share_rho) == pinned[name]
    assert not set(LAN_CONDITIONS) & set(CONDITIONS)
    lan = condition("lan-peer")
    assert isinstance(lan, LanCondition) and lan.tp and lan.cloud == "orin-peer"
    bw = lan.bandwidth()
    assert bw.kind == "ar1" and 100.0 <= bw.mean_mbps <= 1000.0
    with pytest.raises(ValueError, match="lan-peer"):
        condition("no-such-condition")


def test_fig13_paper_rows_do_not_depend_on_the_lan_row():
    """The paper-space rows of figure 13 build the same scenario with or without the LAN row;
    only the LAN row is in the tp space, with its condition's bandwidth process."""
    bw = fig13._trace_bw(fig13.QUICK.eval_traces[0])
    without = fig13.Config(lan="")
    for cond in fig13.QUICK.conditions:
        a, b = fig13.scenario(fig13.QUICK, cond, bw), fig13.scenario(without, cond, bw)
        assert a == b and not a.tp
    lan = fig13.scenario(fig13.QUICK, fig13.LAN, None)
    assert lan.tp and lan.cloud == "orin-peer" and lan.link.bandwidth.kind == "ar1"
    assert lan.build().tp and lan.precisions == (0, 1)  # no int4 exchanges (see LanCondition)


def test_partition_kinds_of_known_partitions():
    n_l, n_h = 4, 8
    cases = {
        "edge": (P.edge_only(n_l, n_h), (True, False, False, False)),
        "cloud": (P.cloud_only(n_l), (False, True, False, False)),
        "cloud, embedding on the edge": (P.layer_cut(n_l, n_h, 0), (False, True, False, False)),
        "cut": (P.layer_cut(n_l, n_h, 2), (False, False, True, False)),
        "one head off": (P.make_partition([n_h - 1] + [n_h] * 3, [P.EDGE] * 4),
                         (False, False, True, False)),
        "tp": (P.make_partition([n_h // 2] * 4, [P.TP] * 4, ffn_frac=8),
               (False, False, True, True)),
    }
    for name, (p, want) in cases.items():
        k = partition_kinds(p, n_h)
        got = tuple(bool(k[x]) for x in ("all_edge", "all_cloud", "interior", "tp"))
        assert got == want, name
    # leading axes (rollouts x slots) are kept
    import jax

    batch = jax.tree.map(lambda *x: np.stack(x).reshape(2, 1, *np.shape(x[0])),
                         cases["edge"][0], cases["tp"][0])
    k = partition_kinds(batch, n_h)
    assert k["interior"].shape == (2, 1) and k["interior"].tolist() == [[False], [True]]


@pytest.mark.extended
def test_lan_oracle_is_interior_on_most_slots():
    """A short rollout of the clairvoyant oracle in figure 13's LAN row: a majority of its slots
    get an interior partition, every one of them tensor parallel, and none is all-cloud."""
    import jax

    from experiments.sim import policy, seed_keys
    from lyapunov.simulate import batched_rollout

    params = fig13.scenario(fig13.QUICK, fig13.LAN, None).build()
    n = params.spec.n_heads
    info, actions, _ = batched_rollout(policy("oracle"), params, 40, seed_keys(2),
                                       shared_params=True)
    k = partition_kinds(jax.tree.map(np.asarray, actions), n)
    assert k["interior"].mean() > 0.5, k["interior"].mean()
    assert (k["interior"] == k["tp"]).all()  # interior here means tensor parallel
    assert not k["all_cloud"].any()
    assert bool(np.asarray(info.feasible).all())


def test_plot_skips_rows_without_a_dp_bayes_gap(tmp_path):
    """The quick LAN row runs the oracle only: its summary row has no gap to dp-bayes, and the
    plot leaves it out instead of failing (the demo crashed on it once)."""
    head = ("condition,policy,n,dpp_mean,dpp_ci,gap_oracle_pct,gap_oracle_ci,gap_dp-bayes_pct,"
            "gap_dp-bayes_ci,beats_every_planner,interior_share,tp_share\n")
    (tmp_path / "learning_summary.csv").write_text(
        head + "exact,oracle,2,36.0,4.2,0.0,0.0,-0.17,2.2,0,0.0,0.0\n"
        "exact,dp-bayes,2,36.1,3.4,0.18,2.3,0.0,0.0,0,0.0,0.0\n"
        "exact-tp-lan,oracle,2,30.0,1.0,0.0,0.0,,,0,1.0,1.0\n")
    [png] = fig13.plot(tmp_path)
    assert png.exists() and png.stat().st_size > 1000
