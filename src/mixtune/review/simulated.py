"""A simulated reviewer for runs without a human (demo, CI), and the stage-2 sampling hook.

The simulated reviewer is an HTTP client of the same API a human's browser uses (``GET
/api/next``, ``POST /api/verdict``), so the demo exercises the real path: authentication,
qualification, the store, the live rates. Its token belongs to a reviewer of kind ``simulated``
in the reviewers file, so the server labels each of its verdicts ``reviewer_kind=simulated`` —
the label does not depend on the client telling the truth.

Its judgement is built on the rule engine and the KPIs: error-severity rule findings (computed
at enqueue, or by a :class:`~mixtune.rules.RuleEngine` it is given), numbers and citations of
the reference missing from the output (:mod:`mixtune.data.kpis` normalisation). ``noise`` flips
a verdict at random, ``bias`` pushes toward rejecting (>0) or approving (<0), ``latency`` waits
before each verdict like a person reading.

:class:`LiveRejection` is the stage-2 hook: one object per run, one :meth:`~LiveRejection.cycle`
call per evaluation cycle — enqueue ``k`` outputs per task of the current model, let the
simulated reviewer (when enabled) answer over the real HTTP API of an app on a loopback port,
return ``{task: (rate, n)}`` (``rate`` for the heat engine, both for ``mixing_log.jsonl``). With
``simulate=False`` it only enqueues and reads what humans decided so far: the loop never waits.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from mixtune.data.kpis import NUM, citations_in, norm
from mixtune.errors import MixtuneError
from mixtune.release.server import ServerThread
from mixtune.review.reviewers import Reviewer, Reviewers, hash_token, new_token
from mixtune.review.store import ReviewStore

if TYPE_CHECKING:
    from mixtune.rules import RuleEngine


@dataclass
class Judgement:
    verdict: str
    reason: str
    note: str


def judge(item: dict, reasons: list[str], rng: random.Random, *, noise: float = 0.0, bias: float = 0.0,
          engine: RuleEngine | None = None) -> Judgement:
    """Approve or reject one item (the JSON of ``GET /api/next``) from rule findings and KPIs."""
    output, reference = item.get("output", ""), item.get("reference", "")
    defects = [f"rule {f['rule_id']}" for f in item.get("findings", []) if f.get("severity") == "error"]
    if engine is not None:
        defects += [f"rule {f.rule_id}" for f in engine.check(output, input_text=item.get("prompt", ""))
                    if f.severity == "error"]
    if reference:
        out_norm = norm(output)
        missing = [n for n in re.findall(NUM, norm(reference)) if n not in out_norm]
        if missing:
            defects.append(f"numbers {missing[:3]} of the reference missing")
        cites = set(citations_in(reference)) - set(citations_in(output))
        if cites:
            defects.append(f"citations {sorted(cites)[:2]} missing")
    verdict = "reject" if defects else "approve"
    flip = rng.random()
    # bias tilts one way only: >0 turns approvals into rejections, <0 the reverse
    if verdict == "approve" and flip < max(bias, 0.0) or verdict == "reject" and flip < max(-bias, 0.0):
        verdict = "reject" if verdict == "approve" else "approve"
    elif rng.random() < noise:
        verdict = "reject" if verdict == "approve" else "approve"
    reason = (reasons or ["other"])[0] if verdict == "reject" else ""
    note = "simulated: " + ("; ".join(dict.fromkeys(defects)) if defects else "no defect found")
    return Judgement(verdict, reason, note)


def run_simulated_reviewer(url: str, token: str, *, queue: str = "output", max_items: int | None = None,
                           noise: float = 0.0, bias: float = 0.0, latency: float = 0.0, seed: int = 0,
                           engine: RuleEngine | None = None, timeout: float = 30.0,
                           transport: httpx.BaseTransport | None = None) -> dict[str, int]:
    """Review ``queue`` through the HTTP API until it is empty (or ``max_items``); returns counts.

    Items the server refuses (409 already decided, 410 retired model version) are skipped and
    counted, not fatal: the queue must keep moving. A 401/403 is fatal — the setup is wrong.
    """
    rng = random.Random(seed)
    counts = {"approve": 0, "reject": 0, "refused": 0}
    seen: set[str] = set()
    after = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                      transport=transport) as client:
        while max_items is None or len(seen) < max_items:
            r = client.get("/api/next", params={"queue": queue, "after": after})
            if r.status_code in (401, 403):
                raise MixtuneError(f"simulated reviewer refused: {r.json().get('error')}", where=url)
            r.raise_for_status()
            body = r.json()
            item = body["item"]
            if item is None or item["id"] in seen:
                break
            seen.add(item["id"])
            after = item["seq"]
            if latency > 0:
                time.sleep(rng.uniform(0.5, 1.5) * latency)
            j = judge(item, body["reasons"], rng, noise=noise, bias=bias, engine=engine)
            key = hashlib.sha256(f"sim:{seed}:{item['id']}".encode()).hexdigest()[:24]
            v = client.post("/api/verdict", json={"item_id": item["id"], "verdict": j.verdict, "reason": j.reason,
                                                  "note": j.note, "idempotency_key": key})
            if v.status_code in (409, 410):
                counts["refused"] += 1
                continue
            if v.status_code in (401, 403):
                raise MixtuneError(f"simulated reviewer refused: {v.json().get('error')}", where=url)
            v.raise_for_status()
            counts[j.verdict] += 1
    return counts


def sample_outputs_for_review(store: ReviewStore, outputs_by_task: dict[str, list[dict]], k: int,
                              model_version: str, *, engine: RuleEngine | None = None,
                              rule_ids: dict[str, list[str]] | None = None, families: dict[str, str] | None = None,
                              seed: int = 0, retire_previous: bool = True) -> list[str]:
    """Enqueue ``k`` outputs per task of the current model; returns the new item ids.

    ``outputs_by_task`` maps task id → ``[{prompt, output, reference?, sample_id?}]`` (the
    evaluation cycle's generations). ``model_version`` is registered as active; with
    ``retire_previous`` older versions are retired, so their unreviewed outputs leave the queue
    and late verdicts on them are refused. Rule findings (with spans) come from ``engine`` under
    the task's ``rule_ids``.
    """
    if k < 0:
        raise MixtuneError(f"k must be >= 0, got {k}", where="sample_outputs_for_review")
    if retire_previous:
        for v in store.active_model_versions() - {model_version}:
            store.retire_model_version(v)
    store.register_model_version(model_version)
    rng = random.Random(f"{seed}:{model_version}")
    added = []
    for task in sorted(outputs_by_task):
        outs = list(outputs_by_task[task])
        for o in rng.sample(outs, min(k, len(outs))):
            prompt, output = str(o.get("prompt", "")), str(o.get("output", ""))
            findings = []
            if engine is not None:
                ids = (rule_ids or {}).get(task) or None
                for f in engine.check(output, rule_ids=ids, input_text=prompt):
                    s, e = f.span if f.span is not None else (0, 0)
                    findings.append({"start": s, "end": e, "rule_id": f.rule_id, "severity": f.severity,
                                     "reason": f.reason})
            digest = hashlib.sha256(f"{task}\0{prompt}\0{output}".encode()).hexdigest()[:16]
            item_id = f"out-{model_version}-{task}-{digest}"
            if store.enqueue(item_id, "output", task, prompt=prompt, output=output,
                             reference=str(o.get("reference", "")), family=(families or {}).get(task, task),
                             model_version=model_version, findings=findings,
                             meta={"sample_id": o.get("sample_id", "")}):
                added.append(item_id)
    return added


SIM_ID = "simulated"


class LiveRejection:
    """Per-run review loop: enqueue → (simulated) review over HTTP → windowed, shrunk rates."""

    def __init__(self, store: str | Path | ReviewStore, *, reviewers: Reviewers | None = None,
                 reasons: dict[str, list[str]] | None = None, simulate: bool = True, k: int = 4,
                 window: int = 50, prior: float = 0.1, strength: float = 5.0, noise: float = 0.05,
                 bias: float = 0.0, latency: float = 0.0, seed: int = 0, engine: RuleEngine | None = None,
                 rule_ids: dict[str, list[str]] | None = None, families: dict[str, str] | None = None):
        self.store = store if isinstance(store, ReviewStore) else ReviewStore(store)
        self.k, self.window, self.prior, self.strength = k, window, prior, strength
        self.noise, self.bias, self.latency, self.seed = noise, bias, latency, seed
        self.engine, self.rule_ids, self.families = engine, rule_ids, families
        self.simulate = simulate
        # the app and its server only load when a run asks for live review (fastapi, uvicorn)
        from mixtune.review.app import create_app  # why: fastapi loads only when a run asks for live review

        people = list(reviewers.by_id.values()) if reviewers is not None else []
        # The simulated reviewer's token lives only in this process: nothing outside can speak as it.
        self._token = new_token()
        if simulate:
            people = [p for p in people if p.id != SIM_ID] + [
                Reviewer(SIM_ID, hash_token(self._token), ("*",), kind="simulated")]
        self.server = ServerThread(create_app(self.store, Reviewers(people), reasons=reasons)).start() \
            if simulate else None

    def cycle(self, cycle: int, model_version: str, outputs_by_task: dict[str, list[dict]],
              ) -> dict[str, tuple[float, int]]:
        """Enqueue this cycle's outputs, review them (simulated), return ``{task: (rate, n)}``."""
        sample_outputs_for_review(self.store, outputs_by_task, self.k, model_version, engine=self.engine,
                                  rule_ids=self.rule_ids, families=self.families, seed=self.seed + cycle)
        if self.server is not None:
            run_simulated_reviewer(self.server.url, self._token, noise=self.noise, bias=self.bias,
                                   latency=self.latency, seed=self.seed * 100_003 + cycle, engine=None)
        return self.store.rejection_rates(("output",), window=self.window, prior=self.prior,
                                          strength=self.strength, tasks=sorted(outputs_by_task))

    def close(self) -> None:
        """Stop the app (if running) and release the store's connections."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.store.close()

    def __enter__(self) -> LiveRejection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
