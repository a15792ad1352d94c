"""The claims table: each headline claim of the paper, our measured number with a 95% confidence
interval over seeds, and a verdict, generated from the runs in `results/`.

Sources. The queue-level trace runs (figure 3: seeds are trace offsets and arrival / cloud-share
paths) give the numbers with confidence intervals; the request-level cost-model figures (1, 2, 6,
7, 11, 12) are deterministic and give the regime context; figures 4 and 9 the stability and
robustness claims.

"Ours" is the trained hierarchical policy where figure 3 evaluated a checkpoint, and otherwise
the model-based DPP controller (dp-estimate); the table says which.

Verdict rules (stated in claims.md too). A claim holds in a condition when the 95% CI of our
number reaches the paper's range or goes beyond it in the claimed direction (for "up to X%", when
the CI reaches X); a claim is *reproduced* when it holds in every condition we evaluate,
*reproduced under stated conditions* when it holds in some (listed), *not reproduced* when in
none, and *pending* when the runs it needs are missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from experiments.common import read_rows

EXISTING = ("best-cut", "static-cut", "layerwise")  # layer-wise partitioners
ACCURACY_MAINTAINED_PCT = 1.0  # "accuracy maintained": mean perplexity increase <= 1 %
MODEST_MEMORY_FRAC = 0.5  # "modest memory": mean edge memory <= 50 % of the device budget


def _ci(x):
    from experiments.sim import mean_ci

    x = np.asarray([v for v in x if v is not None and np.isfinite(v)], float)
    if x.size == 0:
        return math.nan, math.nan, 0
    m, h = mean_ci(x)
    return float(m), float(h), int(x.size)


def _fmt(m, h, n, unit="", scale=1.0, digits=3):
    if not np.isfinite(m):
        return "n/a"
    ci = f" ± {h * scale:.{digits}g}" if np.isfinite(h) else ""
    return f"{m * scale:.{digits}g}{unit}{ci} (n={n})"


def _load(out: Path, name: str, file: str):
    path = Path(out) / name / file
    return read_rows(path) if path.exists() else None


def _ours(rows) -> str:
    pols = {r["policy"] for r in rows}
    return "hier" if "hier" in pols else "dp-estimate"


def _per_condition(rows, fn):
    """{(model, device, condition): [value per seed]} with fn(by_policy) -> value."""
    out = {}
    keys = dict.fromkeys((r["model"], r["device"], r["condition"], r["seed"]) for r in rows)
    for model, device, cond, seed in keys:
        by_pol = {r["policy"]: r for r in rows if r["model"] == model and r["device"] == device
                  and r["condition"] == cond and r["seed"] == seed}
        v = fn(by_pol)
        if v is not None:
            out.setdefault((model, device, cond), []).append(v)
    return out


def _verdict(holds: dict, pending: str | None = None):
    if pending:
        return "pending", pending
    if not holds:
        return "pending", "no data"
    yes = [k for k, v in holds.items() if v]
    if len(yes) == len(holds):
        return "reproduced", "all evaluated conditions"
    if yes:
        return "reproduced under stated conditions", "; ".join("/".join(k) for k in yes)
    return "not reproduced", "none of the evaluated conditions"


def _claim(key, paper, rows_fn, measure, unit, scale, holds_fn, out, extra=None, context=None):
    rows = _load(out, "trace_latency", "summary.csv")
    if rows is None:
        return {"key": key, "paper": paper, "verdict": "pending",
                "regime": "waiting on figure 3 (trace_latency)", "measured": {},
                "ours": None, "context": context or []}
    ours = _ours(rows)
    vals = _per_condition(rows, lambda p: rows_fn(p, ours))
    measured, holds = {}, {}
    for cond, xs in vals.items():
        m, h, n = _ci(xs)
        measured["/".join(cond)] = {"mean": m, "ci95": h, "n": n,
                                    "text": _fmt(m, h, n, unit, scale)}
        holds[cond] = holds_fn(m, h)
    verdict, regime = _verdict(holds)
    return {"key": key, "paper": paper, "measure": measure, "ours": ours, "measured": measured,
            "verdict": verdict, "regime": regime, "context": context or [], **(extra or {})}


def _ratio_vs_existing(p, ours):
    """Mean latency of the best existing (layer-wise) partitioner over ours."""
    base = [p[k]["latency_mean_s"] for k in EXISTING if k in p]
    if ours not in p or not base:
        return None
    return min(base) / p[ours]["latency_mean_s"]


def _ratio_vs_static(p, ours):
    if ours not in p or "static-cut" not in p:
        return None
    return p["static-cut"]["latency_mean_s"] / p[ours]["latency_mean_s"]


def _energy_cut(p, ours):
    base = [p[k]["energy_mean_j"] for k in EXISTING if k in p]
    if ours not in p or not base:
        return None
    return 1.0 - p[ours]["energy_mean_j"] / min(base)


def _p95_cut(p, ours):
    if ours not in p or "cloud-only" not in p:
        return None
    return 1.0 - p[ours]["latency_p95_s"] / p["cloud-only"]["latency_p95_s"]


def _accuracy(p, ours):
    return p[ours]["accuracy_drop_mean"] if ours in p else None


def _memory(p, ours):
    return p[ours]["edge_memory_mean_gb"] / p[ours]["mem_budget_gb"] if ours in p else None


def request_level_context(out: Path) -> dict:
    """Deterministic cost-model numbers that locate each claim's regime."""
    ctx = {}
    reg = _load(out, "regime_map", "summary.csv")
    if reg:
        head = [r for r in reg if r["class"] == "head-level split"]
        best = max(head, key=lambda r: r["max_margin"] if r["max_margin"] == r["max_margin"]
                   else 0.0) if head else None
        ctx["regime"] = [
            f"{r['device']}/{r['cloud']}/privacy {r['privacy_layers']}: {r['class']} wins "
            f"{100 * r['fraction']:.0f}% of the grid"
            + (f" (median margin {r['median_margin']:.3g}x, max {r['max_margin']:.3g}x)"
               if r["fraction"] > 0 else "") for r in reg]
        if best is not None:
            ctx["head_split_max_margin"] = best["max_margin"]
    en = _load(out, "energy", "energy.csv")
    if en:
        cuts = []
        keys = dict.fromkeys((r["model"], r["device"], r["scenario"], r["bw_mbps"]) for r in en)
        for k in keys:
            sel = {(r["strategy"], r["objective"]): r for r in en
                   if (r["model"], r["device"], r["scenario"], r["bw_mbps"]) == k
                   and r["feasible"]}
            lw = [sel[s]["energy_j"] for s in (("best-layer-cut", "latency"),
                                               ("cloud-only", "latency"),
                                               ("edge-only", "latency")) if s in sel]
            if ("best-headwise", "latency") in sel and lw:
                cuts.append((1.0 - sel[("best-headwise", "latency")]["energy_j"] / min(lw), k))
        if cuts:
            m = max(cuts)
            ctx["energy_request_level"] = (
                f"request level (figure 2): largest edge-energy cut of the head/FFN DP over the "
                f"best layer-wise choice {100 * m[0]:.3g}% ({'/'.join(map(str, m[1]))})")
    acc = _load(out, "accuracy", "accuracy.csv")
    if acc:
        src = sorted({f"{r['model']}: {r['accuracy_source']}" for r in acc})
        worst = max(r["accuracy_drop"] for r in acc if r["strategy"] == "best-headwise"
                    and r["feasible"])
        ctx["accuracy"] = (f"request level (figure 11): worst perplexity increase of the head/FFN "
                           f"DP {worst:.3g}%; source: " + "; ".join(src))
    mem = _load(out, "memory", "memory.csv")
    if mem:
        fr = [r["edge_memory_gb"] / r["budget_gb"] for r in mem
              if r["strategy"] == "best-headwise" and r["feasible"]]
        ctx["memory"] = (f"request level (figure 6): head/FFN DP edge memory {100 * min(fr):.0f}-"
                         f"{100 * max(fr):.0f}% of the device budget")
    return ctx


def stability_claim(out: Path) -> dict:
    rows = _load(out, "backlog", "stability.csv")
    paper = "queue stability guaranteed under stochastic workloads"
    if rows is None:
        return {"key": "stability", "paper": paper, "verdict": "pending",
                "regime": "waiting on figure 4 (backlog)", "measured": {}, "ours": None,
                "context": []}
    ours = "hier" if any(r["policy"] == "hier" for r in rows) else "dp-estimate"
    measured, holds = {}, {}
    for kind in dict.fromkeys(r["arrivals"] for r in rows):
        def cap(p, kind=kind):
            st = [r["rate"] for r in rows if r["policy"] == p and r["arrivals"] == kind
                  and np.mean([x["stable"] for x in rows if x["policy"] == p
                               and x["arrivals"] == kind and x["rate"] == r["rate"]]) >= 0.5]
            return max(st) if st else 0.0

        caps = {p: cap(p) for p in dict.fromkeys(r["policy"] for r in rows)}
        measured[kind] = {"text": "largest stable rate (requests/slot): " + ", ".join(
            f"{p} {c:g}" for p, c in caps.items()), "caps": caps}
        holds[(kind,)] = caps.get(ours, 0) >= max(v for k, v in caps.items() if k != "oracle")
    verdict, regime = _verdict(holds)
    return {"key": "stability", "paper": paper, "ours": ours, "measured": measured,
            "verdict": verdict, "regime": regime + " (stable at least as far as every causal "
            "baseline, over the swept rates)", "context": []}


def robustness_claim(out: Path) -> dict:
    rows = _load(out, "robustness", "robustness.csv")
    paper = "robust to communication failures (partition checkpoints, exponential backoff)"
    if rows is None:
        return {"key": "robustness", "paper": paper, "verdict": "pending",
                "regime": "waiting on figure 9", "measured": {}, "ours": None, "context": []}
    measured, holds = {}, {}
    for q in sorted({r["outage_frac"] for r in rows}):
        if q == 0:
            continue
        ck = [r["completion"] for r in rows if r["outage_frac"] == q
              and r["policy"] == "checkpoint-resume"]
        rs = [r["completion"] for r in rows if r["outage_frac"] == q and r["policy"] == "restart"]
        m1, h1, n1 = _ci(ck)
        m2, h2, n2 = _ci(rs)
        measured[f"outage {100 * q:g}%"] = {
            "mean": m1, "ci95": h1, "n": n1,
            "text": f"completed {_fmt(m1, h1, n1, '%', 100)} vs restart "
                    f"{_fmt(m2, h2, n2, '%', 100)}"}
        holds[(f"outage {100 * q:g}%",)] = m1 - h1 >= 0.99
    verdict, regime = _verdict(holds)
    return {"key": "robustness", "paper": paper, "ours": "checkpoint-resume",
            "measured": measured, "verdict": verdict,
            "regime": regime + " (>= 99% of requests complete within 3x their outage-free "
            "latency)", "context": []}


def build_claims(out: Path) -> list[dict]:
    out = Path(out)
    ctx = request_level_context(out)
    claims = [
        _claim("latency", "end-to-end latency 1.4-2.8x lower than existing partitioners",
               _ratio_vs_existing, "mean latency of the best layer-wise partitioner (adaptive "
               "best cut, static best cut, layer-wise DRL where trained) / ours", "x", 1.0,
               lambda m, h: m + h >= 1.4, out,
               extra={"also_vs_static_cut": None},
               context=[c for c in ctx.get("regime", [])] + (
                   [f"request level (figure 12): a head-level split beats every layer-wise "
                    f"choice by at most {ctx['head_split_max_margin']:.3g}x over the grid"]
                   if "head_split_max_margin" in ctx else [])),
        _claim("energy", "edge energy up to 41% lower than existing partitioners", _energy_cut,
               "1 - mean edge energy of ours / that of the best layer-wise partitioner", "%",
               100.0, lambda m, h: m + h >= 0.41, out,
               context=[ctx["energy_request_level"]] if "energy_request_level" in ctx else []),
        _claim("p95", "p95 latency 53-61% lower than cloud-only", _p95_cut,
               "1 - p95 latency of ours / p95 of cloud-only", "%", 100.0,
               lambda m, h: m + h >= 0.53, out),
        _claim("accuracy", "accuracy maintained", _accuracy,
               f"mean perplexity increase of ours (%); holds if <= {ACCURACY_MAINTAINED_PCT}%",
               "%", 1.0, lambda m, h: m <= ACCURACY_MAINTAINED_PCT, out,
               context=[ctx["accuracy"]] if "accuracy" in ctx else []),
        _claim("memory", "modest memory requirements", _memory,
               f"mean edge memory of ours / device budget; holds if <= "
               f"{100 * MODEST_MEMORY_FRAC:.0f}%", "%", 100.0,
               lambda m, h: m <= MODEST_MEMORY_FRAC, out,
               context=[ctx["memory"]] if "memory" in ctx else []),
        stability_claim(out),
        robustness_claim(out),
    ]
    # The latency ratio against the static cut alone (the non-adaptive layer-wise partitioner).
    rows = _load(out, "trace_latency", "summary.csv")
    if rows is not None:
        ours = _ours(rows)
        vals = _per_condition(rows, lambda p: _ratio_vs_static(p, ours))
        claims[0]["also_vs_static_cut"] = {
            "/".join(k): _fmt(*_ci(v), "x") for k, v in vals.items()}
    return claims


def _md(claims: list[dict], out: Path) -> str:
    from experiments.sim import POLICY_LABEL

    lines = ["# Claims of the paper against our runs", "",
             "Generated by `experiments/claims.py` from the runs in this folder; do not edit.", ""]
    summary = out / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        lines += [f"Mode: **{s.get('mode')}**, commit `{s.get('commit')}`.", ""]
    lines += ["| claim (paper) | ours | our measurement, mean ± 95% CI over seeds (per "
              "model/device/condition) | verdict | where it holds |",
              "|---|---|---|---|---|"]
    for c in claims:
        meas = "<br>".join(f"{k}: {v['text']}" for k, v in c["measured"].items()) or "-"
        lines.append(f"| {c['paper']} | {POLICY_LABEL.get(c['ours'], c['ours'] or '-')} | "
                     f"{meas} | **{c['verdict']}** | {c['regime']} |")
    lines += ["", "## Notes per claim", ""]
    for c in claims:
        lines.append(f"**{c['paper']}**. Measure: {c.get('measure', '-')}.")
        if c.get("also_vs_static_cut"):
            lines.append("Against the static best cut alone: " + "; ".join(
                f"{k}: {v}" for k, v in c["also_vs_static_cut"].items()) + ".")
        for x in c.get("context", []):
            lines.append(f"- {x}")
        lines.append("")
    lines += ["## Verdict rules", "",
              "A claim holds in a condition when the 95% CI of our number reaches the paper's "
              "range or goes beyond it in the claimed direction (for \"up to X%\", when it "
              f"reaches X). Accuracy is maintained when the mean perplexity increase is at most "
              f"{ACCURACY_MAINTAINED_PCT}%; memory is modest when the mean edge memory is at "
              f"most {100 * MODEST_MEMORY_FRAC:.0f}% of the device budget. Reproduced: holds in "
              "every evaluated condition; reproduced under stated conditions: in some (listed); "
              "not reproduced: in none; pending: the runs it needs are missing.", ""]
    return "\n".join(lines)


def write_claims(out: str | Path = "results") -> list[Path]:
    """Write <out>/claims.json and <out>/claims.md; returns their paths."""
    out = Path(out)
    claims = build_claims(out)
    js = out / "claims.json"
    js.write_text(json.dumps(claims, indent=2, default=float))
    md = out / "claims.md"
    md.write_text(_md(claims, out))
    return [md, js]
