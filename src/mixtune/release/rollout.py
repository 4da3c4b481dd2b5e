"""Staged rollout: real ``mixtune serve`` processes behind ``mixtune gateway``, a ramped canary share.

:func:`run_rollout` starts one ``mixtune serve`` per model and, for each step of ``steps``
(percent of users, e.g. 5 → 25 → 50), a ``mixtune gateway`` in front of them with that sticky
canary share — users are routed by a salted hash, and a user below 5% stays below 25%, so a
canary user never flips back. Every process runs on loopback, on an ephemeral port, with a
random API key handed over in its environment (never on the command line). Through the gateway
go held-out ``traffic``-split prompts and adaptive simulated-user sessions
(:mod:`mixtune.eval.simulated_user`) that post thumbs up/down to ``/v1/feedback``; the gateway
mirrors each request to the other model and logs both answers by request id to the shadow store.
The gateway is stopped (SIGTERM: it drains mirrors and flushes its log) at the end of each step,
then the step is analysed (:mod:`mixtune.release.rollout_analysis`). A failing step, or a
candidate that exits or stops answering health checks, ends the rollout as ``fail`` with the
reason — the rollback: nothing is routed to the candidate any more and the caller leaves the
registry on the champion. Each process is stopped with SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mixtune.data.schema import Sample
from mixtune.errors import MixtuneError
from mixtune.eval.simulated_user import SimulatedUser
from mixtune.release.gates import CheckResult, GateDecision
from mixtune.release.rollout_analysis import RolloutAnalyzer, StepThresholds
from mixtune.release.store import ShadowStore

USERS = 200  # distinct traffic users: enough that a 5% share routes someone to the canary


def free_port() -> int:
    """An ephemeral loopback port (the OS picks it; the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """One ``python -m mixtune ...`` child on loopback, its output in ``log``."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]):
        self.name, self.args, self.log_path, self.port = name, args, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mixtune", *args, "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        self.exit: dict | None = None

    def wait_ready(self, timeout: float) -> None:
        """Block until ``/health`` answers; a child that exits or stays silent is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MixtuneError(f"{self.name} exited with code {self.proc.returncode} while starting:\n"
                                   f"{self.tail()}", where=str(self.log_path))
            if self.healthy(1.0):
                return
            time.sleep(0.2)
        raise MixtuneError(f"{self.name} did not answer /health within {timeout:g}s:\n{self.tail()}",
                           where=str(self.log_path))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float) -> dict:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns how it ended."""
        if self.exit is not None:
            return self.exit
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
        self._log.close()
        self.exit = {"code": self.proc.returncode, "sigkill": killed}
        return self.exit

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class RolloutResult:
    """Outcome: ``status`` (pass/fail/inconclusive), ``reason``, the step analyses, and evidence."""

    status: str
    reason: str
    steps: list[dict] = field(default_factory=list)
    rollback: bool = False
    answered_ids: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)


class _Client:
    """Sends chat requests to the gateway for traffic and simulated users; remembers request ids."""

    def __init__(self, url: str, api_key: str, max_new_tokens: int, concurrency: int):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120)
        self.max_new_tokens, self.concurrency = max_new_tokens, concurrency
        self.sent: list[str] = []
        self.answered: list[str] = []
        self.failed = 0

    def chat(self, messages: list[dict], user: str, task_id: str | None) -> dict:
        body = {"model": "mixtune-gateway", "messages": messages, "max_tokens": self.max_new_tokens,
                "temperature": 0, "user": user}
        try:
            r = self.http.post("/v1/chat/completions", json=body, headers={"X-Task-Id": task_id or ""})
        except httpx.HTTPError as e:
            self.failed += 1
            return {"text": "", "error": f"gateway unreachable: {type(e).__name__}"}
        rid = r.headers.get("x-request-id")
        if rid:
            self.sent.append(rid)
        if r.status_code != 200:
            self.failed += 1
            return {"text": "", "request_id": rid, "error": f"HTTP {r.status_code}"}
        self.answered.append(rid)
        return {"text": r.json()["choices"][0]["message"]["content"] or "", "request_id": rid}

    def many(self, items: list[tuple[list[dict], str, str | None]]) -> list[dict]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda it: self.chat(*it), items))

    def feedback(self, request_id: str, label: str) -> None:
        rating = {"thumbs_up": 1.0, "thumbs_down": 0.0}.get(label)
        try:
            self.http.post("/v1/feedback", json={"request_id": request_id, "label": label, "rating": rating}
                           if rating is not None else {"request_id": request_id, "label": label})
        except httpx.HTTPError:
            pass  # feedback is best effort, as from real users

    def close(self) -> None:
        self.http.close()


def run_rollout(champion_path: str, candidate_path: str, *, traffic: list[Sample], session_samples: list[Sample],
                ontology: Any, engine: Any, kpi_fn: Callable, out_dir: Path, db_path: Path,
                steps: list[float], requests_per_step: int, sessions_per_step: int, session_turns: int,
                feedback_noise: float, max_new_tokens: int, concurrency: int, thresholds: StepThresholds,
                startup_timeout: float = 180.0, shutdown_timeout: float = 15.0, canary_timeout: float = 20.0,
                dtype: str = "fp32", device: str = "auto", seed: int = 0,
                on_progress: Callable[[str], None] = lambda m: None,
                fault: Callable[[int, dict[str, ManagedProcess]], None] | None = None) -> RolloutResult:
    """Run the staged rollout (see the module docstring); ``fault(step, processes)`` is a test hook
    called halfway through each step's traffic."""
    if not traffic:
        raise MixtuneError("no traffic prompts for the rollout (the data build's 'traffic' split is empty)")
    out_dir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{db_path}"
    up_key, gw_key = secrets.token_hex(16), secrets.token_hex(16)
    by_id = {}
    quality = _quality_fn(engine, ontology, kpi_fn, lambda rid: by_id.get(rid))
    analyzer = RolloutAnalyzer(quality, thresholds)
    user = SimulatedUser(ontology, engine, kpi_fn=kpi_fn, max_turns=session_turns, noise=feedback_noise, seed=seed)
    procs: dict[str, ManagedProcess] = {}
    result = RolloutResult("inconclusive", "")
    try:
        for name, path in (("champion", champion_path), ("candidate", candidate_path)):
            procs[name] = ManagedProcess(name, ["serve", str(path), "--model-name", name, "--dtype", dtype,
                                                "--device", device],
                                         out_dir / f"{name}.log", {"MIXTUNE_API_KEY": up_key})
        procs["champion"].wait_ready(startup_timeout)  # no champion: an infrastructure error, not a verdict
        try:
            procs["candidate"].wait_ready(startup_timeout)
        except MixtuneError as e:
            result.status, result.rollback = "fail", True
            result.reason = "candidate server failed to start: " + str(e).splitlines()[0]
            return result
        on_progress(f"rollout: champion on {procs['champion'].url}, candidate on {procs['candidate'].url}")
        cursor = 0
        for k, share in enumerate(steps, 1):
            gw = ManagedProcess("gateway", [
                "gateway", "--champion", procs["champion"].url, "--candidate", procs["candidate"].url,
                "--db", db_url, "--canary-share", f"{share / 100:g}", "--champion-model", "champion",
                "--candidate-model", "candidate", "--canary-timeout", f"{canary_timeout:g}",
                "--mirror-timeout", f"{canary_timeout:g}"], out_dir / f"gateway-step{k}.log",
                {"MIXTUNE_API_KEY": gw_key, "MIXTUNE_CHAMPION_KEY": up_key, "MIXTUNE_CANDIDATE_KEY": up_key,
                 "MIXTUNE_USER_SALT": f"rollout-{seed}"})
            procs["gateway"] = gw
            client = _Client(gw.url, gw_key, max_new_tokens, concurrency)
            try:
                gw.wait_ready(startup_timeout)
                batch = [traffic[(cursor + i) % len(traffic)] for i in range(requests_per_step)]
                _send_traffic(client, batch, cursor, by_id, halfway=lambda k=k: fault and fault(k, procs))
                cursor += requests_per_step
                _run_sessions(user, client, session_samples, k, sessions_per_step)
            finally:
                client.close()
                # the gateway bounds its own drain (mirrors, then the log flush): give it that long
                gw_exit = gw.stop(shutdown_timeout + canary_timeout + 15)
            records, feedback = _recorded(db_url, set(client.sent))
            missing = sorted(set(client.answered) - {r["request_id"] for r in records})
            step = analyzer.analyse(k, share, records, feedback)
            step["gateway_exit"] = gw_exit
            step["client"] = {"sent": len(client.sent), "answered": len(client.answered), "failed": client.failed}
            step["records_missing"] = len(missing)
            result.answered_ids += client.answered
            down = _candidate_down(procs["candidate"])
            problem = (f"{down} during step {k}" if down else
                       f"{len(missing)} answered requests missing from the shadow store" if missing else None)
            step["checks"]["processes"] = {"status": "fail" if problem else "pass",
                                           "reason": problem or "candidate up, every answered request recorded"}
            if problem:
                step.update(status="fail", reason=problem)
            result.steps.append(step)
            on_progress(f"rollout step {k} ({share:g}%): {step['status']} — {step['reason']}")
            if step["status"] == "fail":
                result.status, result.reason, result.rollback = "fail", f"step {k} ({share:g}%): {step['reason']}", True
                break
        else:
            last = result.steps[-1]
            result.status = last["status"]
            result.reason = ("every step passed" if last["status"] == "pass"
                             else f"step {last['step']} ({last['share_pct']:g}%): {last['reason']}")
    finally:
        result.evidence["processes"] = {name: p.stop(shutdown_timeout) for name, p in reversed(list(procs.items()))}
    result.evidence.update(traffic_prompts=len(traffic), answered=len(result.answered_ids))
    return result


def gate_decisions(result: RolloutResult, meta: dict) -> tuple[list[Any], Any]:
    """``gates.jsonl`` entries: one ``rollout_step`` decision per step, then the final ``canary`` one."""
    steps = []
    for st in result.steps:
        checks = []
        for name, c in st["checks"].items():
            q = name == "quality"
            checks.append(CheckResult(name, f"step {st['step']} ({st['share_pct']:g}%)", "delta" if q else "max",
                                      float(c.get("min_delta" if q else "limit", 0.0) or 0.0),
                                      c["status"], value=c.get("delta") if q else _value(name, c),
                                      lo=c.get("lo") if q else None, hi=c.get("hi") if q else None,
                                      n=int(c.get("pairs_total", 0)) if q else 0, reason=c["reason"]))
        evidence = {k: v for k, v in st.items() if k != "checks"} | {"analysis": st["checks"]}
        steps.append(GateDecision("rollout_step", st["status"], checks, meta={**meta, **evidence}))
    final_checks = [c for d in steps[-1:] for c in d.checks]
    if not steps:  # the candidate never came up
        final_checks = [CheckResult("processes", "rollout", "max", 0.0, result.status, reason=result.reason)]
    final = GateDecision("canary", result.status, final_checks, meta={
        **meta, "source": "staged rollout", "reason": result.reason, "rollback": result.rollback,
        "steps": [{"step": s["step"], "share_pct": s["share_pct"], "status": s["status"], "reason": s["reason"]}
                  for s in result.steps], **result.evidence})
    return steps, final


def _value(name: str, c: dict) -> float | None:
    if name == "availability":
        return c["error_rate"]["candidate"]
    if name == "latency_p95":
        return c.get("candidate_p95")
    if name == "feedback":
        return c.get("increase")
    return None


def _send_traffic(client: _Client, batch: list[Sample], cursor: int, by_id: dict, halfway: Callable) -> None:
    """Send held-out prompts, each from a stable pseudo-random user; ``halfway`` runs mid-batch."""
    items = [([{"role": "user", "content": _first_user(s)}], f"user-{(cursor + i) * 7919 % USERS:03d}", s.task_id)
             for i, s in enumerate(batch)]
    half = len(items) // 2
    replies = client.many(items[:half])
    halfway()
    replies += client.many(items[half:])
    for s, rep in zip(batch, replies, strict=True):
        if rep.get("request_id"):
            by_id[rep["request_id"]] = s  # the quality score reads its gold answer


def _recorded(db_url: str, ids: set[str]) -> tuple[list[dict], list[dict]]:
    """This step's records (after the gateway flushed them) and all feedback."""
    store = ShadowStore(db_url)
    try:
        return [r for r in store.load_records() if r["request_id"] in ids], store.load_feedback()
    finally:
        store.close()


def _first_user(s: Sample) -> str:
    return next(m.content for m in s.messages if m.role == "user")


def _candidate_down(p: ManagedProcess) -> str | None:
    if not p.alive():
        return f"candidate server exited (code {p.proc.returncode})"
    if not p.healthy(5.0):
        return "candidate server stopped answering /health (hung)"
    return None


def _run_sessions(user: SimulatedUser, client: _Client, samples: list[Sample], step: int, n: int) -> None:
    """``n`` simulated-user sessions for this step, each user sticky for its whole session."""
    if not samples or n <= 0:
        return
    chosen = [samples[(step * n + i) % len(samples)] for i in range(n)]

    def respond(convs, sessions):
        return client.many([(c, s.user, s.sample.task_id) for c, s in zip(convs, sessions, strict=True)])

    def on_turn(sess, turn):
        if turn.request_id:
            client.feedback(turn.request_id, turn.feedback)
            if sess.abandoned:
                client.feedback(turn.request_id, "abandon")

    user.run(chosen, respond, on_turn=on_turn, user_prefix=f"sim-step{step}")


def _quality_fn(engine: Any, ontology: Any, kpi_fn: Callable, sample_of: Callable[[str], Sample | None]):
    """Answer quality in [0, 1]: rule compliance, averaged with the primary KPI when gold is known."""
    def quality(record: dict, side: str) -> float:
        answer = record.get(f"{side}_answer") or ""
        try:
            prompt = "\n".join(m.get("content") or "" for m in json.loads(record["prompt"]) if m.get("role") != "system")
        except (ValueError, TypeError, AttributeError):
            prompt = ""
        task = ontology.tasks.get(record.get("task_id") or "")
        rules = float(engine.compliance(answer, rule_ids=task.rule_ids if task else None, input_text=prompt))
        sample = sample_of(record["request_id"])
        if sample is None or task is None:
            return rules
        return 0.5 * rules + 0.5 * min(1.0, max(0.0, float(kpi_fn(task.primary_metric, answer, sample, engine))))

    return quality
