"""Aggregation of per-sample evaluation records into the model × task × layer × metric matrix.

Kept free of torch and of the scorers so gates, reports and benchmarks can aggregate jsonl files
produced anywhere (another machine, an older run) without loading a model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.table import Table

#: Key of the per-model conversation statistics in the matrix; never a task id (those start with a letter).
CONVERSATIONS = "_conversations"
LAYERS = ("base", "business", "experience")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def aggregate(records_by_model: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Return ``(matrix, summary)``.

    matrix: model → task_id → layer → metric → mean over records (``primary`` is one metric).
    summary: model → family → mean primary in [0, 1]. A family's score comes from its business
    records; families that have none (IFEval prompts) use their base records. Experience
    dialogues stay in the matrix only: they are a different question ("does it hold up in
    conversation"), and mixing them into the family score would hide which layer moved.

    Each model's entry also holds ``_conversations`` when the records include simulated-user
    sessions: ``score_by_turn`` (mean score at each turn index, so degradation over turns shows),
    ``n_by_turn``, ``success_rate``, ``abandon_rate`` and ``thumbs_down_rate``.
    """
    matrix: dict[str, Any] = {}
    summary: dict[str, dict[str, float]] = {}
    for model, records in records_by_model.items():
        cells: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        fam: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            cell = cells[r["task_id"]][r["layer"]]
            for name, value in r["metrics"].items():
                cell[name].append(float(value))
            cell["primary"].append(float(r["primary"]))
            fam[r["family"]][r["layer"]].append(float(r["primary"]))
        matrix[model] = {
            task: {layer: {m: _mean(v) for m, v in sorted(metrics.items())} for layer, metrics in layers.items()}
            for task, layers in sorted(cells.items())
        }
        conv = conversation_stats(records)
        if conv:
            matrix[model][CONVERSATIONS] = conv
        summary[model] = {}
        for family, by_layer in sorted(fam.items()):
            scores = by_layer.get("business") or by_layer.get("base")
            if scores:
                summary[model][family] = min(1.0, max(0.0, _mean(scores)))
    return matrix, summary


def conversation_stats(records: list[dict]) -> dict:
    """Score by turn index (mean over sessions that reached it), success and abandonment rates."""
    sessions = [r for r in records if (r.get("detail") or {}).get("kind") == "session"]
    if not sessions:
        return {}
    longest = max(len(r["detail"]["turn_scores"]) for r in sessions)
    by_turn, n_by_turn = [], []
    for i in range(longest):
        vals = [r["detail"]["turn_scores"][i] for r in sessions if len(r["detail"]["turn_scores"]) > i]
        by_turn.append(sum(vals) / len(vals))
        n_by_turn.append(len(vals))
    fb = [f for r in sessions for f in r["detail"]["feedback"]]
    return {"sessions": len(sessions), "score_by_turn": by_turn, "n_by_turn": n_by_turn,
            "success_rate": sum(r["metrics"]["session_success"] for r in sessions) / len(sessions),
            "abandon_rate": sum(bool(r["detail"]["abandoned"]) for r in sessions) / len(sessions),
            "thumbs_down_rate": sum(f == "thumbs_down" for f in fb) / len(fb) if fb else 0.0}


def layer_means(matrix: dict, model: str) -> dict[str, dict[str, float]]:
    """Per layer, each metric averaged over tasks (task-macro), for a compact printout."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task, layers in matrix.get(model, {}).items():
        if task.startswith("_"):
            continue
        for layer, metrics in layers.items():
            for m, v in metrics.items():
                acc[layer][m].append(v)
    return {layer: {m: _mean(v) for m, v in ms.items()} for layer, ms in acc.items()}


def render_summary(summary: dict[str, dict[str, float]]):
    """A rich table: one row per family, one column per model."""
    models = list(summary)
    families = sorted({f for fams in summary.values() for f in fams})
    table = Table(title="mean primary score per task family")
    table.add_column("family")
    for m in models:
        table.add_column(m, justify="right")
    for f in families:
        table.add_row(f, *(f"{summary[m][f]:.3f}" if f in summary[m] else "-" for m in models))
    return table
