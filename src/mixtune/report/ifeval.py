"""The report's IFEval section: did general instruction following survive the domain tuning?

Reads the ``ifeval`` / ``ifeval_zh`` blocks of ``eval/summary.json`` (written by
``mixtune.eval.matrix``; the report package does not import ``eval``, so the block names are
repeated here and a test checks they agree) and, for the per-type table, the IFEval records'
``detail`` verdicts. Shown only when a block exists.
"""

from __future__ import annotations

from collections import defaultdict

from mixtune.report.sections import esc, table

#: summary.json keys holding IFEval blocks (not models), with the language of each set.
IFEVAL_BLOCKS = {"ifeval": "English", "ifeval_zh": "Chinese"}
AGGREGATES = (("prompt_strict", "prompt-level strict"), ("prompt_loose", "prompt-level loose"),
              ("inst_strict", "instruction-level strict"), ("inst_loose", "instruction-level loose"))


def split_summary(summary: dict) -> tuple[dict, dict]:
    """``(model → family → score, block name → model → aggregates)`` from summary.json."""
    fams = {k: v for k, v in summary.items() if k not in IFEVAL_BLOCKS}
    blocks = {k: v for k, v in summary.items() if k in IFEVAL_BLOCKS and v}
    return fams, blocks


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def type_table(records: dict[str, list[dict]], family: str) -> str:
    """Instruction type × model: share of that type's instructions passed (loose)."""
    passed: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for model, recs in records.items():
        for r in recs:
            d = r.get("detail") or {}
            if r.get("family") != family or not isinstance(d.get("loose_follow_list"), list):
                continue
            for t, ok in zip(d.get("instruction_id_list") or [], d["loose_follow_list"]):
                passed[t][model].append(bool(ok))
    models = [m for m in records if any(m in by_model for by_model in passed.values())]
    if not passed or not models:
        return ""
    rows = [[t] + [f"{sum(v[m]) / len(v[m]):.2f} ({len(v[m])})" if v.get(m) else "–" for m in models]
            for t, v in sorted(passed.items())]
    return ("<details><summary>per instruction type (loose; instructions checked in brackets)</summary>"
            + table(["instruction type", *models], rows) + "</details>")


def ifeval_section(summary: dict | None, records: dict[str, list[dict]]) -> str:
    """The four IFEval aggregates per model, and stage 2 − base, per IFEval set evaluated.

    ``summary``: summary.json, or only its IFEval blocks; ``records``: model → evaluation records
    (for the per-type table). Empty when no IFEval set was evaluated.
    """
    _, blocks = split_summary(summary or {})
    if not blocks:
        return ""
    parts = ["<h2>Instruction following (IFEval, base-capability layer)</h2>"
             "<p class='small'>A fixed, seeded subset of the public IFEval prompts, stratified by instruction "
             "type, the same for every model; scored strict and loose as IFEval does. Prompt level: all of a "
             "prompt's instructions followed; instruction level: share of all instructions followed.</p>"]
    for family, block in blocks.items():
        rows = [[m] + [a.get(k) for k, _ in AGGREGATES] + [a.get("n"), a.get("instructions")]
                for m, a in block.items()]
        if "stage2" in block and "base" in block:
            rows.append(["stage2 − base"] + [_signed(block["stage2"][k] - block["base"][k]) for k, _ in AGGREGATES]
                        + ["", ""])
        types = sorted({t for a in block.values() for t in a.get("instruction_types") or []})
        parts.append(f"<h3>{esc(IFEVAL_BLOCKS[family])} ({esc(family)})</h3>"
                     + table(["model", *(label for _, label in AGGREGATES), "prompts", "instructions"], rows)
                     + f"<p class='small'>{len(types)} instruction types covered: {esc(', '.join(types))}.</p>"
                     + type_table(records, family))
    return "".join(parts)
