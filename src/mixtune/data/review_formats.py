"""Review exchange formats: CSV, Label Studio task JSON, Argilla-compatible record JSON.

Export writes the samples to review (prompt and answer as plain text) and moves them
``pending → in_review``. Import reads the reviewers' decisions back: ``approved``, ``rejected``
or ``needs_fix`` plus reviewer id, qualification and an optional note. Records without a
decision are skipped (still in review); decisions the state machine refuses are reported per
sample, never applied partially.

- CSV: columns ``sample_id, task_id, prompt, output, status, decision, reviewer_id,
  qualification, note``. Cells that a spreadsheet would run as a formula (starting with
  ``= + - @``, tab or CR) are written with a leading ``'`` that import removes. Import reads
  UTF-8 (with or without BOM), UTF-16 with BOM, or GBK/GB18030 as Excel saves it on Chinese Windows.
- Label Studio: a task list ``[{id, data: {sample_id, task_id, prompt, output}}]``; import reads
  the Label Studio export (``annotations[-1].result`` with ``from_name`` ``decision`` /
  ``qualification`` (choices) and ``note`` (textarea), reviewer from ``completed_by``).
  :data:`LABEL_STUDIO_CONFIG` is the matching labelling interface.
- Argilla: records ``{id, fields: {prompt, output}, metadata, responses, status}`` as in
  Argilla 2.x ``Record.to_dict()``; responses are ``{question: [{value, user_id}]}``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.data.review import DECISIONS, ReviewQueue
from mixtune.data.schema import Sample
from mixtune.errors import DataError, MixtuneError

FORMATS = ("csv", "labelstudio", "argilla")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
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
class Refusal:
    """An entry of an import file that cannot be read as a decision (where, why)."""

    where: str
    reason: str


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


def _escape_cell(value: str) -> str:
    """Defuse spreadsheet formulas: a cell starting with = + - @ tab or CR gets a leading ``'``.

    Cells already starting with ``'`` get one too, so :func:`_unescape_cell` restores every value exactly.
    """
    return "'" + value if value[:1] in _FORMULA_STARTS else value


def _unescape_cell(value: str) -> str:
    return value[1:] if value[:1] == "'" and value[1:2] in _FORMULA_STARTS else value


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_review(samples: list[Sample], queue: ReviewQueue, fmt: str, path: str | Path) -> int:
    """Write ``samples`` for review in ``fmt``; pending ones move to ``in_review``. Returns the count.

    The file is written (atomically) before any state changes, so a failed write leaves no sample
    stuck in ``in_review`` with nothing to review it from.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r}; allowed: {list(FORMATS)}")
    path = Path(path)
    before = {s.id: queue.entries[s.id].status if s.id in queue.entries else "pending" for s in samples}
    status = {sid: "in_review" if st == "pending" else st for sid, st in before.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            def write(f) -> None:
                w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
                w.writeheader()
                for s in samples:
                    row = {"sample_id": s.id, "task_id": s.task_id, "prompt": _prompt(s), "output": _answer(s),
                           "status": status[s.id], "decision": "", "reviewer_id": "", "qualification": "", "note": ""}
                    w.writerow({k: _escape_cell(v) for k, v in row.items()})
            _write_atomic(path, write)
        elif fmt == "labelstudio":
            tasks = [{"id": i + 1, "data": {"sample_id": s.id, "task_id": s.task_id, "prompt": _prompt(s),
                                            "output": _answer(s)}} for i, s in enumerate(samples)]
            _write_atomic(path, lambda f: f.write(json.dumps(tasks, ensure_ascii=False, indent=1)))
            _write_atomic(path.with_suffix(".config.xml"), lambda f: f.write(LABEL_STUDIO_CONFIG))
        else:
            records = [{"id": s.id, "fields": {"prompt": _prompt(s), "output": _answer(s)},
                        "metadata": {"sample_id": s.id, "task_id": s.task_id, "rule_results": s.rule_results},
                        "suggestions": {}, "responses": {}, "vectors": {}, "status": "pending"} for s in samples]
            _write_atomic(path, lambda f: f.write(json.dumps(records, ensure_ascii=False, indent=1)))
    except OSError as e:
        raise DataError(f"cannot write the review file: {e.strerror or e}", where=str(path)) from None
    queue.add(samples)
    for s in samples:
        if before[s.id] == "pending":
            queue.transition(s.id, "in_review")
    return len(samples)


def _load_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # tolerate a BOM from Windows tools
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read review file: {e}", where=str(path)) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON list of tasks/records", where=str(path))
    return data


def _per_entry(path: Path, parse) -> list[Decision | str | Refusal]:
    """Run ``parse`` on every entry of a JSON list; an entry of the wrong shape is refused by position."""
    out: list[Decision | str | Refusal] = []
    for i, entry in enumerate(_load_json(path), 1):
        if not isinstance(entry, dict):
            out.append(Refusal(f"entry {i}", f"is a {type(entry).__name__}, not an object"))
            continue
        try:
            out.append(parse(entry))
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            out.append(Refusal(f"entry {i}", f"unexpected structure ({type(e).__name__}: {e})"))
    return out


def _ls_entry(task: dict[str, Any]) -> Decision | str:
    sid = (task.get("data") or {}).get("sample_id", "")
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not anns:
        return sid
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
    return Decision(sid, vals.get("decision", ""), reviewer, vals.get("qualification", ""), vals.get("note", ""))


def _argilla_entry(rec: dict[str, Any]) -> Decision | str:
    sid = (rec.get("metadata") or {}).get("sample_id") or rec.get("id", "")
    resp = rec.get("responses") or {}
    dec = (resp.get("decision") or [{}])[-1]
    if not dec.get("value"):
        return sid
    qual = (resp.get("qualification") or [{}])[-1].get("value", "")
    note = (resp.get("note") or [{}])[-1].get("value", "")
    return Decision(sid, dec["value"], str(dec.get("user_id", "")), qual, note)


def _ls_decisions(path: Path) -> list[Decision | str | Refusal]:
    return _per_entry(path, _ls_entry)


def _argilla_decisions(path: Path) -> list[Decision | str | Refusal]:
    return _per_entry(path, _argilla_entry)


def _decode_csv(path: Path) -> str:
    """Review CSVs come back from spreadsheets: UTF-8 with or without BOM, UTF-16 or GBK/GB18030."""
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        encodings = ["utf-8-sig"]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encodings = ["utf-16"]
    else:
        encodings = ["utf-8", "gb18030"]  # gb18030 is a superset of GBK and GB2312
    for enc in encodings:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise DataError(f"review CSV is neither {' nor '.join(encodings)}; save it as UTF-8 CSV", where=str(path))


def _csv_decisions(path: Path) -> list[Decision | str | Refusal]:
    out: list[Decision | str | Refusal] = []
    reader = csv.DictReader(io.StringIO(_decode_csv(path), newline=""))
    missing = {"sample_id", "decision", "reviewer_id", "qualification"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"review CSV lacks column(s) {sorted(missing)}", where=str(path))
    for raw_row in reader:
        row = {k: _unescape_cell(v) for k, v in raw_row.items() if isinstance(k, str) and isinstance(v, str)}
        if not (row.get("decision") or "").strip():
            out.append(row.get("sample_id", ""))
            continue
        out.append(Decision(row.get("sample_id", ""), row["decision"].strip(), (row.get("reviewer_id") or "").strip(),
                            (row.get("qualification") or "").strip(), row.get("note") or ""))
    return out


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return "csv"
    data = _load_json(p)
    return "argilla" if data and isinstance(data[0], dict) and "fields" in data[0] else "labelstudio"


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
        if isinstance(d, Refusal):
            res.refused.append((d.where, d.reason))
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
