"""``report.html``: one self-contained page per run (tables + PNG plots embedded as data URIs).

Reads only the run directory's open-format files (metrics.jsonl, mixing_log.jsonl, eval/*.json,
gates.jsonl, data/*), so it can be regenerated at any time with ``mixtune report RUN_DIR``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path


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


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _plt():
    """pyplot on the headless Agg backend."""
    # why: the backend must be chosen before pyplot loads, and matplotlib (~0.3 s) only when plotting
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(stages: dict[str, list[dict]]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for name, recs in stages.items():
        if recs:
            axes[0].plot([r["step"] for r in recs], [r["loss_ce"] for r in recs], label=f"{name} CE", lw=1)
            axes[1].plot([r["step"] for r in recs], [r["grad_norm"] for r in recs], label=f"{name} grad norm", lw=.8)
            thr = [(r["step"], r["clip_threshold"]) for r in recs if r.get("clip_threshold") is not None]
            if thr:
                axes[1].plot(*zip(*thr), "--", label=f"{name} clip threshold")
    axes[0].set_xlabel("step"), axes[0].set_title("training loss"), axes[0].legend()
    axes[1].set_xlabel("step"), axes[1].set_title("gradient norm and clip threshold"), axes[1].legend()
    return _png(fig)


def aux_plot(recs: list[dict]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(1, 1, figsize=(6, 3.2))
    for key in ("loss_consistency", "loss_adversarial", "cosine_gap"):
        pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=key, lw=.8)
    ax.set_xlabel("step"), ax.set_title("stage 1 auxiliary terms"), ax.legend()
    return _png(fig)


def mixing_plot(log: list[dict]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(19, 3.6))
    tasks = sorted(log[-1]["weights"])
    for t in tasks:
        steps = [r["step"] for r in log]
        axes[0].plot(steps, [r["weights"].get(t, 0) for r in log], label=t, lw=1)
        axes[1].plot(steps, [r["scores"].get(t, 0) for r in log], lw=1)
        axes[2].step(steps, [r["levels"].get(t, 1) for r in log], where="post", lw=1)
        axes[3].plot(steps, [(r.get("rejection") or {}).get(t, 0) for r in log], lw=1)
    axes[0].set_title("sampling weight per task"), axes[1].set_title("validation score per task")
    axes[2].set_title("curriculum level per task")
    live = any("rejection_verdicts" in r for r in log)
    axes[3].set_title("human rejection rate per task" + (" (live review)" if live else " (fixed)"))
    for a in axes:
        a.set_xlabel("step")
    axes[0].legend(fontsize=6, ncol=2)
    return _png(fig)


def summary_plot(summary: dict) -> str:
    plt = _plt()
    fams = sorted({f for m in summary.values() for f in m})
    fig, ax = plt.subplots(1, 1, figsize=(9, 3.4))
    w = 0.8 / max(1, len(summary))
    for i, (model, scores) in enumerate(summary.items()):
        ax.bar([j + i * w for j in range(len(fams))], [scores.get(f, 0) for f in fams], w, label=model)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(fams))], fams, rotation=20)
    ax.set_ylim(0, 1), ax.set_title("primary score per task family (held-out)"), ax.legend()
    return _png(fig)


def task_plot(matrix: dict) -> str:
    """Per-task business primary score of every evaluated model (base vs stage 1 vs stage 2)."""
    plt = _plt()
    models = list(matrix)
    tasks = sorted({t for m in models for t in matrix[m]})
    fig, axes = plt.subplots(1, 2, figsize=(15, 3.8))
    w = 0.8 / max(1, len(models))
    for ax, layer in zip(axes, ("business", "experience")):
        for i, m in enumerate(models):
            ax.bar([j + i * w for j in range(len(tasks))],
                   [matrix[m].get(t, {}).get(layer, {}).get("primary", 0.0) for t in tasks], w, label=m)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(tasks))], tasks, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1), ax.set_title(f"{layer} layer: primary score per task"), ax.legend(fontsize=7)
    return _png(fig)


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from whatever the run has produced so far."""
    run_dir = Path(run_dir)
    parts = [f"<h1>mixtune run: {html.escape(run_dir.name)}</h1>"]
    state = _json(run_dir / "run_state.json") or {"steps": {}}
    parts.append("<h2>Steps</h2>" + _table(["step", "status", "details"], [
        [k, v.get("status", ""), json.dumps({x: y for x, y in v.items() if x not in ("fp", "status")},
                                            ensure_ascii=False)] for k, v in state["steps"].items()]))
    summary = _json(run_dir / "eval" / "summary.json")
    if summary:
        fams = sorted({f for m in summary.values() for f in m})
        parts.append("<h2>Held-out primary score per task family</h2>"
                     + _table(["model"] + fams, [[m] + [s.get(f, 0.0) for f in fams] for m, s in summary.items()])
                     + summary_plot(summary))
    matrix = _json(run_dir / "eval" / "matrix.json")
    if matrix:
        rows = []
        models = list(matrix)
        keys = sorted({(t, layer, metric) for m in models for t, layers in matrix[m].items()
                       for layer, metrics in layers.items() for metric in metrics})
        for t, layer, metric in keys:
            rows.append([t, layer, metric] + [matrix[m].get(t, {}).get(layer, {}).get(metric, "") for m in models])
        parts.append("<h2>Evaluation matrix (task × layer × metric)</h2>" + task_plot(matrix)
                     + _table(["task", "layer", "metric"] + models, rows))
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
        parts.append("<h2>Stage-2 mixing, curriculum and modulation</h2>" + mixing_plot(mlog)
                     + _table(["task", "weight", "level", "score", "rejection (verdicts)"], [
                         [t, w, last["levels"].get(t, 1), last["scores"].get(t, 0.0),
                          f"{(last.get('rejection') or {}).get(t, 0.0):.2f} "
                          f"({(last.get('rejection_verdicts') or {}).get(t, '-')})"]
                         for t, w in sorted(last["weights"].items())])
                     + f"<p>modulation factors: {html.escape(json.dumps(last.get('modulation', {})))}; "
                       f"promotions: {sum(len(r.get('promotions', [])) for r in mlog)} over {len(mlog)} cycles.</p>")
    gates = _jsonl(run_dir / "gates.jsonl")
    if gates:
        parts.append("<h2>Gates</h2>" + _table(["gate", "status", "evidence"], [
            [g.get("gate"), g.get("status"), json.dumps(g.get("checks", g.get("evidence", "")), ensure_ascii=False)[:600]]
            for g in gates]))
    reg = _json(run_dir / "registry.json")
    if reg:
        parts.append("<h2>Registry</h2><pre>" + html.escape(json.dumps(reg, ensure_ascii=False, indent=1)) + "</pre>")
    rr = _json(run_dir / "data" / "rule_report.json")
    if rr:
        parts.append("<h2>Data validation</h2><pre>" + html.escape(json.dumps(rr, ensure_ascii=False, indent=1)[:4000]) + "</pre>")
    style = ("<style>body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}</style>")
    out = run_dir / "report.html"
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>mixtune {html.escape(run_dir.name)}"
                   f"</title>{style}</head><body>{''.join(parts)}</body></html>", encoding="utf-8")
    return out
