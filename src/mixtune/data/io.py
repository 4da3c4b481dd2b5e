"""Reading and writing mixtune sample files (parquet with the fixed Arrow schema, or jsonl).

Third-party shapes (Alpaca, ShareGPT, OpenAI messages, csv) go through
:mod:`mixtune.data.ingest`, which records every rejected record; these helpers are for files
mixtune wrote itself and fail loudly (with the file name) when one is unreadable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from mixtune.data.schema import ARROW_SCHEMA, Sample, samples_to_table
from mixtune.errors import DataError


def _atomic(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_samples(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples to parquet atomically (a crash never leaves half a file under ``path``)."""
    path = Path(path)
    tmp = _atomic(path)
    pq.write_table(samples_to_table(list(samples)), tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write dict rows as UTF-8 jsonl atomically."""
    path = Path(path)
    tmp = _atomic(path)
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    tmp = _atomic(path)
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_table(path: str | Path) -> pa.Table:
    """A samples parquet as an Arrow table with the canonical schema (missing columns → defaults)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", where=str(path))
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable parquet file: {e}", where=str(path)) from None
    missing = [f.name for f in ARROW_SCHEMA if f.name not in table.column_names]
    if {"task_id", "messages"} & set(missing):
        raise DataError(f"not a samples file: missing column(s) {sorted({'task_id', 'messages'} & set(missing))}",
                        where=str(path))
    return table


def iter_samples(path: str | Path, batch_size: int = 4096) -> Iterator[Sample]:
    """Stream samples from parquet (batch by batch) or jsonl, validating each record."""
    path = Path(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise DataError("file not found", where=str(path))
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    yield _validate(json.loads(line), f"{path}:{i}")
        return
    if not path.is_file():
        raise DataError("file not found", where=str(path))
    try:  # iterate row batches: memory stays bounded by batch_size, not by the file
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable parquet file: {e}", where=str(path)) from None
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            row += 1
            yield _validate(rec, f"{path}:row {row}")


def _validate(rec: dict[str, Any], where: str) -> Sample:
    try:
        return Sample.model_validate(rec)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise DataError(f"invalid sample: {loc}: {first['msg']}", where=where) from None


def read_samples(path: str | Path) -> list[Sample]:
    """All samples of a parquet or jsonl file written by mixtune."""
    return list(iter_samples(path))
