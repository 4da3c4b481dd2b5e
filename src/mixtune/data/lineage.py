"""Lineage store: append-only parquet rows queried with DuckDB.

Every dataset build appends one row per sample (who made it, who reviewed it — both reviewers of a
dual validation in ``reviewer_ids`` and the adjudicator of a disagreement in ``adjudicator_id`` —,
which rule-set and ontology versions judged it, its difficulty level and split); training runs may append rows with
``event='trained'``. ``mixtune trace`` answers "which samples, annotators, rule versions and
difficulty levels stand behind this task / this failing eval item" with SQL over the parquet
files, so it stays fast at 10^7 rows (DuckDB scans only the needed columns with filter pushdown).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixtune.data.schema import Sample
from mixtune.errors import DataError

LINEAGE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("task_id", pa.string()), ("split", pa.string()), ("level", pa.int8()),
    ("difficulty_score", pa.float32()), ("annotator_id", pa.string()), ("annotator_qualification", pa.string()),
    ("reviewer_id", pa.string()), ("review_status", pa.string()), ("ruleset_version", pa.string()),
    ("ontology_version", pa.string()), ("dataset_version", pa.string()), ("source_uri", pa.string()),
    ("parent_id", pa.string()), ("perturbation_type", pa.string()), ("event", pa.string()),
    ("run_id", pa.string()), ("time", pa.string()),
    ("reviewer_ids", pa.list_(pa.string())), ("adjudicator_id", pa.string()),
])


def lineage_table(samples: Iterable[Sample], *, event: str = "build", run_id: str = "") -> pa.Table:
    """One lineage row per sample."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    cols: dict[str, list[Any]] = {f.name: [] for f in LINEAGE_SCHEMA}
    for s in samples:
        for name in cols:
            if name == "sample_id":
                cols[name].append(s.id)
            elif name == "event":
                cols[name].append(event)
            elif name == "run_id":
                cols[name].append(run_id)
            elif name == "time":
                cols[name].append(now)
            else:
                cols[name].append(getattr(s, name))
    return pa.table(cols, schema=LINEAGE_SCHEMA)


def write_lineage(table: pa.Table, path: str | Path) -> Path:
    """Write a lineage parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
    os.replace(tmp, path)
    return path


def append_lineage(table: pa.Table, store_dir: str | Path) -> Path:
    """Append to a lineage store directory as a new part file (existing parts are never rewritten)."""
    name = f"lineage-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    return write_lineage(table, Path(store_dir) / name)


def synthetic_lineage(n: int, path: str | Path, *, n_tasks: int = 16, n_annotators: int = 200,
                      n_rule_versions: int = 5, seed: int = 0) -> Path:
    """Write a synthetic lineage table of ``n`` rows quickly (vectorised; ~10M rows in seconds).

    Used by the trace benchmark: realistic cardinalities (tasks, annotators, rule versions,
    levels) so query plans resemble a real store.
    """
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = 2_000_000
    tasks = pa.array([f"task_{i:02d}" for i in range(n_tasks)])
    annotators = pa.array([f"annotator_{i:04d}" for i in range(n_annotators)])
    rules = pa.array([f"1.{i}+{i:08x}" for i in range(n_rule_versions)])
    splits = pa.array(["train", "train", "train", "train", "train", "train", "train", "train", "val", "test"])
    statuses = pa.array(["approved"] * 8 + ["rejected", "needs_fix"])
    with pq.ParquetWriter(path, LINEAGE_SCHEMA, compression="zstd") as w:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            ids = np.char.add("s", np.arange(start, start + m).astype(str))

            def take(arr: pa.Array, k: int, m: int = m) -> pa.Array:
                return arr.take(pa.array(rng.integers(0, k, m)))

            levels = rng.integers(1, 6, m).astype(np.int8)
            cols = {
                "sample_id": pa.array(ids), "task_id": take(tasks, n_tasks), "split": take(splits, 10),
                "level": pa.array(levels), "difficulty_score": pa.array((levels - 0.5) / 5, pa.float32()),
                "annotator_id": take(annotators, n_annotators),
                "annotator_qualification": take(pa.array(["junior", "senior", "expert"]), 3),
                "reviewer_id": take(annotators, n_annotators), "review_status": take(statuses, 10),
                "ruleset_version": take(rules, n_rule_versions), "ontology_version": pa.array(["1.0"] * m),
                "dataset_version": pa.array(["ds-synthetic"] * m), "source_uri": pa.array(["synthetic://"] * m),
                "parent_id": pa.array([""] * m), "perturbation_type": pa.array([""] * m),
                "event": pa.array(["build"] * m), "run_id": pa.array([""] * m), "time": pa.array([""] * m),
                "reviewer_ids": pa.array([[]] * m, pa.list_(pa.string())), "adjudicator_id": pa.array([""] * m),
            }
            w.write_table(pa.table(cols, schema=LINEAGE_SCHEMA))
    return path


def _source(path: str | Path) -> str:
    """A DuckDB parquet source for a file, a store directory, or a build directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("lineage*.parquet")) + sorted(p.glob("lineage/*.parquet"))
        if not files:
            raise DataError("no lineage*.parquet files here", where=str(p))
        return "read_parquet([" + ", ".join(_quote(str(f)) for f in files) + "], union_by_name=true)"
    if not p.is_file():
        raise DataError("lineage file not found", where=str(p))
    return f"read_parquet({_quote(str(p))})"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    return con


def trace_task(lineage: str | Path, task_id: str, *, level: int | None = None, limit: int = 20) -> dict[str, Any]:
    """Who and what stands behind ``task_id``: sample counts, annotators, reviewers, rule versions, levels.

    Returns a dict with ``n_samples``, ``by_level``, ``by_split``, ``annotators`` (top ``limit``),
    ``rule_versions``, ``review_status`` and ``sample_ids`` (first ``limit``).
    """
    src = _source(lineage)
    where = "task_id = ?" + (" AND level = ?" if level is not None else "")
    params: list[Any] = [task_id] + ([level] if level is not None else [])
    con = _connect()
    try:
        def rows(sql: str, p: list[Any] = params) -> list[tuple]:
            return con.execute(sql, p).fetchall()

        base = f"FROM {src} WHERE {where}"
        # one scan for the grouped facts: GROUPING SETS answers all breakdowns in a single pass
        grouped = rows(
            f"SELECT level, split, annotator_id, ruleset_version, review_status, count(*) {base} "
            "GROUP BY GROUPING SETS ((level), (split), (annotator_id), (ruleset_version), (review_status))")
        out: dict[str, Any] = {"task_id": task_id, "level": level, "by_level": {}, "by_split": {},
                               "annotators": {}, "rule_versions": {}, "review_status": {}}
        for lv, sp, ann, rv, st, c in grouped:
            if lv is not None:
                out["by_level"][int(lv)] = c
            elif sp is not None:
                out["by_split"][sp] = c
            elif ann is not None:
                out["annotators"][ann] = c
            elif rv is not None:
                out["rule_versions"][rv] = c
            elif st is not None:
                out["review_status"][st] = c
        out["n_samples"] = sum(out["by_level"].values())
        out["annotators"] = dict(sorted(out["annotators"].items(), key=lambda kv: -kv[1])[:limit])
        out["sample_ids"] = [r[0] for r in rows(f"SELECT sample_id {base} LIMIT {int(limit)}")]
        return out
    finally:
        con.close()


def trace_item(lineage: str | Path, sample_id: str, task_id: str | None = None, *, limit: int = 20) -> dict[str, Any]:
    """Trace a failing eval item (it carries ``sample_id`` and ``task_id``).

    Returns the item's own lineage row(s) (if the item was built from a sample), its perturbed
    twins, and :func:`trace_task` for its task restricted to the item's difficulty level.
    """
    src = _source(lineage)
    con = _connect()
    try:
        cur = con.execute(f"SELECT * FROM {src} WHERE sample_id = ?", [sample_id])  # older files lack new columns
        names = [d[0] for d in cur.description]
        own = cur.fetchall()
        twins = con.execute(f"SELECT sample_id, perturbation_type FROM {src} WHERE parent_id = ? LIMIT {int(limit)}",
                            [sample_id]).fetchall()
    finally:
        con.close()
    cols = [f.name for f in LINEAGE_SCHEMA]
    rows = [{c: d.get(c) for c in cols} for d in (dict(zip(names, r)) for r in own)]
    task = task_id or (rows[0]["task_id"] if rows else None)
    if task is None:
        raise DataError(f"sample {sample_id!r} is not in the lineage store and no task id was given")
    level = int(rows[0]["level"]) if rows else None
    return {"sample_id": sample_id, "task_id": task, "rows": rows,
            "twins": [{"sample_id": a, "perturbation_type": b} for a, b in twins],
            "task": trace_task(lineage, task, level=level, limit=limit)}


def trace_failures(lineage: str | Path, items: list[dict[str, Any]], *, limit: int = 20) -> dict[str, Any]:
    """Trace many failing eval items at once (each has ``sample_id`` and ``task_id``).

    One join finds each item's own lineage row (annotator, reviewer, rule-set version, level);
    then every distinct (task, level) among them is traced with :func:`trace_task`.
    """
    import pyarrow as pa

    if not items:
        return {"items": [], "tasks": []}
    src = _source(lineage)
    ids = pa.table({"item_sample_id": [str(i.get("sample_id", "")) for i in items],
                    "item_task_id": [str(i.get("task_id", "")) for i in items]})
    con = _connect()
    try:
        con.register("failing", ids)
        # l.* rather than named columns: a lineage file written before a column existed still answers
        cur = con.execute(f"SELECT f.item_sample_id, f.item_task_id, l.* FROM failing f "
                          f"LEFT JOIN (SELECT * FROM {src}) l ON l.sample_id = f.item_sample_id")
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    want = ("level", "annotator_id", "reviewer_id", "ruleset_version", "split", "reviewer_ids", "adjudicator_id")
    found = []
    for r in rows:
        d = dict(zip(names[2:], r[2:]))
        found.append({"sample_id": r[0], "task_id": r[1], **{k: d.get(k) for k in want}})
    keys = sorted({(r["task_id"], r["level"]) for r in found}, key=lambda k: (k[0], k[1] or 0))
    return {"items": found, "tasks": [trace_task(lineage, t, level=lv, limit=limit) for t, lv in keys]}
