"""One export/import for the review store: CSV, Label Studio and Argilla (every item kind).

Export writes the items still open for review (or all of them) with their current state.
Import reads verdicts back and appends them through the same checks as the web app (reviewer
known and qualified when a reviewers file is given, reason codes, retired model versions,
idempotent repeats); each record ends ``applied``, ``skipped`` (no verdict) or ``refused``
with its line/record and why — one bad record never blocks the others.

Files get cut short (a crashed export, a copy in progress): a torn last line or row, or a JSON
array cut mid-record, is reported as ``torn`` and the complete records before it are imported.
Training samples enter the data queue with :func:`enqueue_samples` (their recorded rule results
become highlighted findings); :func:`sample_decisions` reads back what was decided, with both
reviewers and the adjudicator for the lineage — only ``approve`` may train.

CSV cells that a spreadsheet would run as a formula (starting with ``= + - @`` tab or CR) are
written with a leading ``'`` and read back without it. CSV is read as UTF-8 with or without BOM.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mixtune.data.schema import Sample
from mixtune.errors import DataError, MixtuneError
from mixtune.review.queue import derive_state, states, submit
from mixtune.review.reviewers import Reviewer, Reviewers
from mixtune.review.store import KINDS, ReviewStore

FORMATS = ("csv", "labelstudio", "argilla")
CSV_COLUMNS = ["item_id", "kind", "task_id", "family", "prompt", "reference", "output", "model_version",
               "data_version", "state", "decision", "verdict", "reason", "reviewer", "note"]
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
LABEL_STUDIO_CONFIG = """<View>
  <Header value="$task_id"/>
  <Text name="prompt" value="$prompt"/>
  <Text name="reference" value="$reference"/>
  <Text name="output" value="$output"/>
  <Choices name="verdict" toName="output" choice="single" required="true">
    <Choice value="approve"/><Choice value="reject"/><Choice value="needs_fix"/>
  </Choices>
  <TextArea name="reason" toName="output"/>
  <TextArea name="note" toName="output"/>
</View>
"""


@dataclass
class ImportResult:
    applied: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    torn: str = ""


def escape_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: formula-like values get a leading ``'``."""
    s = "" if value is None else str(value)
    return "'" + s if s.startswith(_FORMULA) else s


def unescape_cell(s: str) -> str:
    """Undo :func:`escape_cell` (only where it would have added the quote)."""
    return s[1:] if s.startswith("'") and s[1:].startswith(_FORMULA) else s


def export_store(store: ReviewStore, fmt: str, path: str | Path, *, kinds: tuple[str, ...] = KINDS,
                 open_only: bool = True) -> int:
    """Write items of ``kinds`` (only undecided ones with ``open_only``) in ``fmt``; returns the count."""
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r}; allowed: {list(FORMATS)}")
    st = states(store, kinds)
    items = [it for it in store.items_of(kinds)
             if not open_only or st[it.id].state in ("pending", "in_review", "disputed")]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for it in items:
            row = {**it.__dict__, "item_id": it.id, "state": st[it.id].state, "decision": st[it.id].decision}
            w.writerow([escape_cell(row.get(c, "")) for c in CSV_COLUMNS])
        text = buf.getvalue()
    elif fmt == "labelstudio":
        text = json.dumps([{"id": i, "data": {"item_id": it.id, "kind": it.kind, "task_id": it.task_id,
                                              "prompt": it.prompt, "reference": it.reference, "output": it.output}}
                           for i, it in enumerate(items, 1)], ensure_ascii=False, indent=1)
    else:
        text = json.dumps([{"id": it.id, "fields": {"prompt": it.prompt, "reference": it.reference,
                                                    "output": it.output},
                            "metadata": {"item_id": it.id, "kind": it.kind, "task_id": it.task_id},
                            "responses": {}, "status": "pending"} for it in items], ensure_ascii=False, indent=1)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # never leave a half-written export where a reviewer would open it
    return len(items)


def _records_json(text: str) -> tuple[list[tuple[str, object]], str]:
    """Complete records of a JSON array or JSON-lines text, and a description of a torn tail."""
    dec = json.JSONDecoder()
    s = text.lstrip()
    out: list[tuple[str, object]] = []
    if s.startswith("["):  # walk the array element by element so a cut-off tail loses one record only
        pos, n = 1, 0
        while True:
            while pos < len(s) and s[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(s):
                return out, f"array not closed after record {n}" if n or len(s) > 1 else "empty file"
            if s[pos] == "]":
                return out, ""
            try:
                obj, pos = dec.raw_decode(s, pos)
            except ValueError:
                return out, f"record {n + 1} cut short"
            n += 1
            out.append((f"record {n}", obj))
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {i}", json.loads(line)))
        except ValueError:
            if i == len(lines) and not text.endswith("\n"):
                return out, f"line {i} cut short"
            out.append((f"line {i}", ValueError("not valid JSON")))
    return out, ""


def _records_csv(text: str) -> Iterator[tuple[str, object]]:
    reader = csv.reader(io.StringIO(text), strict=True)
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # an unterminated quote at the end of the file: a torn row
            yield f"line {reader.line_num}", EOFError(f"row cut short ({e})")
            return
        if header is None:
            header = [h.strip() for h in row]
            missing = {"item_id", "verdict"} - set(header)
            if missing:
                raise DataError(f"CSV header lacks column(s) {sorted(missing)}; expected {CSV_COLUMNS}")
            continue
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            yield f"line {reader.line_num}", ValueError(f"{len(row)} cells, header has {len(header)}")
            continue
        yield f"line {reader.line_num}", {h: unescape_cell(c) for h, c in zip(header, row)}


def _verdicts_of(fmt: str, rec: dict) -> list[dict]:
    """Normalise one record to ``[{item_id, verdict, reason, reviewer, note}]`` (empty: no verdict yet)."""
    if fmt == "csv":
        return [rec] if rec.get("verdict", "").strip() else []
    if fmt == "labelstudio":
        data, anns = rec.get("data") or {}, [a for a in rec.get("annotations") or [] if not a.get("was_cancelled")]
        out = []
        for a in anns:  # every annotator's result is a verdict: two annotators = dual validation
            vals: dict[str, str] = {}
            for r in a.get("result") or []:
                v = r.get("value") or {}
                vals[r.get("from_name", "")] = (v.get("choices") or v.get("text") or [""])[0]
            who = a.get("completed_by")
            who = who.get("email") or who.get("id") if isinstance(who, dict) else who
            if vals.get("verdict"):
                out.append({"item_id": data.get("item_id", ""), "verdict": vals["verdict"],
                            "reason": vals.get("reason", ""), "note": vals.get("note", ""),
                            "reviewer": str(who or "")})
        return out
    md, resp = rec.get("metadata") or {}, rec.get("responses") or {}
    reasons = {r.get("user_id"): r.get("value") for r in resp.get("reason") or []}
    notes = {r.get("user_id"): r.get("value") for r in resp.get("note") or []}
    return [{"item_id": md.get("item_id") or rec.get("id", ""), "verdict": r.get("value", ""),
             "reason": reasons.get(r.get("user_id"), "") or "", "note": notes.get(r.get("user_id"), "") or "",
             "reviewer": str(r.get("user_id") or "")} for r in resp.get("verdict") or [] if r.get("value")]


def import_verdicts(store: ReviewStore, path: str | Path, fmt: str | None = None, *,
                    reviewers: Reviewers | None = None, reasons: dict[str, list[str]] | None = None,
                    required: int = 2) -> ImportResult:
    """Append the verdicts in ``path`` to ``store``; see the module docstring for the outcomes."""
    path = Path(path)
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else None)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read review file: {e}", where=str(path)) from None
    res = ImportResult()
    if fmt == "csv":
        records = list(_records_csv(text))
        if records and isinstance(records[-1][1], EOFError):
            res.torn = f"{records[-1][0]}: {records.pop()[1]}"
        elif records and not text.endswith("\n") and isinstance(records[-1][1], ValueError):
            res.torn = f"{records[-1][0]}: last row cut short"
            records.pop()
    else:
        records, res.torn = _records_json(text)
        if fmt is None:  # detect: Label Studio tasks carry "data", Argilla records "fields"
            first = next((r for _, r in records if isinstance(r, dict)), {})
            fmt = "labelstudio" if "data" in first or "annotations" in first else "argilla"
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r}; allowed: {list(FORMATS)}", where=str(path))
    for where, rec in records:
        if isinstance(rec, Exception) or not isinstance(rec, dict):
            res.refused.append((where, str(rec) if isinstance(rec, Exception) else "not a JSON object"))
            continue
        vs = _verdicts_of(fmt, rec)
        if not vs:
            res.skipped.append(where)
        for v in vs:
            tag = f"{where} ({v['item_id']}, {v['reviewer'] or '?'})"
            try:
                if not v["reviewer"]:
                    raise DataError("no reviewer id")
                if reviewers is not None:
                    who = reviewers.by_id.get(v["reviewer"])
                    if who is None:
                        raise DataError(f"reviewer {v['reviewer']!r} is not in the reviewers file")
                    registry = reviewers
                else:  # no registry: trust the file, as a tool export carries no tokens
                    who = Reviewer(v["reviewer"], "0" * 64, ("*",), adjudicator=True)
                    registry = Reviewers([who])
                _, created, _ = submit(store, registry, who, v["item_id"], v["verdict"].strip(),
                                       reason=v.get("reason", "").strip(), note=v.get("note", ""),
                                       reasons=reasons, required=required)
                (res.applied if created else res.duplicate).append(tag)
            except MixtuneError as e:
                res.refused.append((tag, e.message))
    return res


# --- training samples in, decisions out -----------------------------------------------------
def _text(s: Sample, role: str) -> str:
    parts = [m.content for m in s.messages if m.role == role]
    return "\n---\n".join(parts)


def sample_findings(s: Sample, answer: str) -> list[dict]:
    """The sample's recorded rule results as findings; spans outside ``answer`` become span-less."""
    try:
        rows = json.loads(s.rule_results or "[]")
    except ValueError:
        rows = []
    out = []
    for r in rows if isinstance(rows, list) else []:
        span = r.get("span") if isinstance(r, dict) else None
        start, end = (span if isinstance(span, list) and len(span) == 2 else (0, 0))
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(answer)):
            start = end = 0
        out.append({"start": start, "end": end, "rule_id": str(r.get("rule_id", "")),
                    "severity": str(r.get("severity", "error")), "reason": str(r.get("reason", ""))})
    return out


def enqueue_samples(store: ReviewStore, samples: Iterable[Sample], *, data_version: str = "") -> int:
    """Add samples to the data queue (kind ``sample``); returns how many were new."""
    n = 0
    for s in samples:
        answer = _text(s, "assistant") or s.output
        n += store.enqueue(s.id, "sample", s.task_id, prompt=_text(s, "user") or s.instruction,
                           reference="", output=answer, family=s.family or s.task_id,
                           data_version=data_version or s.dataset_version,
                           findings=sample_findings(s, answer), meta={"split": s.split})
    return n


def sample_decisions(store: ReviewStore, required: int = 2) -> dict[str, dict]:
    """``{sample_id: {decision, state, reviewers, adjudicator, time}}`` for every decided sample."""
    by_item = defaultdict(list)
    for v in store.verdicts_of(kinds=("sample",)):
        by_item[v.item_id].append(v)
    out = {}
    for iid, vs in by_item.items():
        st = derive_state(vs, required)
        if st.state in ("decided", "adjudicated"):
            out[iid] = {"decision": st.decision, "state": st.state, "reviewers": st.reviewers,
                        "adjudicator": st.adjudicator, "time": vs[-1].time}
    return out
