"""Ingest: third-party files → accepted samples + quarantine, never dropping a record silently.

Every physical record ends either accepted or quarantined with its file, line/row, reason and a
short detail; ``input == accepted + quarantined`` always holds and is checked before returning.
Reasons: ``invalid_utf8``, ``malformed_json``, ``malformed_row``, ``not_an_object``,
``unreadable_file``, ``unrecognised_shape``, ``wrong_type``, ``missing_task_id``,
``unknown_task_id`` (only with an ontology), ``empty_output``, ``oversized_field``,
``duplicate_id``, ``too_deeply_nested``, ``unmapped_task`` (a ``task_from`` value outside its map), and for parquet ``oversized_row_group`` /
``unreadable_row_group`` (a whole row group, judged from the footer before decoding, so a
decompression bomb or corrupt page costs one quarantine row with ``n_records`` and its ``row_group``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mixtune.data.ontology import Ontology
from mixtune.data.readers import ShapeError, apply_field_map, read_records, to_fields
from mixtune.data.schema import Sample
from mixtune.errors import DataError

MAX_FIELD_CHARS = 200_000
_SAMPLE_FIELDS = set(Sample.model_fields)
_PREVIEW = 300


@dataclass
class IngestResult:
    samples: list[Sample] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    input_count: int = 0

    @property
    def n_quarantined(self) -> int:
        """Quarantined records (a parquet row group quarantined whole counts its ``n_records`` rows)."""
        return sum(q.get("n_records", 1) for q in self.quarantine)

    def summary(self) -> dict[str, Any]:
        """Counts for ``ingest_summary.json``: input, accepted, quarantined and reasons (in records)."""
        by_reason: Counter = Counter()
        for q in self.quarantine:
            by_reason[q["reason"]] += q.get("n_records", 1)
        return {"input": self.input_count, "accepted": len(self.samples), "quarantined": self.n_quarantined,
                "by_reason": dict(sorted(by_reason.items()))}


def parse_field_map(items: list[str] | None) -> dict[str, str]:
    """``["output=response", ...]`` → ``{"output": "response"}`` with a clear error on bad items."""
    out: dict[str, str] = {}
    for item in items or []:
        target, sep, source = item.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise DataError(f"--field-map {item!r} must look like target=source (e.g. output=response)")
        if target.strip() not in _SAMPLE_FIELDS and target.strip() not in ("conversations",):
            raise DataError(f"--field-map target {target.strip()!r} is not a sample field")
        out[target.strip()] = source.strip()
    return out


def _preview(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return ""
    try:
        return json.dumps(rec, ensure_ascii=False, default=str)[:_PREVIEW]
    except (RecursionError, ValueError):
        return repr(sorted(rec))[:_PREVIEW]


def _oversized(rec: dict[str, Any], limit: int) -> str:
    for k, v in rec.items():
        if isinstance(v, str) and len(v) > limit:
            return k
        if isinstance(v, list) and len(json.dumps(v, ensure_ascii=False)) > limit:
            return k
    return ""


def _build(rec: dict[str, Any], shape: str, loc: dict[str, Any], onto: Ontology | None,
           default_task: str | None, now: str) -> Sample:
    fields = {k: v for k, v in rec.items() if k in _SAMPLE_FIELDS}
    fields.setdefault("task_id", default_task)
    if not fields.get("task_id"):
        raise ShapeError("missing_task_id", "no task_id in the record and no --default-task")
    if not isinstance(fields["task_id"], str):
        raise ShapeError("wrong_type", f"task_id must be a string, got {type(fields['task_id']).__name__}")
    if onto is not None:
        task = onto.tasks.get(fields["task_id"])
        if task is None:
            raise ShapeError("unknown_task_id", f"{fields['task_id']!r} is not in ontology {onto.name}")
        fields.setdefault("family", task.family)
        fields.setdefault("group", task.group)
        fields.setdefault("stage", task.stage)
        fields.setdefault("business_impact", task.business_impact)
        fields["ontology_version"] = onto.version
        if "gold" not in fields:
            fields["gold"] = json.dumps({"rule_ids": task.rule_ids}, ensure_ascii=False)
    where = f"{loc['file']}:{loc.get('line') or loc.get('row')}"
    fields.update(source_uri=where, source_type=shape if shape != "mixtune" else fields.get("source_type", shape),
                  ingest_time=now, defect="")
    fields.setdefault("license", "unknown")
    given_id = fields.pop("id", "") or ""
    try:
        sample = Sample.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        raise ShapeError("wrong_type", f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
    if not sample.output.strip() or not any(m.role == "assistant" and m.content.strip() for m in sample.messages):
        raise ShapeError("empty_output", "the assistant answer is empty")
    sample.id = str(given_id) if given_id else ""
    return sample.with_id()


@dataclass(frozen=True)
class Source:
    """One input file and how to read it (the flat form of a ``data.sources`` entry).

    ``task_column`` names the column holding the task id; with ``task_map`` its values are looked up
    there (an unmapped value is quarantined, never guessed). ``default_task`` applies when a record
    carries no task at all.
    """

    path: str
    field_map: dict[str, str] = field(default_factory=dict)
    default_task: str | None = None
    task_column: str | None = None
    task_map: dict[str, str] = field(default_factory=dict)


def _check_source(src: Source, ontology: Ontology | None) -> None:
    p = Path(src.path)
    if not p.exists():
        raise DataError("input file not found", where=str(p))
    if p.is_dir():
        raise DataError("is a directory; pass the data files", where=str(p))
    for target in src.field_map:
        if target not in _SAMPLE_FIELDS and target != "conversations":
            raise DataError(f"field_map target {target!r} is not a sample field", where=f"{p}: field_map")
    if ontology is None:
        return
    if src.default_task and src.default_task not in ontology.tasks:
        raise DataError(f"default task {src.default_task!r} is not in the ontology; known: {sorted(ontology.tasks)}",
                        where=str(p))
    bad = {k: v for k, v in src.task_map.items() if v not in ontology.tasks}
    if bad:
        raise DataError(f"task_from.map names task ids not in the ontology: {bad}", where=str(p))


def _assign_task(rec: dict[str, Any], src: Source) -> None:
    """Put the task id that ``src`` prescribes into ``rec`` (or quarantine the record)."""
    if src.task_column:
        value = rec.get(src.task_column)
        if value not in (None, ""):
            if not src.task_map:
                rec["task_id"] = value
            elif str(value) in src.task_map:
                rec["task_id"] = src.task_map[str(value)]
            else:
                raise ShapeError("unmapped_task", f"column {src.task_column!r} value {str(value)[:80]!r} is not in "
                                                  f"task_from.map {sorted(src.task_map)[:10]}")
        elif not src.default_task:
            raise ShapeError("missing_task_id", f"column {src.task_column!r} is empty and there is no default_task")
        else:
            rec["task_id"] = src.default_task
    elif not rec.get("task_id") and not src.default_task:
        raise ShapeError("missing_task_id", "no task_id in the record and no default task")


def ingest_paths(paths: list[str | Path], *, ontology: Ontology | None = None,
                 field_map: dict[str, str] | None = None, default_task: str | None = None,
                 max_field_chars: int = MAX_FIELD_CHARS, seen_ids: set[str] | None = None) -> IngestResult:
    """Read every record of ``paths`` with one field map and default task (see :func:`ingest_sources`)."""
    if default_task and ontology is not None and default_task not in ontology.tasks:
        raise DataError(f"--default-task {default_task!r} is not in the ontology; known: {sorted(ontology.tasks)}")
    srcs = [Source(str(p), dict(field_map or {}), default_task) for p in paths]
    return ingest_sources(srcs, ontology=ontology, max_field_chars=max_field_chars, seen_ids=seen_ids)


def ingest_sources(sources: list[Source], *, ontology: Ontology | None = None,
                   max_field_chars: int = MAX_FIELD_CHARS, seen_ids: set[str] | None = None) -> IngestResult:
    """Read every record of every source; accepted samples plus one quarantine row per rejection."""
    for src in sources:
        _check_source(src, ontology)
    res = IngestResult()
    seen = seen_ids if seen_ids is not None else set()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for src in sources:
        try:
            records = read_records(src.path, max_value_bytes=4 * max_field_chars)
        except ValueError as e:
            raise DataError(str(e), where=src.path) from None
        for loc, rec, reason, detail in records:
            n_rec = loc.pop("n_records", 1)  # a quarantined parquet row group stands for n rows
            res.input_count += n_rec
            if rec is not None:
                try:
                    rec = apply_field_map(rec, src.field_map)
                    big = _oversized(rec, max_field_chars)
                    if big:
                        raise ShapeError("oversized_field", f"field {big!r} exceeds {max_field_chars} characters")
                    _assign_task(rec, src)
                    shape, fields = to_fields(rec)
                    sample = _build(fields, shape, loc, ontology, src.default_task, now)
                    if sample.id in seen:
                        raise ShapeError("duplicate_id", f"id {sample.id} already ingested")
                    seen.add(sample.id)
                    res.samples.append(sample)
                    continue
                except ShapeError as e:
                    reason, detail = e.reason, e.detail
                except RecursionError:  # a nested value the parser accepted but re-encoding cannot
                    reason, detail = "too_deeply_nested", "a field nests too deeply to process"
            row = {**loc, "reason": reason, "detail": detail, "record": _preview(rec)}
            res.quarantine.append({**row, "n_records": n_rec} if n_rec != 1 else row)
    assert res.input_count == len(res.samples) + res.n_quarantined  # the no-silent-drop invariant
    return res
