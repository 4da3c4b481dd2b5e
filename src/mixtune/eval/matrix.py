"""Aggregation of per-sample evaluation records into the model × task × layer × metric matrix.

Kept free of torch and of the scorers so gates, reports and benchmarks can aggregate jsonl files
produced anywhere (another machine, an older run) without loading a model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.table import Table

from mixtune.errors import DataError

#: Key of the per-model conversation statistics in the matrix; never a task id (those start with a letter).
CONVERSATIONS = "_conversations"
LAYERS = ("base", "business", "experience")
#: Families of IFEval records (English, Chinese): a general-capability benchmark beside the domain.
#: They get their own summary.json block (same key) instead of a family score, and the gates'
#: ``overall`` and layer scopes leave them out (``mixtune.release.gates``).
IFEVAL_FAMILIES = ("ifeval", "ifeval_zh")
IFEVAL_AGGREGATES = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def aggregate(records_by_model: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Return ``(matrix, summary)``.

    matrix: model → task_id → layer → metric → mean over records (``primary`` is one metric).
    summary: model → family → mean primary in [0, 1]. A family's score comes from its business
    records; families that have none use their base records. Experience dialogues stay in the
    matrix only: they are a different question ("does it hold up in conversation"), and mixing
    them into the family score would hide which layer moved. IFEval records are no domain family:
    each IFEval set evaluated adds a top-level block, ``summary[family][model]`` =
    :func:`ifeval_block` (``ifeval``: English, ``ifeval_zh``: Chinese), beside the model keys.

    Each model's entry also holds ``_conversations`` when the records include simulated-user
    sessions: ``score_by_turn`` (mean score at each turn index, so degradation over turns shows),
    ``n_by_turn``, ``success_rate``, ``abandon_rate`` and ``thumbs_down_rate``.
    """
    matrix: dict[str, Any] = {}
    summary: dict[str, dict[str, Any]] = {}
    blocks: dict[str, dict[str, dict]] = defaultdict(dict)
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
            if scores and family not in IFEVAL_FAMILIES:
                summary[model][family] = min(1.0, max(0.0, _mean(scores)))
        for family in IFEVAL_FAMILIES:
            ife = [r for r in records if r["family"] == family]
            if ife:
                blocks[family][model] = ifeval_block(ife)
    clash = sorted(set(blocks) & set(summary))
    if clash:  # `mixtune eval --model-name ifeval` would otherwise be overwritten silently
        raise DataError(f"a model is named {clash[0]!r}, which summary.json reserves for the IFEval block")
    return matrix, {**summary, **blocks}


def ifeval_block(records: list[dict]) -> dict:
    """IFEval aggregates of one model's records of one IFEval set, as IFEval defines them.

    ``prompt_*``: share of prompts whose instructions all pass; ``inst_*``: share of all
    instructions that pass, pooled over prompts (from each record's ``detail``; records written
    before ``detail`` existed fall back to the mean per-prompt share). ``n``: prompts,
    ``instructions``: instructions checked, ``instruction_types``: the distinct types covered.
    """
    n = len(records)
    details = [r.get("detail") or {} for r in records]
    out: dict[str, Any] = {}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = _mean([float(r["metrics"][f"ifeval_prompt_{mode}"]) for r in records])
        lists = [d.get(f"{mode}_follow_list") for d in details]
        if all(isinstance(x, list) for x in lists):
            total = sum(len(x) for x in lists)
            out[f"inst_{mode}"] = sum(sum(bool(v) for v in x) for x in lists) / total if total else 0.0
        else:
            out[f"inst_{mode}"] = _mean([float(r["metrics"][f"ifeval_inst_{mode}"]) for r in records])
    ids = [t for d in details for t in d.get("instruction_id_list") or []]
    return {**{k: out[k] for k in IFEVAL_AGGREGATES}, "n": n, "instructions": len(ids),
            "instruction_types": sorted(set(ids))}


def family_scores(summary: dict) -> dict[str, dict[str, float]]:
    """summary.json without its IFEval blocks: model → family → score, as before those existed."""
    return {m: fams for m, fams in summary.items() if m not in IFEVAL_FAMILIES}


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
    """A rich table: one row per family, one column per model (IFEval blocks: :func:`render_ifeval`)."""
    summary = family_scores(summary)
    models = list(summary)
    families = sorted({f for fams in summary.values() for f in fams})
    table = Table(title="mean primary score per task family")
    table.add_column("family")
    for m in models:
        table.add_column(m, justify="right")
    for f in families:
        table.add_row(f, *(f"{summary[m][f]:.3f}" if f in summary[m] else "-" for m in models))
    return table


def render_ifeval(summary: dict) -> list[Table]:
    """One rich table per IFEval block of summary.json: a row per model, the four aggregates."""
    tables = []
    for family in IFEVAL_FAMILIES:
        block = summary.get(family)
        if not block:
            continue
        table = Table(title=f"{family}: instruction following (IFEval)")
        for col in ("model", *IFEVAL_AGGREGATES, "prompts", "types"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for model, agg in block.items():
            table.add_row(model, *(f"{agg[k]:.3f}" for k in IFEVAL_AGGREGATES), str(agg["n"]),
                          str(len(agg["instruction_types"])))
        tables.append(table)
    return tables
