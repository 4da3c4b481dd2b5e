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
import sys
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


def _loads(text: str) -> tuple[Any, str, str]:
    """``json.loads`` that turns hostile input into a reason instead of an exception.

    Deep nesting raises RecursionError and an integer beyond Python's digit limit raises a bare
    ValueError; either would otherwise abort the whole file (issue 14).
    """
    try:
        return json.loads(text), "", ""
    except json.JSONDecodeError as e:
        return None, "malformed_json", f"{e.msg} at column {e.colno}"
    except RecursionError:
        return None, "too_deeply_nested", "JSON nesting exceeds the parser's depth limit"
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        return None, "malformed_json", str(e).split(";")[0][:200]


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
            rec, reason, detail = _loads(text)
            if reason:
                yield loc, None, reason, detail
                continue
            if not isinstance(rec, dict):
                yield loc, None, "not_an_object", f"got {type(rec).__name__}"
                continue
            yield loc, rec, "", ""


def _json_array(path: Path) -> Iterator[Located]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        yield {"file": str(path), "line": None}, None, "invalid_utf8", f"byte {e.start}: {e.reason}"
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        yield {"file": str(path), "line": e.lineno}, None, "malformed_json", e.msg
        return
    except (RecursionError, ValueError):  # one JSON document: the whole file is the record
        _, reason, detail = _loads(text)
        yield {"file": str(path), "line": None}, None, reason, detail
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
    # The text is already in memory, so csv's 128 KiB field limit protects nothing: it only turned a
    # long field into an exception that aborted the file. Lift it while reading (restored after) and
    # let ingest judge each field against its own size cap, with the record's line number.
    old_limit = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield from _csv_rows(path, csv.reader(io.StringIO(text, newline=""), dialect=dialect))
    finally:
        csv.field_size_limit(old_limit)


def _csv_rows(path: Path, reader: Any) -> Iterator[Located]:
    header: list[str] | None = None
    row_no = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # the reader resynchronises on the next physical line
            row_no += 1
            yield {"file": str(path), "row": row_no, "line": reader.line_num}, None, "malformed_row", str(e)[:200]
            continue
        if header is None:
            header = values
            continue
        if not values:
            continue
        row_no += 1
        loc = {"file": str(path), "row": row_no, "line": reader.line_num}
        if any(_has_surrogates(v) for v in values) or any(_has_surrogates(k) for k in header):
            yield loc, None, "invalid_utf8", "field contains bytes that are not UTF-8"
            continue
        if len(values) > len(header):
            yield loc, None, "malformed_row", f"{len(values) - len(header)} field(s) more than the header"
            continue
        rec: dict[str, Any] = {k: v for k, v in zip(header, values) if v != ""}
        bad = ""
        for col in _JSON_COLUMNS:  # nested columns travel as JSON text in csv
            if isinstance(rec.get(col), str) and rec[col].lstrip()[:1] in "[{":
                value, reason, detail = _loads(rec[col])
                if reason:
                    bad = f"column {col!r}: {detail}"
                else:
                    rec[col] = value
        if bad:
            yield loc, None, "malformed_json", bad
            continue
        yield loc, rec, "", ""


# A column chunk that decompresses this many times over its stored size, past a few MiB, is a
# decompression bomb (a repeated 200 MB string stores in 7 KB); real text compresses 3-20x.
BOMB_RATIO = 200
BOMB_MIN_BYTES = 8 << 20


def _row_group_problem(meta: Any, max_value_bytes: int) -> str:
    """Why a row group must not be decoded, judged from the footer alone ('' = fine)."""
    n = max(meta.num_rows, 1)
    for j in range(meta.num_columns):
        col = meta.column(j)
        raw, stored = col.total_uncompressed_size, max(col.total_compressed_size, 1)
        if raw > n * max_value_bytes + (1 << 20):
            return (f"column {col.path_in_schema!r} holds {raw} bytes for {meta.num_rows} row(s), more than "
                    f"{max_value_bytes} bytes per value allow")
        if raw > BOMB_MIN_BYTES and raw / stored > BOMB_RATIO:
            return f"column {col.path_in_schema!r} expands {raw // stored}x ({stored} → {raw} bytes)"
    return ""


def _parquet(path: Path, max_value_bytes: int, batch_size: int = 256) -> Iterator[Located]:
    """Rows of a parquet file, row group by row group, checked against the footer before decoding.

    An oversized or unreadable row group (corrupt page, bomb) is yielded once as a quarantined unit
    with its row range (``n_records`` rows) and the remaining row groups are still read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield {"file": str(path), "row": None}, None, "unreadable_file", str(e)[:200]
        return
    row = 0
    for g in range(pf.metadata.num_row_groups):
        meta = pf.metadata.row_group(g)
        loc = {"file": str(path), "row_group": g, "row": row + 1, "n_records": meta.num_rows}
        problem = _row_group_problem(meta, max_value_bytes)
        if problem:
            row += meta.num_rows
            yield loc, None, "oversized_row_group", problem
            continue
        try:  # decode the whole group before yielding so a bad page quarantines all of it, not half
            recs = [r for b in pf.iter_batches(batch_size=batch_size, row_groups=[g]) for r in b.to_pylist()]
        except (pa.ArrowException, OSError) as e:
            row += meta.num_rows
            yield loc, None, "unreadable_row_group", str(e)[:200]
            continue
        for rec in recs:
            row += 1
            yield {"file": str(path), "row": row, "row_group": g}, rec, "", ""


def read_records(path: str | Path, max_value_bytes: int = 4 * 200_000) -> Iterator[Located]:
    """Every physical record of a file, by extension (.jsonl/.json/.parquet/.csv/.tsv).

    ``max_value_bytes`` bounds what a parquet row group may decode to per row and column.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(p)
    if suffix == ".json":
        return _json_array(p)
    if suffix in (".parquet", ".pq"):
        return _parquet(p, max_value_bytes)
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
