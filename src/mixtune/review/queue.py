"""Queue logic over the review store: dual validation, adjudication, agreement, live rejection rates.

An item's state is derived from its verdict rows, never stored, so the append-only log is the
single truth:

- ``pending`` (no verdict) → ``in_review`` (fewer than ``required`` review verdicts)
- ``decided``: ``required`` qualified reviewers gave the same verdict — that verdict decides
- ``disputed``: reviewers disagree → the item waits in the adjudicators' queue
- ``adjudicated``: an adjudicator's verdict decides a disputed item

Queues: ``data`` (samples), ``output`` (model outputs), ``pair`` (A/B pairs) and
``adjudication`` (disputed items of every kind).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select

from mixtune.review.reviewers import ForbiddenError, Reviewer, Reviewers
from mixtune.review.store import Item, ReviewError, ReviewStore, Verdict

QUEUES: dict[str, tuple[str, ...]] = {
    "data": ("sample",), "output": ("output",), "pair": ("pair",), "adjudication": ("sample", "output", "pair"),
}
REJECTING = ("reject", "needs_fix")


@dataclass
class ItemState:
    """Derived review state of one item."""

    state: str = "pending"
    decision: str = ""
    reviewers: list[str] = field(default_factory=list)
    adjudicator: str = ""


def derive_state(verdicts: list[Verdict], required: int = 2) -> ItemState:
    """State of one item from its verdict rows (in insertion order)."""
    st = ItemState(reviewers=[v.reviewer for v in verdicts if v.role == "review"])
    adj = [v for v in verdicts if v.role == "adjudication"]
    votes = {v.verdict for v in verdicts if v.role == "review"}
    if adj:
        st.state, st.decision, st.adjudicator = "adjudicated", adj[0].verdict, adj[0].reviewer
    elif len(votes) > 1:
        st.state = "disputed"
    elif len(st.reviewers) >= required:
        st.state, st.decision = "decided", next(iter(votes))
    elif st.reviewers:
        st.state = "in_review"
    return st


def states(store: ReviewStore, kinds: tuple[str, ...] = ("sample", "output", "pair"),
           required: int = 2) -> dict[str, ItemState]:
    """``{item_id: ItemState}`` for every item of ``kinds``."""
    by_item: dict[str, list[Verdict]] = defaultdict(list)
    for v in store.verdicts_of(kinds=kinds):
        by_item[v.item_id].append(v)
    ids = [r.id for r in _index(store, kinds)]
    return {i: derive_state(by_item.get(i, []), required) for i in ids}


@dataclass(frozen=True)
class _Row:
    seq: int
    id: str
    kind: str
    task_id: str
    family: str
    model_version: str


def _index(store: ReviewStore, kinds) -> list[_Row]:
    t = store.items.c
    with store.reader.connect() as c:
        rows = c.execute(select(t.seq, t.id, t.kind, t.task_id, t.family, t.model_version)
                         .where(t.kind.in_(list(kinds))).order_by(t.seq)).all()
    return [_Row(*r) for r in rows]


def next_item(store: ReviewStore, reviewer: Reviewer, queue: str, *, required: int = 2, after: int = 0,
              ) -> tuple[Item | None, int]:
    """The next item ``reviewer`` should judge in ``queue`` and how many remain for them.

    Items half-reviewed come first (finishing a pair decides it sooner), then the oldest; items
    the reviewer already judged, of families they are not qualified for, or of retired model
    versions are skipped. ``after`` skips items enqueued up to that sequence number (the "next"
    key moves past an item without judging it).
    """
    if queue not in QUEUES:
        raise ReviewError(f"unknown queue {queue!r}; allowed: {list(QUEUES)}", status=404)
    if queue == "adjudication" and not reviewer.adjudicator:
        raise ForbiddenError(f"reviewer {reviewer.id!r} is not an adjudicator")
    kinds = QUEUES[queue]
    st = states(store, kinds, required)
    active = store.active_model_versions()
    want = ("disputed",) if queue == "adjudication" else ("in_review", "pending")
    cands = [r for r in _index(store, kinds)
             if st[r.id].state in want and reviewer.id not in st[r.id].reviewers and reviewer.qualified(r.family)
             and (r.kind != "output" or r.model_version in active)]
    rank = {s: i for i, s in enumerate(want)}
    cands.sort(key=lambda r: (rank[st[r.id].state], r.seq))
    pos = next((i for i, r in enumerate(cands) if r.seq == after), None)
    if pos is not None:  # "next" on an item: the one after it in queue order, wrapping around
        cands_after = cands[pos + 1:] + cands[:pos + 1]
    else:
        cands_after = [r for r in cands if r.seq > after] or cands
    return (store.item(cands_after[0].id) if cands_after else None), len(cands)


def submit(store: ReviewStore, registry: Reviewers, reviewer: Reviewer, item_id: str, verdict: str, *,
           reason: str = "", note: str = "", idem_key: str = "", reasons: dict[str, list[str]] | None = None,
           required: int = 2) -> tuple[Verdict, bool, ItemState]:
    """Record ``reviewer``'s verdict after the qualification and reason checks.

    A verdict on a disputed item by an adjudicator is recorded as the adjudication; anyone else
    on a disputed item is refused (the dispute is the adjudicator's). Returns the stored row,
    whether it was new, and the item's state afterwards.
    """
    it = store.item(item_id)
    registry.require(reviewer, it.family)
    before = derive_state(store.verdicts_of(item_id=item_id), required)
    role = "review"
    if before.state == "disputed" and reviewer.id not in before.reviewers:
        registry.require(reviewer, it.family, adjudication=True)
        role = "adjudication"
    elif before.state in ("decided", "adjudicated") and reviewer.id not in before.reviewers \
            and reviewer.id != before.adjudicator:
        raise ReviewError(f"item {item_id!r} is already {before.state} ({before.decision}); "
                          f"no further review is needed", status=409)
    if reviewer.id == before.adjudicator:
        role = "adjudication"
    if verdict in REJECTING:
        allowed = (reasons or {}).get(it.task_id)
        if not reason:
            raise ReviewError(f"a {verdict} verdict needs a reason code" +
                              (f" (one of {allowed})" if allowed else ""), status=422)
        if allowed and reason not in allowed:
            raise ReviewError(f"reason {reason!r} is not an anomaly pattern of task {it.task_id!r}; "
                              f"allowed: {allowed}", status=422)
    row, created = store.add_verdict(item_id, reviewer.id, verdict, reviewer_kind=reviewer.kind, reason=reason,
                                     role=role, note=note, idem_key=idem_key)
    return row, created, derive_state(store.verdicts_of(item_id=item_id), required)


def progress(store: ReviewStore, required: int = 2) -> dict[str, dict[str, int]]:
    """Per queue: item counts by state plus ``total``."""
    out: dict[str, dict[str, int]] = {}
    st = states(store, required=required)
    kind_of = {r.id: r.kind for r in _index(store, QUEUES["adjudication"])}
    for q, kinds in QUEUES.items():
        if q == "adjudication":
            c = Counter("waiting" if s.state == "disputed" else "done" for i, s in st.items()
                        if s.state in ("disputed", "adjudicated"))
        else:
            c = Counter(s.state for i, s in st.items() if kind_of[i] in kinds)
        c["total"] = sum(c.values())
        out[q] = dict(c)
    return out


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of label pairs; None without pairs, 1.0 when both always give one same label."""
    n = len(pairs)
    if n == 0:
        return None
    po = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    pe = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if pe >= 1.0:
        return 1.0 if po == 1.0 else 0.0
    return (po - pe) / (1 - pe)


def agreement(store: ReviewStore, kinds: tuple[str, ...] = ("sample", "output", "pair"),
              ) -> dict[str, dict[str, float | int | None]]:
    """Per reviewer: kappa and raw agreement against the other reviewer on shared items, and ``n``."""
    by_item: dict[str, list[Verdict]] = defaultdict(list)
    for v in store.verdicts_of(kinds=kinds):
        if v.role == "review":
            by_item[v.item_id].append(v)
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for vs in by_item.values():
        for v in vs:
            other = next((o for o in vs if o.reviewer != v.reviewer), None)
            if other is not None:
                pairs[v.reviewer].append((v.verdict, other.verdict))
    return {r: {"kappa": cohen_kappa(p), "agreement": sum(a == b for a, b in p) / len(p), "n": len(p)}
            for r, p in sorted(pairs.items())}


def rejection_rates(store: ReviewStore, kinds: tuple[str, ...] = ("output",), *, window: int = 50,
                    prior: float = 0.1, strength: float = 5.0, tasks: list[str] | None = None,
                    model_versions: list[str] | None = None) -> dict[str, tuple[float, int]]:
    """Per task ``(rate, n)`` over the last ``window`` verdicts, shrunk toward ``prior``.

    ``rate = (rejects + strength * prior) / (n + strength)``: a task with two verdicts does not
    swing the heat engine to 0 or 1. ``reject`` and ``needs_fix`` both count as rejections.
    Tasks named in ``tasks`` without verdicts get ``(prior, 0)``.
    """
    if window < 1 or strength < 0 or not 0.0 <= prior <= 1.0:
        raise ReviewError("rejection_rates needs window >= 1, strength >= 0 and 0 <= prior <= 1", status=422)
    recent: dict[str, list[str]] = defaultdict(list)
    for v in reversed(store.verdicts_of(kinds=kinds)):
        if model_versions is not None and v.version not in model_versions:
            continue
        if len(recent[v.task_id]) < window:
            recent[v.task_id].append(v.verdict)
    out = {t: (prior, 0) for t in tasks or []}
    for t, vs in recent.items():
        n = len(vs)
        rejects = sum(v in REJECTING for v in vs)
        out[t] = ((rejects + strength * prior) / (n + strength) if n + strength > 0 else prior, n)
    return dict(sorted(out.items()))


def status_summary(store: ReviewStore, required: int = 2) -> dict:
    """Everything ``mixtune review status --store`` and ``GET /api/status`` show."""
    return {"queues": progress(store, required), "agreement": agreement(store),
            "rejection": {t: {"rate": round(r, 4), "n": n} for t, (r, n) in rejection_rates(store).items()},
            "state": store.state_token()}
