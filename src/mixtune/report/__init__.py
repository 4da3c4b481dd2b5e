"""``report.html``: one self-contained page per run, read top to bottom by a person.

At the top the decision (released / rolled back / rejected / inconclusive, and why) and the
candidate-vs-champion deltas per evaluation layer with intervals; then the staged rollout step by
step, the gates, simulated-user conversations (score by turn for base / stage 1 / stage 2),
answers side by side with rule findings marked, the family scores, IFEval instruction following
(when evaluated), and the training and mixing plots. Tables and
PNG plots (data URIs) only, every data string escaped.

Reads only the run directory's open-format files (metrics.jsonl, mixing_log.jsonl, eval/*,
gates.jsonl, registry.json, data/*), so it can be regenerated any time with ``mixtune report RUN_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mixtune.report.ifeval import IFEVAL_BLOCKS, ifeval_section, split_summary
from mixtune.report.plots import aux_plot, loss_plot, mixing_plot, summary_plot, task_plot, turns_plot
from mixtune.report.sections import (
    MODELS,
    answers_section,
    conversations_table,
    decision_section,
    deltas_section,
    esc,
    gates_section,
    registry_section,
    rollout_section,
    table,
)

STYLE = """<style>
body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;
vertical-align:top}th{background:#f3f3f3}table.answers td{max-width:330px}
.decision{padding:.8em 1.2em;border-radius:6px;margin:1em 0;border:2px solid #999}.decision .head{font-size:1.5em;
font-weight:bold}.decision.ok{background:#e8f6e8;border-color:#3a3}.decision.bad{background:#fbeaea;border-color:#c33}
.decision.meh{background:#fff7e0;border-color:#c90}.badge{padding:1px 6px;border-radius:4px;font-weight:bold}
.badge.ok{background:#c8ecc8}.badge.bad{background:#f4c4c4}.badge.meh{background:#fbe7b0}
mark{background:#ffd0d0;border-bottom:2px solid #c33}.small{color:#666;font-size:12px}
ul.finds{margin:.2em 0;padding-left:1.2em;font-size:12px;color:#a22}.ans{white-space:pre-wrap}
</style>"""


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted writer is not worth failing the report
    return out


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _details(v: dict) -> str:
    """A step's recorded details as short ``key: value`` text (nested values summarised)."""
    parts = []
    for k, x in v.items():
        if k in ("fp", "status"):
            continue
        if isinstance(x, dict):
            x = ", ".join(f"{a}={b}" for a, b in list(x.items())[:8]) + (" …" if len(x) > 8 else "")
        parts.append(f"{k}: {x}")
    return "; ".join(parts)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from whatever the run has produced so far."""
    run_dir = Path(run_dir)
    gates = _jsonl(run_dir / "gates.jsonl")
    reg = _json(run_dir / "registry.json")
    records = {m: _jsonl(run_dir / "eval" / f"{m}.jsonl") for m in MODELS}
    records = {m: r for m, r in records.items() if r}
    validate = next((g for g in gates if g.get("gate") == "validate"), {})
    champion = str((validate.get("meta") or {}).get("champion") or "base")
    parts = [f"<h1>mixtune run: {esc(run_dir.name)}</h1>", decision_section(gates, reg)]
    if champion != "base":
        parts.append(f"<p class='small'>The gates compared with the registry champion ({esc(champion)}); "
                     "the deltas below are against this run's base model.</p>")
    # IFEval records have their own section below: the per-layer deltas are the domain's
    parts.append(deltas_section({m: [r for r in recs if r.get("family") not in IFEVAL_BLOCKS]
                                 for m, recs in records.items()}, "base"))
    parts.append(rollout_section(gates))
    if gates:
        parts.append(gates_section(gates))
    parts.append(registry_section(reg))
    matrix = _json(run_dir / "eval" / "matrix.json")
    if matrix and conversations_table(matrix):
        parts.append("<h2>Conversations with simulated users</h2>" + conversations_table(matrix) + turns_plot(matrix))
    parts.append(answers_section(records))
    summary, blocks = split_summary(_json(run_dir / "eval" / "summary.json") or {})
    if summary:
        fams = sorted({f for m in summary.values() for f in m})
        parts.append("<h2>Held-out primary score per task family</h2>"
                     + table(["model"] + fams, [[m] + [s.get(f, 0.0) for f in fams] for m, s in summary.items()])
                     + summary_plot(summary))
    parts.append(ifeval_section(blocks, records))
    if matrix:
        models = list(matrix)
        keys = sorted({(t, layer, metric) for m in models for t, layers in matrix[m].items() if not t.startswith("_")
                       for layer, metrics in layers.items() for metric in metrics})
        rows = [[t, layer, metric] + [matrix[m].get(t, {}).get(layer, {}).get(metric, "") for m in models]
                for t, layer, metric in keys]
        parts.append("<h2>Evaluation matrix (task × layer × metric)</h2>" + task_plot(matrix)
                     + table(["task", "layer", "metric"] + models, rows))
    s1, s2 = _jsonl(run_dir / "stage1" / "metrics.jsonl"), _jsonl(run_dir / "stage2" / "metrics.jsonl")
    if s1 or s2:
        parts.append("<h2>Training</h2>" + loss_plot({"stage 1": s1, "stage 2": s2}))
        if s1:
            parts.append(aux_plot(s1))
            clipped = sum(1 for r in s1 if r.get("clipped")) / len(s1)
            parts.append(f"<p>stage 1: {len(s1)} steps, {clipped:.0%} of steps clipped.</p>")
    mlog = _jsonl(run_dir / "mixing_log.jsonl")
    if mlog:
        last = mlog[-1]
        mod = ", ".join(f"{k}={v}" for k, v in (last.get("modulation") or {}).items())
        parts.append("<h2>Stage-2 mixing, curriculum and modulation</h2>" + mixing_plot(mlog)
                     + table(["task", "weight", "level", "score", "rejection (verdicts)"], [
                         [t, w, last["levels"].get(t, 1), last["scores"].get(t, 0.0),
                          f"{(last.get('rejection') or {}).get(t, 0.0):.2f} "
                          f"({(last.get('rejection_verdicts') or {}).get(t, '-')})"]
                         for t, w in sorted(last["weights"].items())])
                     + f"<p>modulation factors: {esc(mod)}; "
                       f"promotions: {sum(len(r.get('promotions', [])) for r in mlog)} over {len(mlog)} cycles.</p>")
    rr = _json(run_dir / "data" / "rule_report.json")
    if rr:
        parts.append("<h2>Data validation</h2>" + table(["checked", "blocked", "rule set", "dataset"], [
            [rr.get("checked"), rr.get("blocked"), rr.get("ruleset_version"), rr.get("dataset_version")]])
            + table(["rule", "samples blocked"], sorted((rr.get("by_rule") or {}).items(), key=lambda x: -x[1]))
            + table(["defect injected", "injected", "caught"], [
                [k, v, (rr.get("defects") or {}).get("caught", {}).get(k, 0)]
                for k, v in sorted(((rr.get("defects") or {}).get("injected") or {}).items())]))
    state = _json(run_dir / "run_state.json") or {"steps": {}}
    parts.append("<h2>Steps</h2>" + table(["step", "status", "details"], [
        [k, v.get("status", ""), _details(v)] for k, v in state["steps"].items()]))
    out = run_dir / "report.html"
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>mixtune {esc(run_dir.name)}"
                   f"</title>{STYLE}</head><body>{''.join(p for p in parts if p)}</body></html>", encoding="utf-8")
    return out
