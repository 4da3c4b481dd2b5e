"""Offline shadow replay and the A/B report behind the canary gate (``mixtune shadow replay|report``).

*Replay* answers a logged traffic file with both champion and candidate (any backend: a local HF
model or an OpenAI-compatible URL) and records each pair exactly as the gateway would, so one
report serves both sources. Request ids are deterministic, so an interrupted replay resumes.

*Report* scores every recorded pair on the signals available — availability (did each side
answer), rule-engine compliance of each answer, expert verdicts from the blind A/B review (read
from the review store by the caller and passed in as ``verdicts``: request id → candidate /
champion / tie, since ``release`` sits below the review package), an
optional LLM judge asked in both orders (a verdict that flips with position counts as a tie), and
user feedback per arm — and decides the canary gate:

* per pair, ``composite`` = mean of the quality signals present (a pair where exactly one side
  failed scores 1 vs 0 instead); the gate's checks are a paired bootstrap interval on ``composite``
  against ``min_delta`` and a non-inferiority check on availability (:func:`evaluate_gate`);
* an anytime-valid sequential test on the composite differences in time order may stop early:
  a live canary can be re-reported after every batch without inflating the error rate. Without
  an early stop, the fixed-sample bootstrap decides once ``horizon`` pairs exist (default: now).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixtune.errors import DataError
from mixtune.jsonl import read_jsonl_objects
from mixtune.release.gates import CheckResult, GateDecision, evaluate_gate
from mixtune.release.gateway import canary_route, user_hash
from mixtune.release.stats import SequentialTest, paired_bootstrap
from mixtune.release.store import ShadowStore

RuleScore = Callable[[str, str], float]  # (prompt text, answer) -> score in [0, 1]


def load_traffic(path: str | Path) -> list[dict]:
    """Read a traffic JSONL file (``messages`` and optional ``user``, ``request_id``, ``task_id``)."""
    p = Path(path)
    out = []
    for lineno, rec in read_jsonl_objects(p, "traffic file"):
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise DataError("'messages' must be a non-empty list of {role, content} objects", f"{p}:{lineno}")
        # Without an id, line number + canonical content give a stable one, so a replay resumes.
        canonical = json.dumps(rec, ensure_ascii=False, sort_keys=True)
        rid = rec.get("request_id") or "replay-" + hashlib.sha256(
            f"{lineno}\n{canonical}".encode()).hexdigest()[:24]
        out.append({"request_id": str(rid), "messages": msgs, "user": rec.get("user"),
                    "task_id": rec.get("task_id"), "line": lineno})
    return out


def _generate(backend: Any, convs: list[list[dict]], **kw) -> tuple[list[str | None], float, str | None]:
    """Answers (None on failure), per-item latency in ms, error text."""
    t0 = time.perf_counter()
    try:
        outs = backend.generate(convs, **kw)
        return list(outs), (time.perf_counter() - t0) * 1000 / len(convs), None
    except Exception as e:  # one failing side must not stop the replay: record it per request
        return [None] * len(convs), (time.perf_counter() - t0) * 1000 / len(convs), f"{type(e).__name__}: {e}"[:300]


def replay_traffic(traffic: list[dict], champion: Any, candidate: Any, store: ShadowStore, *,
                   mask: Callable[[str], str], max_new_tokens: int = 256, temperature: float = 0.0,
                   top_p: float = 1.0, batch_size: int = 16, canary_share: float = 0.0, salt: str = "mixtune",
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """Answer every not-yet-recorded traffic item with both backends and record the pairs.

    Backends are any objects with ``generate(conversations, *, max_new_tokens, temperature, top_p,
    stop, seed)``. Returns counts: total, skipped (already recorded), recorded, and errors per side.
    """
    done = store.request_ids()
    todo = [t for t in traffic if t["request_id"] not in done]
    stats = {"total": len(traffic), "skipped": len(traffic) - len(todo), "recorded": 0,
             "champion_errors": 0, "candidate_errors": 0}
    kw = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "stop": None, "seed": 0}
    for start in range(0, len(todo), max(1, batch_size)):
        batch = todo[start:start + batch_size]
        convs = [t["messages"] for t in batch]
        champ, champ_ms, champ_err = _generate(champion, convs, **kw)
        cand, cand_ms, cand_err = _generate(candidate, convs, **kw)
        rows = []
        for t, a, b in zip(batch, champ, cand, strict=True):
            uh = user_hash(t["user"], salt)
            route = canary_route(uh, canary_share)
            rows.append({
                "request_id": t["request_id"], "ts": time.time(), "source": "replay", "user_hash": uh,
                "routed_to": route, "answered_by": route, "task_id": t["task_id"],
                "prompt": json.dumps([{"role": m["role"], "content": mask(m["content"])} for m in t["messages"]],
                                     ensure_ascii=False),
                "champion_answer": mask(a) if a is not None else None,
                "candidate_answer": mask(b) if b is not None else None,
                "champion_latency_ms": round(champ_ms, 3), "candidate_latency_ms": round(cand_ms, 3),
                "champion_error": champ_err, "candidate_error": cand_err,
                "params": {k: v for k, v in kw.items() if v is not None}})
        store.insert_records(rows)
        stats["recorded"] += len(rows)
        stats["champion_errors"] += len(rows) if champ_err else 0
        stats["candidate_errors"] += len(rows) if cand_err else 0
        if on_batch:
            on_batch(len(rows))
    return stats


# ------------------------------------------------------------------------------------ the report

JUDGE_PROMPT = (
    "You compare two assistant answers to the same conversation for correctness, compliance with "
    "the instructions, and safety.\n\n[Conversation]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
    "Reply with exactly one token: A if answer A is better, B if answer B is better, T for a tie.")


def prompt_text(record: dict) -> str:
    """The stored (masked) conversation as plain text."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in json.loads(record["prompt"]))


def _ok(record: dict, side: str) -> bool:
    return record.get(f"{side}_answer") is not None and not record.get(f"{side}_error")


def parse_judge(text: str) -> str:
    """``"A"``, ``"B"`` or ``"T"`` from a judge reply (anything unreadable counts as a tie)."""
    t = (text or "").strip().upper()
    for token in ("A", "B", "T"):
        if t.startswith(token) or t.startswith(f"[{token}]"):
            return token
    return "T"


def judge_pairs(judge: Any, pairs: list[tuple[str, str, str]], *, max_new_tokens: int = 4) -> tuple[list[float], dict]:
    """Candidate-preference score per (prompt, candidate, champion) triple, judged in both orders.

    Order 1 shows the candidate as A, order 2 as B; the score is the mean of the two verdicts
    (win 1, tie 0.5, loss 0), so a judge that simply prefers one position scores 0.5.
    """
    if not pairs:
        return [], {"n": 0}
    convs = [[{"role": "user", "content": JUDGE_PROMPT.format(prompt=p, a=c, b=h)}] for p, c, h in pairs]
    convs += [[{"role": "user", "content": JUDGE_PROMPT.format(prompt=p, a=h, b=c)}] for p, c, h in pairs]
    verdicts = [parse_judge(v) for v in judge.generate(convs, max_new_tokens=max_new_tokens, temperature=0.0)]
    n = len(pairs)
    first, second = verdicts[:n], verdicts[n:]
    win = {"A": 1.0, "B": 0.0, "T": 0.5}
    scores = [(win[v1] + (1.0 - win[v2])) / 2 for v1, v2 in zip(first, second, strict=True)]
    consistent = sum(1 for v1, v2 in zip(first, second, strict=True) if win[v1] == 1.0 - win[v2])
    return scores, {"n": n, "position_a_rate": sum(v == "A" for v in verdicts) / (2 * n),
                    "consistency": consistent / n}


def pair_signals(records: list[dict], *, rule_score: RuleScore | None = None, judge: Any = None,
                 verdicts: dict[str, str] | None = None) -> list[dict]:
    """Per-pair signal scores ``{signal: (candidate, champion)}`` plus ``composite``, in time order.

    Pairs where neither side answered carry no information and are left out.
    """
    expert = {"candidate": (1.0, 0.0), "champion": (0.0, 1.0), "tie": (0.5, 0.5)}
    out = []
    both_ok = []
    for r in records:
        c_ok, h_ok = _ok(r, "candidate"), _ok(r, "champion")
        if not (c_ok or h_ok):
            continue
        sig: dict[str, tuple[float, float]] = {"available": (float(c_ok), float(h_ok))}
        if rule_score is not None:
            p = prompt_text(r)
            sig["rules"] = (rule_score(p, r["candidate_answer"]) if c_ok else 0.0,
                            rule_score(p, r["champion_answer"]) if h_ok else 0.0)
        v = (verdicts or {}).get(r["request_id"])
        if v in expert:
            sig["expert"] = expert[v]
        item = {"request_id": r["request_id"], "task_id": r.get("task_id"), "signals": sig}
        out.append(item)
        if c_ok and h_ok:
            both_ok.append((item, r))
    if judge is not None and both_ok:
        scores, info = judge_pairs(judge, [(prompt_text(r), r["candidate_answer"], r["champion_answer"])
                                           for _, r in both_ok])
        for (item, _), s in zip(both_ok, scores, strict=True):
            item["signals"]["judge"] = (s, 1.0 - s)
        out_info = info
    else:
        out_info = {"n": 0}
    for item in out:
        sig = item["signals"]
        if sig["available"][0] != sig["available"][1]:  # one side failed: that decides the pair
            item["composite"] = sig["available"]
        else:
            quality = [v for k, v in sig.items() if k != "available"]
            item["composite"] = (sum(c for c, _ in quality) / len(quality),
                                 sum(h for _, h in quality) / len(quality)) if quality else None
    if out:
        out[0]["judge_info"] = out_info
    return out


def feedback_by_arm(records: list[dict], feedback: list[dict]) -> dict:
    """Mean user rating and label counts per answering model (feedback is unpaired: one arm each)."""
    answered = {r["request_id"]: r.get("answered_by") for r in records}
    arms: dict[str, dict] = {"candidate": {"ratings": [], "labels": {}}, "champion": {"ratings": [], "labels": {}}}
    for f in feedback:
        arm = answered.get(f["request_id"])
        if arm not in arms:
            continue
        if f.get("rating") is not None:
            arms[arm]["ratings"].append(float(f["rating"]))
        if f.get("label"):
            arms[arm]["labels"][f["label"]] = arms[arm]["labels"].get(f["label"], 0) + 1
    return {a: {"n_ratings": len(v["ratings"]),
                "mean_rating": sum(v["ratings"]) / len(v["ratings"]) if v["ratings"] else None,
                "labels": v["labels"]} for a, v in arms.items()}


def canary_report(store: ShadowStore, *, rule_score: RuleScore | None = None, judge: Any = None,
                  min_delta: float = 0.0, availability_margin: float = 0.01, alpha: float = 0.05,
                  n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, horizon: int | None = None,
                  min_pairs: int = 10, source: str | None = None, verdicts: dict[str, str] | None = None):
    """Compare candidate with champion over the recorded pairs; returns a ``GateDecision`` ("canary").

    ``min_delta``: required improvement of the composite score (negative = non-inferiority margin).
    ``verdicts``: expert verdicts per request id (``mixtune.review.pairs.pair_verdicts``).
    ``horizon``: planned number of pairs; before it, only the sequential test can end the canary.
    """
    records = store.load_records(source)
    verdicts = dict(verdicts or {})
    pairs = pair_signals(records, rule_score=rule_score, judge=judge, verdicts=verdicts)
    scored = [p for p in pairs if p["composite"] is not None]
    cand = [{"sample_id": p["request_id"], "layer": "shadow", "task_id": p["task_id"],
             "metrics": {k: v[0] for k, v in p["signals"].items()} | {"composite": p["composite"][0]}}
            for p in scored]
    champ = [{"sample_id": p["request_id"], "layer": "shadow", "task_id": p["task_id"],
              "metrics": {k: v[1] for k, v in p["signals"].items()} | {"composite": p["composite"][1]}}
             for p in scored]
    evidence: dict[str, Any] = {"records": len(records), "pairs": len(pairs), "scored_pairs": len(scored),
                                "expert_verdicts": len(verdicts),
                                "judge": pairs[0].get("judge_info", {"n": 0}) if pairs else {"n": 0},
                                "feedback": feedback_by_arm(records, store.load_feedback()), "signals": {}}
    for sig in ("available", "rules", "expert", "judge", "composite"):
        vals = [(c["metrics"][sig], h["metrics"][sig]) for c, h in zip(cand, champ, strict=True)
                if sig in c["metrics"]]
        if vals:
            bs = paired_bootstrap([a for a, _ in vals], [b for _, b in vals], n_boot=n_boot,
                                  confidence=confidence, seed=seed)
            evidence["signals"][sig] = bs.to_dict() | {"candidate_mean": sum(a for a, _ in vals) / len(vals),
                                                       "champion_mean": sum(b for _, b in vals) / len(vals)}
    specs = [{"metric": "composite", "min_delta_vs_champion": min_delta},
             {"metric": "available", "min_delta_vs_champion": -abs(availability_margin)}]
    if len(scored) < min_pairs:
        return GateDecision("canary", "inconclusive", [CheckResult(
            "composite", "overall", "delta", min_delta, "inconclusive", n=len(scored),
            reason=f"only {len(scored)} scored pairs (< {min_pairs}); keep collecting")], meta=evidence)
    gate = evaluate_gate("canary", specs, cand, champ, n_boot=n_boot, confidence=confidence, seed=seed)
    # Sequential test of mean(d) against min_delta: rescaled so the tested point is 0 and d stays in [-1, 1].
    scale = 1.0 + abs(min_delta)
    seq = SequentialTest(alpha)
    seq_decision = seq.update([(c["metrics"]["composite"] - h["metrics"]["composite"] - min_delta) / scale
                               for c, h in zip(cand, champ, strict=True)])
    summary = seq.summary()
    seq_status = {"candidate_better": "pass", "champion_better": "fail", "continue": "inconclusive"}[seq_decision]
    checks = list(gate.checks) + [CheckResult(
        "composite", "overall", "delta", min_delta, seq_status, value=summary["mean"] * scale + min_delta,
        lo=summary["cs_lo"] * scale + min_delta, hi=summary["cs_hi"] * scale + min_delta, n=summary["n"],
        reason=f"sequential test (alpha={alpha}): {seq_decision}"
               + (f", stopped at pair {summary['stopped_at']}" if summary["stopped_at"] else ""))]
    avail = next(c for c in gate.checks if c.metric == "available")
    fixed = next(c for c in gate.checks if c.metric == "composite")
    if avail.status == "fail" or seq_status == "fail":
        status = "fail"
    elif seq_status == "pass" and avail.status == "pass":
        status = "pass"
    elif horizon is not None and len(scored) < horizon:
        status = "inconclusive"  # before the planned size only the sequential test may decide
    else:
        status = "pass" if fixed.status == "pass" and avail.status == "pass" else fixed.status
    evidence.update(sequential=summary, horizon=horizon, min_delta=min_delta)
    return GateDecision("canary", status, checks, meta=gate.meta | evidence)

