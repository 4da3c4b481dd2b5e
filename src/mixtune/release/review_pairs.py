"""Blind expert review of recorded pairs: stratified sampling, export, verdict import.

Pairs are sampled stratified by task, route and agreement (whether the two answers are nearly the
same), so rare strata — a small task, the canary arm, the disagreements that matter — are not
drowned by the bulk. Each exported item shows the two answers as "A" and "B" in a seeded random
order; which model is "A" stays in the database (``shadow_reviews``), not in the file, so reviewers
judge blind. Formats: mixtune JSONL, Label Studio tasks, Argilla records, CSV. Import reads the
same formats back with the reviewers' choice (A / B / tie) and maps it to candidate/champion.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import random
from pathlib import Path

from mixtune.errors import DataError
from mixtune.release.store import ShadowStore

FORMATS = ("jsonl", "labelstudio", "argilla", "csv")
_CHOICE = {"a": "A", "b": "B", "tie": "tie", "t": "tie", "same": "tie", "equal": "tie"}


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


def export_review(store: ShadowStore, records: list[dict], path: str | Path, fmt: str, seed: int = 0) -> int:
    """Write ``records`` as blind A/B review items in ``fmt``; remembers the A/B mapping in ``store``."""
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r} (allowed: {', '.join(FORMATS)})", "--format")
    rng = random.Random(seed)
    items, mapping = [], {}
    for r in records:
        a_is = "candidate" if rng.random() < 0.5 else "champion"
        b_is = "champion" if a_is == "candidate" else "candidate"
        mapping[r["request_id"]] = a_is
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in json.loads(r["prompt"]))
        items.append({"request_id": r["request_id"], "task_id": r.get("task_id") or "", "prompt": prompt,
                      "answer_a": r.get(f"{a_is}_answer") or "", "answer_b": r.get(f"{b_is}_answer") or ""})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(dict(i, verdict=None), ensure_ascii=False) + "\n" for i in items),
                     encoding="utf-8")
    elif fmt == "labelstudio":  # tasks; a <Choices name="preference"> with A / B / tie in the labeling config
        p.write_text(json.dumps([{"data": i, "meta": {"request_id": i["request_id"]}} for i in items],
                                ensure_ascii=False, indent=1), encoding="utf-8")
    elif fmt == "argilla":  # records with fields, metadata and a "preference" question
        p.write_text(json.dumps([{"id": i["request_id"], "fields": {k: i[k] for k in ("prompt", "answer_a", "answer_b")},
                                  "metadata": {"task_id": i["task_id"]}, "responses": {}} for i in items],
                                ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        with p.open("w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["request_id", "task_id", "prompt", "answer_a", "answer_b",
                                               "verdict", "reviewer", "comment"])
            w.writeheader()
            w.writerows({k: csv_safe(v) for k, v in i.items()} for i in items)
    store.save_assignments(mapping)
    return len(items)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """Prefix ``'`` to a cell a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR).

    Prompts and answers are user/model text: ``=HYPERLINK(...)`` in an answer must not execute in the
    reviewer's Excel. The apostrophe is what spreadsheets themselves use to mark a literal.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _norm_choice(value, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        value = value[0] if value else None
        if value is None:
            return None
    v = _CHOICE.get(str(value).strip().lower())
    if v is None:
        raise DataError(f"verdict {value!r} is not A, B or tie", where)
    return v


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 with or without BOM (Excel writes one), else GB18030 (Excel on Chinese Windows)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return raw.decode("gb18030")
        except UnicodeDecodeError:
            raise DataError("review file is neither UTF-8 nor GBK/GB18030 text", str(path)) from None


def _read_choices(path: Path, fmt: str) -> list[dict]:
    """``[{request_id, choice (A/B/tie), reviewer, comment}]`` from a reviewed export."""
    out = []
    text = _read_text(path)
    if fmt == "csv":
        with io.StringIO(text, newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh), 2):
                c = _norm_choice(row.get("verdict"), f"{path}:{i}")
                if c:
                    out.append({"request_id": row.get("request_id"), "choice": c, "reviewer": row.get("reviewer"),
                                "comment": row.get("comment")})
        return out
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        for i, row in enumerate(rows, 1):
            c = _norm_choice(row.get("verdict"), f"{path}:{i}")
            if c:
                out.append({"request_id": row.get("request_id"), "choice": c, "reviewer": row.get("reviewer"),
                            "comment": row.get("comment")})
        return out
    data = json.loads(text)
    for i, task in enumerate(data):
        where = f"{path}[{i}]"
        if fmt == "labelstudio":
            rid = (task.get("data") or {}).get("request_id")
            for ann in task.get("annotations") or []:
                for res in ann.get("result") or []:
                    c = _norm_choice((res.get("value") or {}).get("choices"), where)
                    if c:
                        out.append({"request_id": rid, "choice": c, "reviewer": str(ann.get("completed_by", "")),
                                    "comment": None})
        else:  # argilla: v2 {"responses": {"preference": [{"value", "user_id"}]}} or v1 list of responses
            rid = task.get("id") or (task.get("metadata") or {}).get("request_id")
            resp = task.get("responses") or {}
            if isinstance(resp, dict):
                entries = [(r.get("value"), r.get("user_id")) for r in resp.get("preference", [])]
            else:
                entries = [(((r.get("values") or {}).get("preference") or {}).get("value"), r.get("user_id"))
                           for r in resp if r.get("status", "submitted") == "submitted"]
            for value, user in entries:
                c = _norm_choice(value, where)
                if c:
                    out.append({"request_id": rid, "choice": c, "reviewer": user, "comment": None})
    return out


def import_verdicts(store: ShadowStore, path: str | Path, fmt: str) -> dict:
    """Read reviewers' A/B/tie choices and store them as candidate/champion/tie verdicts.

    Several reviewers of one item are combined by majority (a split vote is a tie).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("review file not found", str(p))
    if fmt not in FORMATS:
        raise DataError(f"unknown review format {fmt!r} (allowed: {', '.join(FORMATS)})", "--format")
    try:
        choices = _read_choices(p, fmt)
    except (json.JSONDecodeError, AttributeError, TypeError) as e:
        raise DataError(f"not a {fmt} review export: {e}", str(p)) from None
    mapping = {k: v["a_is"] for k, v in store.load_reviews().items()}
    votes: dict[str, list[dict]] = {}
    for c in choices:
        if c["request_id"] not in mapping:
            raise DataError(f"request id {c['request_id']!r} was not exported for review from this database", str(p))
        votes.setdefault(c["request_id"], []).append(c)
    verdicts = []
    for rid, vs in votes.items():
        a_is = mapping[rid]
        b_is = "champion" if a_is == "candidate" else "candidate"
        score = sum({"A": 1, "B": -1, "tie": 0}[v["choice"]] for v in vs)
        verdict = a_is if score > 0 else b_is if score < 0 else "tie"
        verdicts.append({"request_id": rid, "verdict": verdict,
                         "reviewer": ",".join(sorted({str(v["reviewer"]) for v in vs if v.get("reviewer")})) or None,
                         "comment": "; ".join(v["comment"] for v in vs if v.get("comment")) or None})
    store.set_verdicts(verdicts)
    return {"items": len(verdicts), "votes": len(choices),
            "candidate": sum(v["verdict"] == "candidate" for v in verdicts),
            "champion": sum(v["verdict"] == "champion" for v in verdicts),
            "tie": sum(v["verdict"] == "tie" for v in verdicts)}
