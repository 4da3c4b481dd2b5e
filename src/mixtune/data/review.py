"""Expert review queue: an append-only event log with a strict state machine.

States: ``pending → in_review → approved | rejected | needs_fix``; ``needs_fix`` goes back to
``pending`` or ``in_review`` after the fix; ``approved`` and ``rejected`` are final. Every
decision records the reviewer id and qualification; invalid transitions are refused with the
sample id and both states. The log (``review_log.jsonl``) is replayed to get current states, so
nothing is ever overwritten and any decision can be audited.

Exchange formats (:mod:`mixtune.data.review_formats`): CSV, Label Studio task JSON and
Argilla-compatible record JSON. Per-task rejection rates feed the mixing controller's heat.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mixtune.data.schema import Sample
from mixtune.errors import DataError

STATES = ("pending", "in_review", "approved", "rejected", "needs_fix")
DECISIONS = ("approved", "rejected", "needs_fix")
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"in_review"}),
    "in_review": frozenset({"approved", "rejected", "needs_fix", "pending"}),
    "needs_fix": frozenset({"pending", "in_review"}),
    "approved": frozenset(),
    "rejected": frozenset(),
}


@dataclass
class ReviewEntry:
    """Current state of one sample in the queue."""

    sample_id: str
    task_id: str
    status: str = "pending"
    reviewer_id: str = ""
    qualification: str = ""
    time: str = ""
    note: str = ""


class ReviewQueue:
    """Review states for a dataset, persisted as an append-only jsonl event log."""

    def __init__(self, log_path: str | Path, *, required_qualifications: Iterable[str] | None = None):
        self.path = Path(log_path)
        self.required = set(required_qualifications or ())
        self.entries: dict[str, ReviewEntry] = {}
        if self.path.is_file():
            self._replay()

    def _replay(self) -> None:
        raw = self.path.read_bytes()
        body, torn = self._split_torn_tail(raw)
        for i, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
                e = self.entries.setdefault(ev["sample_id"], ReviewEntry(ev["sample_id"], ev.get("task_id", "")))
                e.status, e.reviewer_id, e.qualification = ev["to"], ev.get("reviewer_id", ""), ev.get("qualification", "")
                e.time, e.note = ev.get("time", ""), ev.get("note", "")
            except (ValueError, KeyError, TypeError) as err:  # ValueError covers bad JSON and bad UTF-8
                raise DataError(f"corrupt review log entry: {err}", where=f"{self.path}:{i}") from None
        if torn is not None:
            self._repair(body, torn, line_no=body.count(b"\n") + 1)

    @staticmethod
    def _split_torn_tail(raw: bytes) -> tuple[bytes, bytes | None]:
        """``(complete part, torn tail or None)``: a crash mid-append leaves a last line without its
        newline; when that line does not parse it is torn, and only it (never a complete line) is set aside."""
        if not raw or raw.endswith(b"\n"):
            return raw, None
        cut = raw.rfind(b"\n") + 1
        tail = raw[cut:]
        try:
            json.loads(tail)["sample_id"]
            return raw, b""  # complete event, only its newline is missing
        except (ValueError, KeyError, TypeError):
            return raw[:cut], tail

    def _repair(self, body: bytes, torn: bytes, line_no: int) -> None:
        # Appending after a torn line would glue the next event onto it and corrupt a middle line,
        # blocking every later command; so end the log at its last complete line, keeping the torn
        # bytes next to it for audit.
        if torn:
            with open(self.path.with_name(self.path.name + ".torn"), "ab") as f:
                f.write(torn + b"\n")
            with open(self.path, "r+b") as f:
                f.truncate(len(body))
            print(f"warning: {self.path}:{line_no}: skipped a torn last line ({len(torn)} bytes, kept in "
                  f"{self.path.name}.torn); complete lines are intact", file=sys.stderr)
        else:
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def _append(self, events: list[dict]) -> None:
        if not events:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for ev in events:
                f.write(json.dumps(ev, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, samples: Iterable[Sample]) -> int:
        """Enqueue samples not yet known as ``pending``; returns how many were added."""
        now = _now()
        events = []
        for s in samples:
            if s.id in self.entries:
                continue
            self.entries[s.id] = ReviewEntry(s.id, s.task_id, "pending", time=now)
            events.append({"sample_id": s.id, "task_id": s.task_id, "from": None, "to": "pending", "time": now})
        self._append(events)
        return len(events)

    def transition(self, sample_id: str, to: str, *, reviewer_id: str = "", qualification: str = "",
                   note: str = "") -> ReviewEntry:
        """Move one sample to state ``to``; refuses unknown samples, invalid moves, anonymous decisions."""
        e = self.entries.get(sample_id)
        if e is None:
            raise DataError(f"sample {sample_id!r} is not in the review queue")
        if to not in STATES:
            raise DataError(f"unknown review state {to!r}; allowed: {list(STATES)}")
        if to not in TRANSITIONS[e.status]:
            allowed = sorted(TRANSITIONS[e.status]) or "none (final)"
            raise DataError(f"sample {sample_id!r}: cannot go from {e.status} to {to}; allowed: {allowed}")
        if to in DECISIONS:
            if not reviewer_id or not qualification:
                raise DataError(f"sample {sample_id!r}: a {to} decision needs a reviewer id and qualification")
            if self.required and qualification not in self.required:
                raise DataError(f"sample {sample_id!r}: reviewer qualification {qualification!r} is not one of "
                                f"{sorted(self.required)}")
        now = _now()
        self._append([{"sample_id": sample_id, "task_id": e.task_id, "from": e.status, "to": to,
                       "reviewer_id": reviewer_id, "qualification": qualification, "note": note, "time": now}])
        e.status, e.reviewer_id, e.qualification, e.time, e.note = to, reviewer_id, qualification, now, note
        return e

    def decide(self, sample_id: str, decision: str, *, reviewer_id: str, qualification: str,
               note: str = "") -> ReviewEntry:
        """Record a decision, passing through ``in_review`` when the sample was still pending."""
        e = self.entries.get(sample_id)
        if decision in DECISIONS and (not reviewer_id or not qualification):  # check before moving at all
            raise DataError(f"sample {sample_id!r}: a {decision} decision needs a reviewer id and qualification")
        if decision in DECISIONS and self.required and qualification not in self.required:
            raise DataError(f"sample {sample_id!r}: reviewer qualification {qualification!r} is not one of "
                            f"{sorted(self.required)}")
        if e is not None and e.status in ("pending", "needs_fix") and decision in DECISIONS:
            self.transition(sample_id, "in_review", reviewer_id=reviewer_id, qualification=qualification)
        return self.transition(sample_id, decision, reviewer_id=reviewer_id, qualification=qualification, note=note)

    def status_counts(self) -> dict[str, dict[str, int]]:
        """``{task_id: {status: count}}`` plus an ``_all`` row."""
        out: dict[str, Counter] = defaultdict(Counter)
        for e in self.entries.values():
            out[e.task_id][e.status] += 1
            out["_all"][e.status] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def rejection_rates(self) -> dict[str, float]:
        """Per task: share of decided samples that were rejected or sent back (``needs_fix``)."""
        decided: dict[str, list[str]] = defaultdict(list)
        for e in self.entries.values():
            if e.status in DECISIONS:
                decided[e.task_id].append(e.status)
        return {t: round(sum(s != "approved" for s in v) / len(v), 4) for t, v in sorted(decided.items())}

    def apply_to(self, samples: Iterable[Sample]) -> None:
        """Copy current review states onto samples (in place)."""
        for s in samples:
            e = self.entries.get(s.id)
            if e is not None:
                s.review_status, s.reviewer_id, s.review_time = e.status, e.reviewer_id, e.time

    def ids_in(self, *states: str) -> list[str]:
        return [sid for sid, e in self.entries.items() if e.status in states]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
