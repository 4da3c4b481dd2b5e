"""Analysis of one staged-rollout step: pass, fail or inconclusive on composite metrics.

Input is what the gateway recorded for the step (one row per request: both answers, latencies,
errors, which model answered) plus the simulated users' feedback. Checks, each with evidence:

- ``quality``      — per request a paired quality score of each side (rule compliance of the
  answer, RuleEngine.compliance, averaged with the task's primary KPI when the prompt comes from
  the traffic split and has a gold answer). Across all steps so far: an anytime-valid sequential
  test (:class:`mixtune.release.stats.SequentialTest`, so analysing after every step does not
  inflate the error rate) and a paired bootstrap interval of candidate - champion. Fail when the
  sequential test finds the champion better or the whole interval lies below ``min_delta``; pass
  when the mean reaches ``min_delta``; inconclusive otherwise or with fewer than ``min_pairs``.
- ``availability`` — failed candidate calls (its own answers and mirrors) in this step.
- ``latency_p95``  — user-facing latency: p95 of the requests each arm *answered* (mirrored calls
  queue behind the gateway's mirror workers, so they would penalise whichever arm is mirrored);
  candidate p95 against ``ratio`` × champion p95 + ``slack_ms``, judged from ``MIN_LATENCY_N``
  answers per arm (a 5% step rarely has them: the later steps decide).
- ``feedback``     — thumbs-down rate per answering arm (needs ``min_feedback`` events per arm).
- ``expert``       — a *simulated* expert reviewer (rule-based, not a person) gives verdicts on a
  few answer pairs; it fails the step when it prefers the champion on every pair (at least 3).

The step fails when any check fails, is inconclusive when quality is, and passes otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixtune.release.stats import SequentialTest, paired_bootstrap

MIN_LATENCY_N = 5  # answers per arm before a p95 comparison means anything


@dataclass
class StepThresholds:
    """Flat analysis settings (mirrors ``gates.rollout.analysis``)."""

    min_pairs: int = 6
    min_delta: float = -0.05
    alpha: float = 0.05
    max_error_rate: float = 0.05
    max_latency_p95_ratio: float = 3.0
    latency_slack_ms: float = 250.0
    max_thumbs_down_increase: float = 0.25
    min_feedback: int = 4
    expert_pairs: int = 4
    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class RolloutAnalyzer:
    """Keeps the cumulative state (pairs, sequential test) across the steps of one rollout."""

    quality: Any  # (record, side) -> float in [0, 1]
    th: StepThresholds = field(default_factory=StepThresholds)

    def __post_init__(self):
        self.seq = SequentialTest(self.th.alpha)
        self.pairs: list[tuple[float, float]] = []

    def analyse(self, step: int, share: float, records: list[dict], feedback: list[dict]) -> dict:
        """One step's analysis: ``{"status", "checks": {name: {...}}, "traffic", "latency", ...}``."""
        th = self.th
        checks: dict[str, dict] = {}
        new_pairs = []
        for r in records:
            c_ok, h_ok = _ok(r, "candidate"), _ok(r, "champion")
            if not (c_ok or h_ok):
                continue
            if c_ok != h_ok:  # one side failed: that decides the pair
                new_pairs.append((float(c_ok), float(h_ok)))
            else:
                new_pairs.append((self.quality(r, "candidate"), self.quality(r, "champion")))
        self.pairs += new_pairs
        scale = 1.0 + abs(th.min_delta)
        self.seq.update([(c - h - th.min_delta) / scale for c, h in new_pairs])
        seq = self.seq.summary()
        if len(self.pairs) >= 2:
            bs = paired_bootstrap([c for c, _ in self.pairs], [h for _, h in self.pairs], n_boot=th.n_boot,
                                  confidence=th.confidence, seed=th.seed + step)
            delta, lo, hi = bs.delta, bs.lo, bs.hi
        else:
            delta = lo = hi = None
        if seq["decision"] == "champion_better":
            q_status, why = "fail", f"sequential test: champion better (stopped at pair {seq['stopped_at']})"
        elif hi is not None and hi < th.min_delta:
            q_status, why = "fail", f"whole interval below {th.min_delta:+.3f}"
        elif len(self.pairs) < th.min_pairs:
            q_status, why = "inconclusive", f"only {len(self.pairs)} scored pairs (< {th.min_pairs})"
        elif seq["decision"] == "candidate_better" or delta >= th.min_delta:
            q_status, why = "pass", f"mean delta {delta:+.3f} >= {th.min_delta:+.3f}"
        else:
            q_status, why = "inconclusive", f"mean delta {delta:+.3f} < {th.min_delta:+.3f}, not significant"
        checks["quality"] = {"status": q_status, "reason": why, "delta": delta, "lo": lo, "hi": hi,
                             "min_delta": th.min_delta,
                             "pairs_step": len(new_pairs), "pairs_total": len(self.pairs),
                             "candidate_mean": _mean([c for c, _ in self.pairs]),
                             "champion_mean": _mean([h for _, h in self.pairs]),
                             "sequential": {k: seq[k] for k in ("decision", "n", "cs_lo", "cs_hi", "stopped_at")}}
        checks["availability"] = self._availability(records)
        latency = {side: _percentiles([r[f"{side}_latency_ms"] for r in records if r.get("answered_by") == side
                                       and _ok(r, side) and r.get(f"{side}_latency_ms") is not None])
                   for side in ("champion", "candidate")}
        checks["latency_p95"] = self._latency(latency)
        fb = feedback_rates(records, feedback)
        checks["feedback"] = self._feedback(fb)
        checks["expert"] = self._expert(records, step)
        statuses = [c["status"] for c in checks.values()]
        status = "fail" if "fail" in statuses else "inconclusive" if q_status == "inconclusive" else "pass"
        failed = [f"{k}: {c['reason']}" for k, c in checks.items() if c["status"] == "fail"]
        traffic = {arm: sum(r.get("answered_by") == arm for r in records) for arm in ("champion", "candidate")}
        traffic.update(requests=len(records), unanswered=sum(r.get("answered_by") is None for r in records),
                       canary_fallbacks=sum(r.get("routed_to") == "candidate" and r.get("answered_by") == "champion"
                                            for r in records))
        return {"step": step, "share_pct": share, "status": status, "reason": "; ".join(failed) or why,
                "checks": checks, "traffic": traffic, "latency_ms": latency, "feedback": fb}

    def _availability(self, records: list[dict]) -> dict:
        n = len(records)
        rates = {side: (sum(bool(r.get(f"{side}_error")) or r.get(f"{side}_answer") is None for r in records) / n
                        if n else 0.0) for side in ("candidate", "champion")}
        bad = rates["candidate"] > self.th.max_error_rate and rates["candidate"] > rates["champion"]
        return {"status": "fail" if bad else "pass", "error_rate": rates, "limit": self.th.max_error_rate,
                "reason": f"candidate error rate {rates['candidate']:.0%} > {self.th.max_error_rate:.0%}" if bad
                else f"candidate error rate {rates['candidate']:.0%}"}

    def _latency(self, lat: dict) -> dict:
        c, h = lat["candidate"].get("p95"), lat["champion"].get("p95")
        if min(lat["candidate"]["n"], lat["champion"]["n"]) < MIN_LATENCY_N:
            return {"status": "pass", "reason": f"too few answers to judge ({lat['candidate']['n']} candidate, "
                                                f"{lat['champion']['n']} champion; need {MIN_LATENCY_N} each)"}
        limit = self.th.max_latency_p95_ratio * h + self.th.latency_slack_ms
        return {"status": "fail" if c > limit else "pass", "candidate_p95": c, "champion_p95": h, "limit": limit,
                "reason": f"candidate p95 {c:.0f} ms {'>' if c > limit else '<='} limit {limit:.0f} ms"}

    def _feedback(self, fb: dict) -> dict:
        c, h = fb["candidate"], fb["champion"]
        if min(c["n"], h["n"]) < self.th.min_feedback:
            return {"status": "pass", "reason": f"too little feedback to judge ({c['n']} candidate, {h['n']} champion)"}
        diff = c["thumbs_down_rate"] - h["thumbs_down_rate"]
        bad = diff > self.th.max_thumbs_down_increase
        return {"status": "fail" if bad else "pass", "increase": diff, "limit": self.th.max_thumbs_down_increase,
                "reason": f"thumbs-down rate {diff:+.0%} vs champion"}

    def _expert(self, records: list[dict], step: int) -> dict:
        both = [r for r in records if _ok(r, "candidate") and _ok(r, "champion")]
        rng = random.Random(self.th.seed * 1000 + step)
        sample = rng.sample(both, min(self.th.expert_pairs, len(both)))
        verdicts = []
        for r in sample:
            c, h = self.quality(r, "candidate"), self.quality(r, "champion")
            verdicts.append({"request_id": r["request_id"], "verdict": "candidate" if c > h + 0.1
                             else "champion" if h > c + 0.1 else "tie"})
        wins = {v: sum(x["verdict"] == v for x in verdicts) for v in ("candidate", "champion", "tie")}
        bad = len(verdicts) >= 3 and wins["champion"] == len(verdicts)
        return {"status": "fail" if bad else "pass", "reviewer": "simulated (rule-based), not a person",
                "verdicts": verdicts, "wins": wins,
                "reason": f"expert sample: champion preferred on all {len(verdicts)} pairs" if bad
                else "expert sample: " + ", ".join(f"{k} {v}" for k, v in wins.items())}


def _ok(r: dict, side: str) -> bool:
    return r.get(f"{side}_answer") is not None and not r.get(f"{side}_error")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs, dtype=float)
    return {"n": len(xs), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max())}


def feedback_rates(records: list[dict], feedback: list[dict]) -> dict:
    """Thumbs-down rate, abandonments and count of feedback events per answering arm."""
    arm_of = {r["request_id"]: r.get("answered_by") for r in records}
    out = {arm: {"n": 0, "thumbs_down": 0, "abandon": 0} for arm in ("champion", "candidate")}
    for f in feedback:
        arm = arm_of.get(f["request_id"])
        if arm not in out:
            continue
        if f.get("label") == "abandon":
            out[arm]["abandon"] += 1
            continue
        out[arm]["n"] += 1
        out[arm]["thumbs_down"] += f.get("label") == "thumbs_down"
    for v in out.values():
        v["thumbs_down_rate"] = v["thumbs_down"] / v["n"] if v["n"] else 0.0
    return out
