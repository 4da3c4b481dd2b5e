"""Training samples in the review store: enqueue, decisions for the data build, the old log.

The data build (``mixtune.data.build``) decides what trains from the store's sample decisions:

- :func:`enqueue_samples` puts built samples in the data queue (their recorded rule results
  become the highlighted findings);
- :func:`sample_decisions` reads back every decided sample as a
  :class:`~mixtune.data.schema.ReviewDecision` with both reviewers of the dual validation and the
  adjudicator — only ``approve`` may train;
- :func:`decisions_digest` fingerprints exactly that decision state, so the run's data step
  rebuilds when a sample is decided and not when an output or pair verdict lands, or when the
  first of two reviewers has spoken (neither changes what trains).

Before the store, data decisions lived in ``data/review_log.jsonl`` (an event log replayed into
one state per sample). :func:`import_legacy_log` moves such a log into the store once: every
final decision becomes one verdict with role ``adjudication`` — the old queue let one qualified
reviewer decide for good, which is what an adjudicator's verdict means here — and the log is
renamed ``review_log.jsonl.imported`` so it is never imported twice.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mixtune.data.io import read_samples
from mixtune.data.schema import ReviewDecision, Sample
from mixtune.errors import DataError
from mixtune.review.queue import derive_state
from mixtune.review.store import ReviewError, ReviewStore

LEGACY_LOG = "review_log.jsonl"
_LEGACY_VERDICT = {"approved": "approve", "rejected": "reject", "needs_fix": "needs_fix"}


def _text(s: Sample, role: str) -> str:
    return "\n---\n".join(m.content for m in s.messages if m.role == role)


def sample_findings(s: Sample, answer: str) -> list[dict]:
    """The sample's recorded rule results as findings; spans outside ``answer`` become span-less."""
    try:
        rows = json.loads(s.rule_results or "[]")
    except ValueError:
        rows = []
    out = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        span = r.get("span")
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


def sample_decisions(store: ReviewStore, required: int = 2) -> dict[str, ReviewDecision]:
    """``{sample_id: ReviewDecision}`` for every decided (or adjudicated) sample."""
    by_item = defaultdict(list)
    for v in store.verdicts_of(kinds=("sample",)):
        by_item[v.item_id].append(v)
    out = {}
    for iid, vs in by_item.items():
        st = derive_state(vs, required)
        if st.state in ("decided", "adjudicated"):
            out[iid] = ReviewDecision(decision=st.decision, reviewers=tuple(st.reviewers),
                                      adjudicator=st.adjudicator, time=vs[-1].time)
    return out


def decisions_digest(decisions: dict[str, ReviewDecision]) -> str:
    """Short hash of the sample-decision state (``""`` when nothing is decided)."""
    if not decisions:
        return ""
    h = hashlib.sha256()
    for sid in sorted(decisions):
        d = decisions[sid]
        h.update(json.dumps([sid, d.decision, list(d.reviewers), d.adjudicator], ensure_ascii=False).encode())
    return h.hexdigest()[:12]


# --- the old data review log ------------------------------------------------------------------
@dataclass
class LegacyImport:
    """What :func:`import_legacy_log` did."""

    items: int = 0  # samples newly put in the store
    decisions: int = 0  # final decisions recorded as verdicts
    already: int = 0  # decisions the store already held (an earlier import)
    skipped: list[str] = field(default_factory=list)  # "file:line: why" of lines that could not be read
    moved_to: str = ""


def _replay(log: Path) -> tuple[dict[str, dict], list[str]]:
    """Final state per sample of an old review log; unreadable lines (a torn tail included) are listed."""
    try:
        lines = log.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read the old review log: {e.strerror or e}", where=str(log)) from None
    last: dict[str, dict] = {}
    skipped = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
            last[str(ev["sample_id"])] = {"task_id": str(ev.get("task_id") or ""), "to": str(ev["to"]),
                                          "reviewer": str(ev.get("reviewer_id") or ""),
                                          "qualification": str(ev.get("qualification") or ""),
                                          "note": str(ev.get("note") or ""), "time": str(ev.get("time") or "")}
        except (ValueError, KeyError, TypeError):
            skipped.append(f"{log}:{i}: not a review event (torn or corrupt line)")
    return last, skipped


def _dataset_samples(folder: Path) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    for name in ("review_queue.parquet", "samples.parquet"):
        if (folder / name).is_file():
            try:
                out.update({s.id: s for s in read_samples(folder / name)})
            except DataError:
                pass  # an unreadable dataset file: the items get their task only, the decisions still count
    return out


def import_legacy_log(store: ReviewStore, log: str | Path) -> LegacyImport:
    """Move an old ``review_log.jsonl`` into ``store`` (see the module docstring); the log's folder
    (a dataset directory) supplies the samples' text where its parquet files still hold them."""
    log = Path(log)
    if not log.is_file():
        raise DataError("old review log not found", where=str(log))
    states, skipped = _replay(log)
    known = _dataset_samples(log.parent)
    res = LegacyImport(skipped=skipped)
    for sid, st in states.items():
        s = known.get(sid)
        if s is not None:
            res.items += enqueue_samples(store, [s])
        else:  # the sample left the dataset files: keep the decision, with what the log knows
            res.items += store.enqueue(sid, "sample", st["task_id"] or "unknown", data_version="review_log",
                                       meta={"imported_from": str(log)})
        verdict = _LEGACY_VERDICT.get(st["to"])
        if verdict is None:  # pending / in_review: queued, nothing decided yet
            continue
        note = " ".join(x for x in (st["note"], f"[imported from {LEGACY_LOG}; qualification "
                                    f"{st['qualification'] or '-'}; decided {st['time'] or '-'}]") if x)
        try:
            _, created = store.add_verdict(sid, st["reviewer"] or "review_log", verdict, role="adjudication",
                                           reason="" if verdict == "approve" else "legacy_review", note=note)
        except ReviewError as e:  # the store already holds another verdict of this reviewer: it stands
            res.skipped.append(f"{log}: sample {sid}: {e.message}")
            continue
        res.decisions += created
        res.already += not created
    moved = log.with_name(log.name + ".imported")
    log.replace(moved)  # imported once: the store is the truth from now on
    res.moved_to = str(moved)
    return res


def migrate_message(res: LegacyImport, log: str | Path, store: str) -> str:
    """One line telling the user what :func:`import_legacy_log` did."""
    msg = (f"imported the old review log {log} into the review store {store}: {res.decisions} decision(s), "
           f"{res.items} new item(s); the log is now {res.moved_to}")
    if res.skipped:
        msg += f"; {len(res.skipped)} unreadable line(s) skipped, first: {res.skipped[0]}"
    return msg
