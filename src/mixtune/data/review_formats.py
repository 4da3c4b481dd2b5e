"""Review exchange formats: CSV, Label Studio task JSON, Argilla-compatible record JSON.

Export writes the samples to review (prompt and answer as plain text) and moves them
``pending → in_review``. Import reads the reviewers' decisions back: ``approved``, ``rejected``
or ``needs_fix`` plus reviewer id, qualification and an optional note. Records without a
decision are skipped (still in review); decisions the state machine refuses are reported per
sample, never applied partially.

- CSV: columns ``sample_id, task_id, prompt, output, status, decision, reviewer_id,
  qualification, note``.
- Label Studio: a task list ``[{id, data: {sample_id, task_id, prompt, output}}]``; import reads
  the Label Studio export (``annotations[-1].result`` with ``from_name`` ``decision`` /
  ``qualification`` (choices) and ``note`` (textarea), reviewer from ``completed_by``).
  :data:`LABEL_STUDIO_CONFIG` is the matching labelling interface.
- Argilla: records ``{id, fields: {prompt, output}, metadata, responses, status}`` as in
  Argilla 2.x ``Record.to_dict()``; responses are ``{question: [{value, user_id}]}``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.data.review import DECISIONS, ReviewQueue
from mixtune.data.schema import Sample
from mixtune.errors import DataError, MixtuneError

FORMATS = ("csv", "labelstudio", "argilla")
CSV_COLUMNS = ["sample_id", "task_id", "prompt", "output", "status", "decision", "reviewer_id", "qualification", "note"]
LABEL_STUDIO_CONFIG = """<View>
  <Header value="$task_id"/>
  <Text name="prompt" value="$prompt"/>
  <Text name="output" value="$output"/>
  <Choices name="decision" toName="output" choice="single" required="true">
    <Choice value="approved"/><Choice value="rejected"/><Choice value="needs_fix"/>
  </Choices>
  <Choices name="qualification" toName="output" choice="single" required="true">
    <Choice value="junior"/><Choice value="senior"/><Choice value="expert"/>
  </Choices>
  <TextArea name="note" toName="output"/>
</View>
"""


@dataclass
class Decision:
    sample_id: str
    decision: str
    reviewer_id: str
    qualification: str
    note: str = ""


@dataclass
class ImportResult:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def _prompt(s: Sample) -> str:
    users = [m.content for m in s.messages if m.role == "user"]
    return users[0] if len(users) == 1 else "\n---\n".join(users)


def _answer(s: Sample) -> str:
    outs = [m.content for m in s.messages if m.role == "assistant"]
    return outs[0] if len(outs) == 1 else "\n---\n".join(outs)


def export_review(samples: list[Sample], queue: ReviewQueue, fmt: str, path: str | Path) -> int:
    """Write ``samples`` for review in ``fmt``; pending ones move to ``in_review``. Returns the count."""
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r}; allowed: {list(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    queue.add(samples)
    for s in samples:
        if queue.entries[s.id].status == "pending":
            queue.transition(s.id, "in_review")
    status = {s.id: queue.entries[s.id].status for s in samples}
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for s in samples:
                w.writerow({"sample_id": s.id, "task_id": s.task_id, "prompt": _prompt(s), "output": _answer(s),
                            "status": status[s.id], "decision": "", "reviewer_id": "", "qualification": "", "note": ""})
    elif fmt == "labelstudio":
        tasks = [{"id": i + 1, "data": {"sample_id": s.id, "task_id": s.task_id, "prompt": _prompt(s),
                                        "output": _answer(s)}} for i, s in enumerate(samples)]
        path.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
        path.with_suffix(".config.xml").write_text(LABEL_STUDIO_CONFIG, encoding="utf-8")
    else:
        records = [{"id": s.id, "fields": {"prompt": _prompt(s), "output": _answer(s)},
                    "metadata": {"sample_id": s.id, "task_id": s.task_id, "rule_results": s.rule_results},
                    "suggestions": {}, "responses": {}, "vectors": {}, "status": "pending"} for s in samples]
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return len(samples)


def _load_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read review file: {e}", where=str(path)) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON list of tasks/records", where=str(path))
    return data


def _ls_decisions(path: Path) -> list[Decision | str]:
    out: list[Decision | str] = []
    for task in _load_json(path):
        sid = (task.get("data") or {}).get("sample_id", "")
        anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not anns:
            out.append(sid)
            continue
        ann = anns[-1]
        vals: dict[str, str] = {}
        for r in ann.get("result", []):
            v = r.get("value", {})
            if "choices" in v and v["choices"]:
                vals[r.get("from_name", "")] = v["choices"][0]
            elif "text" in v and v["text"]:
                vals[r.get("from_name", "")] = v["text"][0] if isinstance(v["text"], list) else v["text"]
        who = ann.get("completed_by")
        reviewer = who.get("email") or str(who.get("id", "")) if isinstance(who, dict) else str(who or "")
        out.append(Decision(sid, vals.get("decision", ""), reviewer, vals.get("qualification", ""), vals.get("note", "")))
    return out


def _argilla_decisions(path: Path) -> list[Decision | str]:
    out: list[Decision | str] = []
    for rec in _load_json(path):
        sid = (rec.get("metadata") or {}).get("sample_id") or rec.get("id", "")
        resp = rec.get("responses") or {}
        dec = (resp.get("decision") or [{}])[-1]
        if not dec.get("value"):
            out.append(sid)
            continue
        qual = (resp.get("qualification") or [{}])[-1].get("value", "")
        note = (resp.get("note") or [{}])[-1].get("value", "")
        out.append(Decision(sid, dec["value"], str(dec.get("user_id", "")), qual, note))
    return out


def _csv_decisions(path: Path) -> list[Decision | str]:
    out: list[Decision | str] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"sample_id", "decision", "reviewer_id", "qualification"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"review CSV lacks column(s) {sorted(missing)}", where=str(path))
        for row in reader:
            if not (row.get("decision") or "").strip():
                out.append(row["sample_id"])
                continue
            out.append(Decision(row["sample_id"], row["decision"].strip(), (row.get("reviewer_id") or "").strip(),
                                (row.get("qualification") or "").strip(), row.get("note") or ""))
    return out


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return "csv"
    data = _load_json(p)
    return "argilla" if data and "fields" in data[0] else "labelstudio"


def import_review(path: str | Path, queue: ReviewQueue, fmt: str | None = None) -> ImportResult:
    """Apply reviewers' decisions from ``path`` to ``queue``; refused decisions are reported."""
    path = Path(path)
    if not path.is_file():
        raise DataError("review file not found", where=str(path))
    fmt = fmt or detect_format(path)
    reader = {"csv": _csv_decisions, "labelstudio": _ls_decisions, "argilla": _argilla_decisions}.get(fmt)
    if reader is None:
        raise DataError(f"unknown review format {fmt!r}; allowed: {list(FORMATS)}")
    res = ImportResult()
    for d in reader(path):
        if isinstance(d, str):
            res.skipped.append(d)
            continue
        if d.decision not in DECISIONS:
            res.refused.append((d.sample_id, f"decision {d.decision!r} is not one of {list(DECISIONS)}"))
            continue
        try:
            queue.decide(d.sample_id, d.decision, reviewer_id=d.reviewer_id, qualification=d.qualification,
                         note=d.note)
            res.applied.append(d.sample_id)
        except MixtuneError as e:
            res.refused.append((d.sample_id, e.message))
    return res
