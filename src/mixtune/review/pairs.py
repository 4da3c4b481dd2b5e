"""Blind A/B review of shadow answer pairs, in the one review store.

``mixtune shadow`` records champion and candidate answers per request. Pairs reach the experts
as store items of kind ``pair``:

- :func:`stratified_sample` picks pairs stratified by task, route and agreement (whether the two
  answers are nearly the same), so rare strata — a small task, the canary arm, the disagreements
  that matter — are not drowned by the bulk;
- :func:`enqueue_pairs` shows the two answers as "A" (the item's ``output``) and "B" (its
  ``reference``) in a seeded order per request; which model is "A" stays in the item's private
  meta (``a_is``), never in the web page, the JSON API or an export, so reviewers judge blind;
- :func:`pair_verdicts` maps the verdicts back: ``a`` → the model shown as A, ``b`` → the other,
  ``tie`` → tie. Several reviewers of one pair are combined by majority (a split vote is a tie);
  an adjudicator's verdict, when there is one, decides.

Pairs of one shadow log share a tag (``pair-<tag>-<request id>``), so the store can hold pairs
of several canaries without mixing their request ids.
"""

from __future__ import annotations

import difflib
import json
import random
from collections import defaultdict
from collections.abc import Iterable

from mixtune.review.store import ReviewError, ReviewStore

ARMS = ("candidate", "champion")


def agreement(a: str | None, b: str | None, threshold: float = 0.9) -> str:
    """``agree`` when both answers exist and are ≥ ``threshold`` similar (difflib ratio)."""
    if a is None or b is None:
        return "one_failed"
    return "agree" if difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= threshold else "differ"


def stratified_sample(records: list[dict], n: int, seed: int = 0) -> list[dict]:
    """Up to ``n`` records, allocated to (task, route, agreement) strata proportionally with at least
    one per stratum when ``n`` allows (largest remainder), drawn at random within each stratum."""
    strata: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r.get("task_id") or "", r.get("routed_to") or "", agreement(r.get("candidate_answer"),
                                                                            r.get("champion_answer")))
        strata.setdefault(key, []).append(r)
    if n >= len(records):
        return list(records)
    keys = sorted(strata)
    alloc = {k: 0 for k in keys}
    if n >= len(keys):  # one per stratum first: every stratum is seen
        for k in keys:
            alloc[k] = 1
    left = n - sum(alloc.values())
    total = len(records)
    quota = {k: left * len(strata[k]) / total for k in keys}
    for k in keys:
        alloc[k] += min(int(quota[k]), len(strata[k]) - alloc[k])
    rest = n - sum(alloc.values())
    for k in sorted(keys, key=lambda k: (-(quota[k] - int(quota[k])), k)) * 2:
        if rest <= 0:
            break
        if alloc[k] < len(strata[k]):
            alloc[k] += 1
            rest -= 1
    rng = random.Random(seed)
    picked = []
    for k in keys:
        picked.extend(rng.sample(strata[k], alloc[k]))
    return sorted(picked, key=lambda r: (r["ts"], r["request_id"]))


def pair_id(tag: str, request_id: str) -> str:
    """The store item id of one shadow pair."""
    return f"pair-{tag}-{request_id}"


def _other(arm: str) -> str:
    return "champion" if arm == "candidate" else "candidate"


def _prompt(raw: str | None) -> str:
    try:
        msgs = json.loads(raw or "[]")
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)
    except (ValueError, TypeError, KeyError):
        return str(raw or "")  # a prompt that is not a message list is shown as it was logged


def enqueue_pairs(store: ReviewStore, records: Iterable[dict], *, tag: str, seed: int = 0,
                  families: dict[str, str] | None = None, a_is: dict[str, str] | None = None) -> list[str]:
    """Put shadow records in the pair queue, answers in a blind A/B order; returns the new item ids.

    The order is drawn per request from ``seed``, so re-enqueueing is stable. ``a_is`` forces the
    order for given request ids (importing an older review whose files showed a known order).
    """
    new = []
    for r in records:
        rid = str(r["request_id"])
        first = (a_is or {}).get(rid) or ("candidate" if random.Random(f"{seed}|{rid}").random() < 0.5
                                          else "champion")
        task = r.get("task_id") or "shadow"
        iid = pair_id(tag, rid)
        if store.enqueue(iid, "pair", task, family=(families or {}).get(task, task), prompt=_prompt(r.get("prompt")),
                         output=r.get(f"{first}_answer") or "", reference=r.get(f"{_other(first)}_answer") or "",
                         data_version=f"shadow-{tag}",
                         meta={"request_id": rid, "shadow": tag, "a_is": first}):
            new.append(iid)
    return new


def enqueued_requests(store: ReviewStore, tag: str) -> set[str]:
    """Request ids of this shadow log already in the pair queue (sampling skips them)."""
    return {it.meta.get("request_id", "") for it in store.items_of(("pair",)) if it.meta.get("shadow") == tag}


def pair_verdicts(store: ReviewStore, tag: str, *, required: int = 1) -> dict[str, dict]:
    """``{request_id: {verdict: candidate|champion|tie, reviewers, votes}}`` for the judged pairs of ``tag``.

    A pair counts once it has ``required`` review verdicts, or an adjudicator's.
    """
    items = {it.id: it for it in store.items_of(("pair",)) if it.meta.get("shadow") == tag}
    by_item = defaultdict(list)
    for v in store.verdicts_of(kinds=("pair",)):
        if v.item_id in items:
            by_item[v.item_id].append(v)
    out = {}
    for iid, vs in by_item.items():
        it = items[iid]
        first = it.meta["a_is"]
        adj = [v for v in vs if v.role == "adjudication"]
        votes = [v for v in vs if v.role == "review"]
        if adj:
            choice = adj[0].verdict
        elif len(votes) >= required:
            score = sum({"a": 1, "b": -1}.get(v.verdict, 0) for v in votes)
            choice = "a" if score > 0 else "b" if score < 0 else "tie"
        else:
            continue
        out[it.meta["request_id"]] = {"verdict": first if choice == "a" else _other(first) if choice == "b" else "tie",
                                      "reviewers": [v.reviewer for v in vs], "votes": len(vs)}
    return out


def summary(verdicts: dict[str, dict]) -> dict[str, int]:
    """Counts of :func:`pair_verdicts` per outcome."""
    return {"items": len(verdicts), "votes": sum(v["votes"] for v in verdicts.values()),
            **{k: sum(v["verdict"] == k for v in verdicts.values()) for k in (*ARMS, "tie")}}


def import_legacy_reviews(store: ReviewStore, rows: list[dict], records: dict[str, dict], *, tag: str,
                          families: dict[str, str] | None = None) -> int:
    """Move verdicts of an old shadow log's ``shadow_reviews`` table into the store; returns how many.

    Those rows kept the A/B order and the majority verdict (candidate / champion / tie) with the
    reviewers comma-joined; each reviewer gets that verdict back as an A/B choice. Idempotent: a
    second run finds every verdict already stored.
    """
    n = 0
    for row in rows:
        rid, verdict = str(row["request_id"]), row.get("verdict")
        if not verdict or rid not in records or row.get("a_is") not in ARMS:
            continue
        enqueue_pairs(store, [records[rid]], tag=tag, families=families, a_is={rid: row["a_is"]})
        first = store.item(pair_id(tag, rid)).meta["a_is"]  # the order of an item already queued wins
        choice = "a" if verdict == first else "tie" if verdict == "tie" else "b"
        for who in [w for w in str(row.get("reviewer") or "").split(",") if w.strip()] or ["shadow_reviews"]:
            try:
                _, created = store.add_verdict(pair_id(tag, rid), who.strip(), choice,
                                               note=str(row.get("comment") or ""))
            except ReviewError:  # this reviewer already judged the pair in the store: that verdict stands
                continue
            n += created
    return n
