"""Record readers for jsonl / json / parquet / csv files and the common SFT shapes.

Readers yield ``(location, record_or_None, error_reason, detail)`` for every physical record so
that ingest can account for each one: a line that is not valid UTF-8 or not valid JSON is still
yielded (with its reason), never skipped. Shape conversion (:func:`to_fields`) maps Alpaca
(``instruction/input/output``), ShareGPT (``conversations`` with ``from/value``), OpenAI
``messages`` and mixtune's own sample records onto Sample fields.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Located = tuple[dict[str, Any], "dict[str, Any] | None", str, str]  # (location, record, reason, detail)

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "system": "system"}
_JSON_COLUMNS = ("messages", "conversations", "gold", "chain_steps", "trained_in_runs")


class ShapeError(ValueError):
    """A record whose structure cannot be mapped onto a sample (reason, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _jsonl(path: Path) -> Iterator[Located]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            loc = {"file": str(path), "line": i}
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield loc, None, "invalid_utf8", f"byte {e.start}: {e.reason}"
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                yield loc, None, "malformed_json", f"{e.msg} at column {e.colno}"
                continue
            if not isinstance(rec, dict):
                yield loc, None, "not_an_object", f"got {type(rec).__name__}"
                continue
            yield loc, rec, "", ""


def _json_array(path: Path) -> Iterator[Located]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        yield {"file": str(path), "line": None}, None, "invalid_utf8", f"byte {e.start}: {e.reason}"
        return
    except json.JSONDecodeError as e:
        yield {"file": str(path), "line": e.lineno}, None, "malformed_json", e.msg
        return
    items = data if isinstance(data, list) else [data]
    for i, rec in enumerate(items, 1):
        loc = {"file": str(path), "row": i}
        if isinstance(rec, dict):
            yield loc, rec, "", ""
        else:
            yield loc, None, "not_an_object", f"got {type(rec).__name__}"


def _has_surrogates(value: Any) -> bool:
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def _csv(path: Path) -> Iterator[Located]:
    # surrogateescape keeps undecodable bytes visible per field instead of failing the file
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    dialect = "excel-tab" if path.suffix == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    for i, row in enumerate(reader, 1):
        loc = {"file": str(path), "row": i, "line": reader.line_num}
        if any(_has_surrogates(v) for v in row.values()) or any(_has_surrogates(k) for k in row):
            yield loc, None, "invalid_utf8", "field contains bytes that are not UTF-8"
            continue
        if None in row:
            yield loc, None, "malformed_row", f"{len(row[None])} field(s) more than the header"
            continue
        rec: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
        bad = ""
        for col in _JSON_COLUMNS:  # nested columns travel as JSON text in csv
            if isinstance(rec.get(col), str) and rec[col].lstrip()[:1] in "[{":
                try:
                    rec[col] = json.loads(rec[col])
                except json.JSONDecodeError as e:
                    bad = f"column {col!r}: {e.msg}"
        if bad:
            yield loc, None, "malformed_json", bad
            continue
        yield loc, rec, "", ""


def _parquet(path: Path, batch_size: int = 8192) -> Iterator[Located]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        yield {"file": str(path), "row": None}, None, "unreadable_file", str(e)[:200]
        return
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            row += 1
            yield {"file": str(path), "row": row}, rec, "", ""


def read_records(path: str | Path) -> Iterator[Located]:
    """Every physical record of a file, by extension (.jsonl/.json/.parquet/.csv/.tsv)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(p)
    if suffix == ".json":
        return _json_array(p)
    if suffix in (".parquet", ".pq"):
        return _parquet(p)
    if suffix in (".csv", ".tsv"):
        return _csv(p)
    raise ValueError(f"unsupported file type {suffix!r}; use .jsonl, .json, .parquet, .csv or .tsv")


def apply_field_map(rec: dict[str, Any], field_map: dict[str, str]) -> dict[str, Any]:
    """Rename source columns to target fields (``{"output": "response"}``)."""
    out = dict(rec)
    for target, source in field_map.items():
        if source in out:
            out[target] = out.pop(source)
    return out


def _messages_from(value: Any, role_key: str, content_key: str, roles: dict[str, str] | None) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ShapeError("wrong_type", f"expected a non-empty list of turns, got {type(value).__name__}")
    msgs = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise ShapeError("wrong_type", f"turn {i} is {type(turn).__name__}, not an object")
        role, content = turn.get(role_key), turn.get(content_key)
        if roles is not None:
            role = roles.get(str(role).lower()) if role is not None else None
        if role not in ("system", "user", "assistant"):
            raise ShapeError("wrong_type", f"turn {i}: unknown role {turn.get(role_key)!r}")
        if not isinstance(content, str):
            raise ShapeError("wrong_type", f"turn {i}: {content_key!r} must be a string")
        msgs.append({"role": role, "content": content})
    return msgs


def to_fields(rec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Map a record onto Sample fields; returns ``(shape, fields)`` or raises :class:`ShapeError`."""
    fields = dict(rec)
    if "messages" in rec:
        shape = "openai_messages" if "task_id" not in rec or "stage" not in rec else "mixtune"
        fields["messages"] = _messages_from(rec["messages"], "role", "content", None)
    elif "conversations" in rec:
        shape = "sharegpt"
        fields["messages"] = _messages_from(fields.pop("conversations"), "from", "value", SHAREGPT_ROLES)
    elif "instruction" in rec:
        shape = "alpaca"
        for key in ("instruction", "input", "output"):
            if key in rec and not isinstance(rec[key], str):
                raise ShapeError("wrong_type", f"{key!r} must be a string, got {type(rec[key]).__name__}")
        instruction, inp = rec["instruction"], rec.get("input", "") or ""
        user = f"{instruction}\n{inp}" if inp else instruction
        fields["messages"] = [{"role": "user", "content": user}, {"role": "assistant", "content": rec.get("output", "")}]
    else:
        raise ShapeError("unrecognised_shape",
                         f"no messages / conversations / instruction field (keys: {sorted(rec)[:8]})")
    if "output" not in fields or not fields.get("output"):
        last = next((m["content"] for m in reversed(fields["messages"]) if m["role"] == "assistant"), "")
        fields["output"] = last
    if isinstance(fields.get("gold"), (dict, list)):
        fields["gold"] = json.dumps(fields["gold"], ensure_ascii=False)
    for key in ("context_variant", "difficulty_dims"):
        if isinstance(fields.get(key), dict):
            fields[key] = json.dumps(fields[key], ensure_ascii=False)
    return shape, fields
