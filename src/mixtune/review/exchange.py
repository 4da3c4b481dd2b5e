"""One export/import for the review store: CSV, Label Studio and Argilla, for every item kind.

Training samples, model outputs and blind A/B pairs all leave and come back the same way.
Export writes the items still open for review (or all of them) with their current state; a
pair shows its two answers as ``answer_a`` / ``answer_b`` and never which model is which.
Import reads verdicts back and appends them through the same checks as the web app (reviewer
known and qualified when a reviewers file is given, reason codes, retired model versions,
idempotent repeats); each record ends ``applied``, ``duplicate``, ``skipped`` (no verdict) or
``refused`` with its ``file:line`` (``file: record N`` in a JSON array) and why — one bad record
never blocks the others.

Files get cut short (a crashed export, a copy in progress): a torn last line or row, or a JSON
array cut mid-record, is reported as ``torn`` (``file:line: ...``) and the complete records
before it are imported.

CSV cells that a spreadsheet would run as a formula (starting with ``= + - @`` tab or CR) are
written with a leading ``'`` and read back without it. Files come back from spreadsheets, so
import reads UTF-8 with or without BOM, UTF-16 with BOM, and GBK/GB18030 (Excel on Chinese
Windows). Verdicts are read case-insensitively (``A``/``B``/``tie`` for pairs; the old queue's
``approved``/``rejected`` too), and the old column names ``sample_id``, ``decision`` and
``reviewer_id`` are understood.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mixtune.errors import DataError, MixtuneError
from mixtune.review.queue import states, submit
from mixtune.review.reviewers import Reviewer, Reviewers
from mixtune.review.store import KINDS, VERDICTS, Item, ReviewStore

FORMATS = ("csv", "labelstudio", "argilla")
CSV_COLUMNS = ["item_id", "kind", "task_id", "family", "prompt", "reference", "output", "answer_a", "answer_b",
               "model_version", "data_version", "state", "decision", "verdict", "reason", "reviewer", "note"]
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_SYNONYMS = {"approved": "approve", "rejected": "reject", "needs-fix": "needs_fix", "t": "tie", "same": "tie",
             "equal": "tie"}
_ALIASES = {"sample_id": "item_id", "decision": "verdict", "reviewer_id": "reviewer", "comment": "note"}
_VERDICT_QUESTIONS = ("verdict", "preference", "decision")  # this module's name, then the old exports' names


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


def label_studio_config(kinds: tuple[str, ...] = KINDS) -> str:
    """The Label Studio labelling interface matching an export of ``kinds``."""
    choices = [v for k in KINDS if k in kinds for v in VERDICTS[k]]
    texts = []
    if set(kinds) - {"pair"}:
        texts += ['  <Text name="reference" value="$reference"/>', '  <Text name="output" value="$output"/>']
    if "pair" in kinds:
        texts += ['  <Header value="Answer A"/>', '  <Text name="answer_a" value="$answer_a"/>',
                  '  <Header value="Answer B"/>', '  <Text name="answer_b" value="$answer_b"/>']
    return "\n".join([
        "<View>", '  <Header value="$task_id"/>', '  <Text name="prompt" value="$prompt"/>', *texts,
        '  <Choices name="verdict" toName="prompt" choice="single" required="true">',
        "    " + "".join(f'<Choice value="{c}"/>' for c in dict.fromkeys(choices)),
        "  </Choices>", '  <TextArea name="reason" toName="prompt"/>', '  <TextArea name="note" toName="prompt"/>',
        "</View>", ""])


def _fields(it: Item) -> dict[str, str]:
    """What a reviewer sees of ``it``: a pair's answers as A / B, anything else as reference / output."""
    if it.kind == "pair":
        return {"prompt": it.prompt, "answer_a": it.output, "answer_b": it.reference}
    return {"prompt": it.prompt, "reference": it.reference, "output": it.output}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # never leave a half-written export where a reviewer would open it
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder itself is unusable: nothing was written
            pass
        raise DataError(f"cannot write the review file: {e.strerror or e}", where=str(path)) from None


def export_store(store: ReviewStore, fmt: str, path: str | Path, *, kinds: tuple[str, ...] = KINDS,
                 open_only: bool = True, item_ids: set[str] | None = None, tasks: set[str] | None = None,
                 limit: int = 0) -> int:
    """Write items of ``kinds`` (only undecided ones with ``open_only``; only ``item_ids`` / ``tasks``
    when given; at most ``limit``) in ``fmt``; returns the count. Label Studio exports get their
    labelling interface beside them (``<name>.config.xml``)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r}; allowed: {list(FORMATS)}")
    st = states(store, kinds)
    items = [it for it in store.items_of(kinds)
             if (not open_only or st[it.id].state in ("pending", "in_review", "disputed"))
             and (item_ids is None or it.id in item_ids) and (not tasks or it.task_id in tasks)]
    items = items[:limit] if limit else items
    path = Path(path)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for it in items:
            row = {**it.__dict__, **_fields(it), "item_id": it.id, "state": st[it.id].state,
                   "decision": st[it.id].decision}
            if it.kind == "pair":
                row.update(reference="", output="")
            w.writerow([escape_cell(row.get(c, "")) for c in CSV_COLUMNS])
        text = buf.getvalue()
    elif fmt == "labelstudio":
        text = json.dumps([{"id": i, "data": {"item_id": it.id, "kind": it.kind, "task_id": it.task_id, **_fields(it)}}
                           for i, it in enumerate(items, 1)], ensure_ascii=False, indent=1)
        _write(path.with_suffix(".config.xml"), label_studio_config(tuple(sorted({it.kind for it in items}))
                                                                    or kinds))
    else:  # Argilla 2.x records: questions "verdict" (label), "reason" and "note" (text)
        text = json.dumps([{"id": it.id, "fields": _fields(it),
                            "metadata": {"item_id": it.id, "kind": it.kind, "task_id": it.task_id},
                            "responses": {}, "status": "pending"} for it in items], ensure_ascii=False, indent=1)
    _write(path, text)
    return len(items)


def decode(path: Path) -> str:
    """A review file as text: UTF-8 (BOM or not), UTF-16 with BOM, else GBK/GB18030."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read review file: {e.strerror or e}", where=str(path)) from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encodings = ["utf-16"]
    else:
        encodings = ["utf-8-sig", "gb18030"]  # gb18030 is a superset of GBK and GB2312
    for enc in encodings:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise DataError("review file is neither UTF-8, UTF-16 nor GBK/GB18030 text; save it as UTF-8",
                    where=str(path))


def _records_json(text: str, path: Path) -> tuple[list[tuple[str, object]], str]:
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
                return out, f"{path}: array not closed after record {n}" if n or len(s) > 1 else f"{path}: empty"
            if s[pos] == "]":
                return out, ""
            try:
                obj, pos = dec.raw_decode(s, pos)
            except ValueError:
                return out, f"{path}: record {n + 1} cut short"
            n += 1
            out.append((f"{path}: record {n}", obj))
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{i}", json.loads(line)))
        except ValueError:
            if i == len(lines) and not text.endswith("\n"):
                return out, f"{path}:{i}: last line cut short"
            out.append((f"{path}:{i}", ValueError("not valid JSON")))
    return out, ""


def _records_csv(text: str, path: Path) -> Iterator[tuple[str, object]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # an unterminated quote at the end of the file: a torn row
            yield f"{path}:{reader.line_num}", EOFError(f"row cut short ({e})")
            return
        if header is None:
            header = [_ALIASES.get(h.strip(), h.strip()) for h in row]
            missing = {"item_id", "verdict"} - set(header)
            if missing:
                raise DataError(f"CSV header lacks column(s) {sorted(missing)}; expected {CSV_COLUMNS}", where=str(path))
            continue
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            yield f"{path}:{reader.line_num}", ValueError(f"{len(row)} cells, header has {len(header)}")
            continue
        yield f"{path}:{reader.line_num}", {h: unescape_cell(c) for h, c in zip(header, row)}


def _first(value: object) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return "" if value is None else str(value)


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
                vals[r.get("from_name", "")] = _first(v.get("choices") or v.get("text") or "")
            who = a.get("completed_by")
            who = who.get("email") or who.get("id") if isinstance(who, dict) else who
            verdict = next((vals[q] for q in _VERDICT_QUESTIONS if vals.get(q)), "")
            if verdict:
                out.append({"item_id": data.get("item_id") or data.get("sample_id") or "", "verdict": verdict,
                            "reason": vals.get("reason", ""), "note": vals.get("note", ""),
                            "reviewer": str(who or "")})
        return out
    md, resp = rec.get("metadata") or {}, rec.get("responses") or {}
    if not isinstance(resp, dict):
        raise DataError("'responses' is not an object (Argilla 2.x record expected)")
    reasons = {r.get("user_id"): r.get("value") for r in resp.get("reason") or []}
    notes = {r.get("user_id"): r.get("value") for r in resp.get("note") or []}
    answers = next((resp[q] for q in _VERDICT_QUESTIONS if resp.get(q)), [])
    return [{"item_id": md.get("item_id") or md.get("sample_id") or rec.get("id", ""), "verdict": _first(r.get("value")),
             "reason": reasons.get(r.get("user_id"), "") or "", "note": notes.get(r.get("user_id"), "") or "",
             "reviewer": str(r.get("user_id") or "")} for r in answers if r.get("value")]


def _norm(verdict: str) -> str:
    v = verdict.strip().lower()
    return _SYNONYMS.get(v, v)


def import_verdicts(store: ReviewStore, path: str | Path, fmt: str | None = None, *,
                    reviewers: Reviewers | None = None, reasons: dict[str, list[str]] | None = None,
                    required: int = 2) -> ImportResult:
    """Append the verdicts in ``path`` to ``store``; see the module docstring for the outcomes."""
    path = Path(path)
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else None)
    text = decode(path)
    res = ImportResult()
    if fmt == "csv":
        records = list(_records_csv(text, path))
        if records and isinstance(records[-1][1], EOFError):
            res.torn = f"{records[-1][0]}: {records.pop()[1]}"
        elif records and not text.endswith("\n") and isinstance(records[-1][1], ValueError):
            res.torn = f"{records.pop()[0]}: last row cut short"
    else:
        records, res.torn = _records_json(text, path)
        if fmt is None:  # detect: Label Studio tasks carry "data", Argilla records "fields"
            first = next((r for _, r in records if isinstance(r, dict)), {})
            fmt = "labelstudio" if "data" in first or "annotations" in first else "argilla"
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r}; allowed: {list(FORMATS)}", where=str(path))
    for where, rec in records:
        if isinstance(rec, Exception) or not isinstance(rec, dict):
            res.refused.append((where, str(rec) if isinstance(rec, Exception) else "not a JSON object"))
            continue
        try:
            vs = _verdicts_of(fmt, rec)
        except (MixtuneError, AttributeError, TypeError) as e:  # a record of the wrong shape
            res.refused.append((where, getattr(e, "message", None) or f"unexpected structure ({e})"))
            continue
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
                _, created, _ = submit(store, registry, who, v["item_id"], _norm(v["verdict"]),
                                       reason=v.get("reason", "").strip(), note=v.get("note", ""),
                                       reasons=reasons, required=required)
                (res.applied if created else res.duplicate).append(tag)
            except MixtuneError as e:
                res.refused.append((tag, e.message))
    return res
