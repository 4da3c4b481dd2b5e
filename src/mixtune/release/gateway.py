"""The shadow/canary gateway (``mixtune gateway``): an OpenAI-compatible front for champion and candidate.

For every ``POST /v1/chat/completions``:

1. the API key is checked (401 in OpenAI's error shape otherwise);
2. the user (``user`` field or ``X-User-Id`` header) is hashed with a salt; the hash picks the
   route *stickily*: users whose hash bucket falls below ``canary_share`` are answered by the
   candidate, everyone else (and anonymous traffic, which cannot be kept sticky) by the champion;
3. the answer goes back at once with an ``X-Request-Id`` header (also the response ``id``);
4. the *other* model's answer is obtained off the user's path: a mirror job goes into a bounded
   queue served by a few worker tasks, each call under its own timeout. A full queue drops the
   mirror (recorded as such), never blocks the user; a crashing, hanging or 500-ing candidate only
   produces an error in the log. A canary request whose candidate fails or exceeds
   ``canary_timeout`` is answered by the champion, which was asked in parallel as a hedge;
5. one row per request id (masked prompt, both answers, latencies, errors) is written to the
   database by a single writer task in batches, in a thread, with PII masked by ``mask``.

Champion and candidate may be any OpenAI-compatible upstream (``mixtune serve``, vLLM, ...). Each has
its own HTTP client, so a candidate hogging connections cannot starve the champion.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # module level: FastAPI resolves postponed annotations here

from mixtune.release.openai_compat import (
    bearer_ok,
    content_text,
    error_response,
    json_body,
    unauthorized,
    validate_chat_body,
)
from mixtune.release.store import ShadowStore
from mixtune.release.upstream import Upstream, UpstreamResult

log = logging.getLogger("mixtune.gateway")


def user_hash(user: str | None, salt: str) -> str | None:
    """Salted SHA-256 of the user id (hex, 16 chars); the raw id is never stored."""
    if not user:
        return None
    return hashlib.sha256(f"{salt}:{user}".encode()).hexdigest()[:16]


def canary_route(uhash: str | None, canary_share: float) -> str:
    """``"candidate"`` when the user's hash bucket (uniform in [0, 1)) is below ``canary_share``."""
    if not uhash or canary_share <= 0:
        return "champion"
    return "candidate" if int(uhash[:8], 16) / 0x1_0000_0000 < canary_share else "champion"


def default_masker() -> Callable[[str], str]:
    """The rule engine's PII masker (:func:`mixtune.rules.mask_pii`)."""
    try:
        from mixtune.rules import mask_pii
    except ImportError:  # the package may not re-export it
        from mixtune.rules.pii import mask_pii
    return mask_pii


@dataclass
class _Job:
    record: dict
    body: dict
    other: str  # which model's answer is still missing
    pending: asyncio.Task | None = None  # the hedge already running (canary requests)
    created: float = field(default_factory=time.perf_counter)


def _fill(record: dict, who: str, res: UpstreamResult) -> None:
    record[f"{who}_answer"] = res.answer
    record[f"{who}_latency_ms"] = round(res.latency_ms, 3)
    record[f"{who}_error"] = res.error


class Gateway:
    """State and background tasks of one gateway app (see module docstring)."""

    def __init__(self, champion: Upstream, candidate: Upstream, store: ShadowStore, *, api_key: str,
                 canary_share: float, canary_timeout: float, mirror_timeout: float, queue_size: int,
                 mirror_workers: int, salt: str, mask: Callable[[str], str], model_name: str,
                 drain_timeout: float):
        self.champion, self.candidate, self.store = champion, candidate, store
        self.api_key, self.canary_share, self.salt = api_key, canary_share, salt
        self.canary_timeout, self.mirror_timeout, self.drain_timeout = canary_timeout, mirror_timeout, drain_timeout
        self.mask, self.model_name = mask, model_name
        self.queue_size, self.n_workers = queue_size, mirror_workers
        self.stats = {"requests": 0, "routed_candidate": 0, "canary_fallbacks": 0, "mirrors_done": 0,
                      "mirror_errors": 0, "mirrors_dropped": 0, "records_written": 0, "records_lost": 0}
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.champion.open()
        self.candidate.open()
        self.mirror_q: asyncio.Queue[_Job] = asyncio.Queue(maxsize=self.queue_size)
        # Records are small; a generous bound only guards memory if the database is down.
        self.write_q: asyncio.Queue[dict] = asyncio.Queue(maxsize=max(10_000, 4 * self.queue_size))
        self._tasks = [asyncio.create_task(self._mirror_worker()) for _ in range(self.n_workers)]
        self._writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        """Let queued mirrors finish (bounded by ``drain_timeout``), then flush every record."""
        try:
            await asyncio.wait_for(self.mirror_q.join(), self.drain_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            log.warning("shutdown: %d mirror jobs unfinished, recording them as such", self.mirror_q.qsize())
        for t in self._tasks:  # cancelled jobs still record their pair (see _complete)
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self.mirror_q.empty():
            job = self.mirror_q.get_nowait()
            if job.pending is not None:
                job.pending.cancel()
            job.record[f"{job.other}_error"] = "gateway shut down before the mirror ran"
            self._enqueue_record(job.record)
        try:
            await asyncio.wait_for(self.write_q.join(), self.drain_timeout + 10)
        except (asyncio.TimeoutError, TimeoutError):
            log.error("shutdown: %d records could not be written", self.write_q.qsize())
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        await self.champion.aclose()
        await self.candidate.aclose()

    # -- background work -------------------------------------------------------------------
    async def _mirror_worker(self) -> None:
        while True:
            job = await self.mirror_q.get()
            try:
                await self._complete(job)
            finally:
                self.mirror_q.task_done()

    async def _complete(self, job: _Job) -> None:
        up = self.champion if job.other == "champion" else self.candidate
        try:
            if job.pending is not None:
                res = await asyncio.wait_for(job.pending, self.mirror_timeout)
            else:
                res = await up.call(job.body, timeout=self.mirror_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            res = UpstreamResult(error=f"timeout after {self.mirror_timeout:g}s",
                                 latency_ms=(time.perf_counter() - job.created) * 1000)
        except asyncio.CancelledError:  # shutdown: keep the half we have
            job.record[f"{job.other}_error"] = "cancelled at gateway shutdown"
            self._enqueue_record(job.record)
            raise
        _fill(job.record, job.other, res)
        self.stats["mirrors_done"] += 1
        if res.error:
            self.stats["mirror_errors"] += 1
        self._enqueue_record(job.record)

    def _enqueue_record(self, record: dict) -> None:
        try:
            self.write_q.put_nowait(record)
        except asyncio.QueueFull:
            self.stats["records_lost"] += 1
            log.error("record %s lost: write queue full (database too slow or down)", record["request_id"])

    def _masked(self, record: dict) -> dict:
        out = dict(record)
        out["prompt"] = json.dumps([{"role": m.get("role"), "content": self.mask(content_text(m.get("content")))}
                                    for m in record["prompt"]], ensure_ascii=False)
        for k in ("champion_answer", "candidate_answer", "champion_error", "candidate_error"):
            if out.get(k):
                out[k] = self.mask(out[k])
        return out

    async def _write_loop(self) -> None:
        while True:
            batch = [await self.write_q.get()]
            while len(batch) < 256 and not self.write_q.empty():
                batch.append(self.write_q.get_nowait())
            try:
                # masking and the SQL transaction run in a thread: the event loop keeps serving users
                await asyncio.to_thread(lambda b=batch: self.store.insert_records([self._masked(r) for r in b]))
                self.stats["records_written"] += len(batch)
            except Exception as e:
                self.stats["records_lost"] += len(batch)
                log.error("writing %d records failed: %s", len(batch), type(e).__name__)
            finally:
                for _ in batch:
                    self.write_q.task_done()

    # -- the user's path -------------------------------------------------------------------
    async def handle_chat(self, body: dict, headers: Any) -> tuple[int, dict, str]:
        """Answer one chat request; returns (status, JSON body, request id)."""
        self.stats["requests"] += 1
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        uhash = user_hash(body.get("user") or headers.get("x-user-id"), self.salt)
        route = canary_route(uhash, self.canary_share)
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        record = {"request_id": request_id, "ts": time.time(), "source": "gateway", "user_hash": uhash,
                  "routed_to": route, "task_id": headers.get("x-task-id") or meta.get("task_id"),
                  "prompt": body["messages"], "params": {k: body.get(k) for k in (
                      "temperature", "top_p", "max_tokens", "stop", "seed") if body.get(k) is not None}}
        if route == "champion":
            res, answered_by = await self.champion.call(body), "champion"
            _fill(record, "champion", res)
            job = _Job(record, body, other="candidate")
        else:
            self.stats["routed_candidate"] += 1
            hedge = asyncio.create_task(self.champion.call(body))
            res = await self.candidate.call(body, timeout=self.canary_timeout)
            _fill(record, "candidate", res)
            if res.ok:
                answered_by, job = "candidate", _Job(record, body, other="champion", pending=hedge)
            else:
                self.stats["canary_fallbacks"] += 1
                res, answered_by = await hedge, "champion"
                _fill(record, "champion", res)
                job = None
        record["answered_by"] = answered_by if res.ok else None
        if job is None:
            self._enqueue_record(record)
        else:
            try:
                self.mirror_q.put_nowait(job)
            except asyncio.QueueFull:  # overloaded: lose the comparison, never the user's answer
                self.stats["mirrors_dropped"] += 1
                if job.pending is not None:
                    job.pending.cancel()
                record[f"{job.other}_error"] = "mirror dropped: queue full"
                self._enqueue_record(record)
        log.info("%s route=%s answered_by=%s status=%s %.1fms", request_id, route, answered_by, res.status,
                 res.latency_ms)
        if res.ok:
            out = dict(res.body, id=request_id, model=body.get("model") or self.model_name)
            return 200, out, request_id
        if 400 <= res.status < 500 and res.status != 401 and isinstance(res.body, dict):
            return res.status, res.body, request_id  # the request's own fault: pass through
        return 502, {"error": {"message": f"upstream {answered_by} failed: {self.mask(res.error or '')}",
                               "type": "upstream_error", "param": None, "code": "upstream_error"}}, request_id


def build_gateway_app(champion_url: str, candidate_url: str, *, api_key: str, db_url: str,
                      canary_share: float = 0.0, champion_api_key: str | None = None,
                      candidate_api_key: str | None = None, champion_model: str | None = None,
                      candidate_model: str | None = None, champion_timeout: float = 120.0,
                      canary_timeout: float = 30.0, mirror_timeout: float = 60.0, queue_size: int = 1000,
                      mirror_workers: int = 8, salt: str = "mixtune", mask: Callable[[str], str] | None = None,
                      model_name: str = "mixtune-gateway", drain_timeout: float = 10.0,
                      transport: Any = None):
    """Create the gateway FastAPI app (``app.state.gateway`` holds the :class:`Gateway`).

    ``champion_model``/``candidate_model``: model names to send upstream (None: ask the upstream's
    ``/v1/models`` once). ``mask`` defaults to :func:`mixtune.rules.mask_pii`.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    if not api_key:
        from mixtune.errors import ConfigError

        raise ConfigError("the gateway requires an API key", where="--api-key")
    if not 0.0 <= canary_share <= 1.0 or math.isnan(canary_share):
        from mixtune.errors import ConfigError

        raise ConfigError(f"must be in [0, 1], got {canary_share}", where="--canary-share")
    store = ShadowStore(db_url)
    gw = Gateway(Upstream("champion", champion_url, api_key=champion_api_key, model=champion_model,
                          timeout=champion_timeout, transport=transport),
                 Upstream("candidate", candidate_url, api_key=candidate_api_key, model=candidate_model,
                          timeout=mirror_timeout, transport=transport),
                 store, api_key=api_key, canary_share=canary_share, canary_timeout=canary_timeout,
                 mirror_timeout=mirror_timeout, queue_size=queue_size, mirror_workers=mirror_workers,
                 salt=salt, mask=mask or default_masker(), model_name=model_name, drain_timeout=drain_timeout)

    @asynccontextmanager
    async def lifespan(app):
        await gw.start()
        yield
        await gw.stop()

    app = FastAPI(title="mixtune gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "mixtune"}]}

    @app.get("/v1/gateway/stats")
    async def stats(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        return dict(gw.stats, mirror_queue=gw.mirror_q.qsize(), write_queue=gw.write_q.qsize())

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        body, bad = await json_body(request)
        if bad is not None:
            return bad
        problem = validate_chat_body(body)
        if problem:
            return error_response(400, problem, param="messages")
        if body.get("stream"):
            return error_response(400, "streaming is not supported by the gateway; send stream=false")
        status, out, rid = await gw.handle_chat(body, request.headers)
        return JSONResponse(out, status_code=status, headers={"X-Request-Id": rid})

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        body, bad = await json_body(request)
        if bad is not None:
            return bad
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str) or not body["request_id"]:
            return error_response(400, "'request_id' (the X-Request-Id of the answer) is required",
                                  param="request_id")
        rating, label, comment = body.get("rating"), body.get("label"), body.get("comment")
        if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))
                                   or not math.isfinite(rating)):
            return error_response(400, "'rating' must be a number", param="rating")
        if label is not None and (not isinstance(label, str) or not label or len(label) > 64):
            return error_response(400, "'label' must be a non-empty string of at most 64 characters",
                                  param="label")
        if rating is None and label is None:
            return error_response(400, "give a 'rating' or a 'label'", param="rating")
        if comment is not None and not isinstance(comment, str):
            return error_response(400, "'comment' must be a string", param="comment")
        await asyncio.to_thread(store.add_feedback, body["request_id"], rating, label,
                                gw.mask(comment) if comment else None)
        return {"object": "feedback", "request_id": body["request_id"], "status": "stored"}

    return app

