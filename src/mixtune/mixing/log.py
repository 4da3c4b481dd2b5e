"""``mixing_log.jsonl``: one JSON line per evaluation cycle with every decision and its inputs.

A line holds at least ``method``, ``cycle``, ``step``, ``scores`` (task → score), ``heat``
(task → {heat, decay, cv, rejection, gap}), ``weights`` (task → weight), ``levels``
(task → level), ``promotions`` (tasks promoted this cycle) and ``modulation`` (group → factor).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mixtune.errors import DataError

REQUIRED = ("method", "cycle", "step", "scores", "heat", "weights", "levels", "promotions", "modulation")
HEAT_KEYS = ("heat", "decay", "cv", "rejection", "gap")


def make_record(decision: dict, levels: dict[str, int], promotions: list[str],
                modulation: dict[str, float], **extra: Any) -> dict:
    """Merge a policy's decision record with curriculum and modulation state into one log line."""
    return {**decision, "levels": dict(levels), "promotions": list(promotions),
            "modulation": dict(modulation), **extra}


def validate_record(rec: dict) -> None:
    """Raise ``ValueError`` if ``rec`` lacks a required field — a caller bug, not user input."""
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"mixing log record lacks {missing}")
    for task, h in rec["heat"].items():
        lacking = [k for k in HEAT_KEYS if k not in h]
        if lacking:
            raise ValueError(f"mixing log heat for {task!r} lacks {lacking}")


class MixingLog:
    """Append-only JSON-lines log of mixing, curriculum and modulation decisions."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        """Validate and append one record; flushed and fsynced so a crash keeps finished cycles."""
        validate_record(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict]:
        """All records in order; a truncated last line (crash mid-write) is ignored."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        out = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines):
                    break
                raise DataError(f"line {i} is not valid JSON: {e.msg}", where=str(self.path)) from e
        return out

    def rewind(self, last_cycle: int) -> int:
        """Drop records after ``last_cycle`` (a resumed run replays them); return how many.

        Written to a temporary file and renamed, so the log is never left half-rewritten.
        """
        recs = self.records()
        keep = [r for r in recs if int(r["cycle"]) <= last_cycle]
        if not self.path.exists():
            return 0
        # Rewrite even when nothing is dropped: it also removes a torn last line, which the next
        # append would otherwise glue onto a valid record.
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in keep),
                       encoding="utf-8")
        os.replace(tmp, self.path)
        return len(recs) - len(keep)
