"""Training samples in and decisions out: the data side of the review store.

``enqueue_samples`` puts built samples into the data queue (prompt, answer and the rule
results recorded by validation, as highlighted findings); ``sample_decisions`` reads back what
the reviewers decided, with both reviewers (and the adjudicator) for the lineage. Only samples
decided ``approve`` may train; the build reads this after every review round.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from mixtune.data.schema import Sample
from mixtune.review.queue import derive_state
from mixtune.review.store import ReviewStore


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
