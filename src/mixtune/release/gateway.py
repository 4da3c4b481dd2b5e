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
   database by :class:`~mixtune.release.shadow_writer.ShadowWriter` in batches, in its own thread,
   with PII masked by ``mask``: first when the user is answered, then again (an upsert) with the
   other model's answer. ``durability`` says when an answered request is safe (``sync``: before
   the answer; ``batch``: within ``window_ms`` after it).

Hostile input: bodies over ``max_body_bytes`` get 413, malformed requests (a number as text part,
an object as ``metadata.task_id``, ``max_tokens: 0``) get 400 before anything is forwarded, and
the store sanitises every value, so one odd request never costs other requests their records.

Champion and candidate may be any OpenAI-compatible upstream (``mixtune serve``, vLLM, ...). Each has
its own HTTP client, so a candidate hogging connections cannot starve the champion.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request  # module level: FastAPI resolves postponed annotations here

from mixtune.errors import ConfigError
from mixtune.release.openai_compat import (
    MAX_BODY_BYTES,
    bearer_ok,
    chat_problem_param,
    error_response,
    json_body,
    protect_openapi,
    unauthorized,
    validate_chat_body,
)
from mixtune.release.shadow_writer import DURABILITY, ShadowWriter
from mixtune.release.store import ShadowStore
from mixtune.release.upstream import Upstream, UpstreamResult
from mixtune.rules import mask_pii

log = logging.getLogger("mixtune.gateway")


def user_hash(user: str | None, salt: str) -> str | None:
    """Salted SHA-256 of the user id (hex, 16 chars); the raw id is never stored."""
    if not user:
        return None
    return hashlib.sha256(f"{salt}:{user}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def canary_route(uhash: str | None, canary_share: float) -> str:
    """``"candidate"`` when the user's hash bucket (uniform in [0, 1)) is below ``canary_share``."""
    if not uhash or canary_share <= 0:
        return "champion"
    return "candidate" if int(uhash[:8], 16) / 0x1_0000_0000 < canary_share else "champion"


def default_masker() -> Callable[[str], str]:
    """The rule engine's PII masker (:func:`mixtune.rules.mask_pii`)."""
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


MAX_COMMENT_BYTES = 4096
_RECENT_IDS = 100_000


class Gateway:
    """State and background tasks of one gateway app (see module docstring)."""

    def __init__(self, champion: Upstream, candidate: Upstream, store: ShadowStore, *, api_key: str,
                 canary_share: float, canary_timeout: float, mirror_timeout: float, queue_size: int,
                 mirror_workers: int, salt: str, mask: Callable[[str], str], model_name: str,
                 drain_timeout: float, durability: str = "batch", window_ms: float = 100.0):
        self.champion, self.candidate, self.store = champion, candidate, store
        self.api_key, self.canary_share, self.salt = api_key, canary_share, salt
        self.canary_timeout, self.mirror_timeout, self.drain_timeout = canary_timeout, mirror_timeout, drain_timeout
        self.mask, self.model_name = mask, model_name
        self.queue_size, self.n_workers = queue_size, mirror_workers
        self.durability, self.window_ms = durability, window_ms
        self.stats = {"requests": 0, "routed_candidate": 0, "canary_fallbacks": 0, "mirrors_done": 0,
                      "mirror_errors": 0, "mirrors_dropped": 0, "records_written": 0, "records_lost": 0,
                      "write_failures": 0, "unrecorded_refusals": 0}
        self.writer = ShadowWriter(store, mask, durability=durability, window_ms=window_ms,
                                   max_pending=max(10_000, 4 * queue_size), stats=self.stats)
        self._recent: dict[str, None] = {}  # request ids answered by this replica (feedback checks)
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.champion.open()
        self.candidate.open()
        self.mirror_q: asyncio.Queue[_Job] = asyncio.Queue(maxsize=self.queue_size)
        self.writer.start(asyncio.get_running_loop())
        self._tasks = [asyncio.create_task(self._mirror_worker()) for _ in range(self.n_workers)]

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
            self.writer.submit(job.record, final=True)
        await asyncio.to_thread(self.writer.close, self.drain_timeout + 10)
        self.store.close()  # SQLite: the last connection checkpoints the WAL into the database file
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
            self.writer.submit(job.record, final=True)
            raise
        _fill(job.record, job.other, res)
        self.stats["mirrors_done"] += 1
        if res.error:
            self.stats["mirror_errors"] += 1
        self.writer.submit(job.record, final=True)

    def known_request(self, request_id: str) -> bool:
        """Answered here recently, or in the shared log (another replica, or before a restart)."""
        return request_id in self._recent or self.store.has_record(request_id)

    # -- the user's path -------------------------------------------------------------------
    async def handle_chat(self, body: dict, headers: Any) -> tuple[int, dict, str]:
        """Answer one chat request; returns (status, JSON body, request id)."""
        self.stats["requests"] += 1
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        uhash = user_hash(body.get("user") or headers.get("x-user-id"), self.salt)
        route = canary_route(uhash, self.canary_share)
        meta = body.get("metadata") or {}
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
        if job is not None:
            try:
                self.mirror_q.put_nowait(job)
            except asyncio.QueueFull:  # overloaded: lose the comparison, never the user's answer
                self.stats["mirrors_dropped"] += 1
                if job.pending is not None:
                    job.pending.cancel()
                record[f"{job.other}_error"] = "mirror dropped: queue full"
                job = None
        # the answered half is recorded now, the pair again when the mirror returns (an upsert)
        committed = self.writer.submit(record, final=job is None, wait=self.writer.sync)
        self._recent[request_id] = None
        if len(self._recent) > _RECENT_IDS:
            self._recent.pop(next(iter(self._recent)))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s route=%s answered_by=%s status=%s %.1fms", request_id, route, answered_by,
                      res.status, res.latency_ms)
        if committed is not None and not await committed:
            self.stats["unrecorded_refusals"] += 1
            return 503, {"error": {"message": "the answer could not be recorded in the shadow log "
                                              "(durability=sync); retry later", "type": "server_error",
                                   "param": None, "code": "shadow_log_unavailable"}}, request_id
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
                      mirror_workers: int = 8, salt: str | None = None, mask: Callable[[str], str] | None = None,
                      model_name: str = "mixtune-gateway", drain_timeout: float = 10.0,
                      durability: str = "batch", window_ms: float = 100.0, max_body_bytes: int = MAX_BODY_BYTES,
                      table_prefix: str = "", transport: Any = None):
    """Create the gateway FastAPI app (``app.state.gateway`` holds the :class:`Gateway`).

    ``champion_model``/``candidate_model``: model names to send upstream (None: ask the upstream's
    ``/v1/models``, again after failures). ``mask`` defaults to :func:`mixtune.rules.mask_pii`.
    ``salt``: the user-hash salt; None uses a random secret created once per database and shared
    by every replica writing to it. ``durability``/``window_ms``: see
    :mod:`mixtune.release.shadow_writer`.
    """
    from fastapi import FastAPI
    from fastapi.responses import Response

    if not api_key:
        raise ConfigError("the gateway requires an API key", where="--api-key")
    if not 0.0 <= canary_share <= 1.0 or math.isnan(canary_share):
        raise ConfigError(f"must be in [0, 1], got {canary_share}", where="--canary-share")
    if durability not in DURABILITY:
        raise ConfigError(f"must be one of {', '.join(DURABILITY)}, got {durability!r}", where="--durability")
    if not window_ms > 0 or math.isinf(window_ms):
        raise ConfigError(f"must be a positive number of milliseconds, got {window_ms}", where="--window-ms")
    if max_body_bytes < 1024:
        raise ConfigError(f"must be at least 1024, got {max_body_bytes}", where="--max-body-bytes")
    if salt is not None and not salt:
        raise ConfigError("an empty salt makes user hashes guessable; leave it unset for a random one",
                          where="--salt")
    # a locked database must not stall the writer thread for long: it retries instead
    store = ShadowStore(db_url, table_prefix=table_prefix, durability=durability, lock_timeout=5.0, wal=True)
    gw = Gateway(Upstream("champion", champion_url, api_key=champion_api_key, model=champion_model,
                          timeout=champion_timeout, transport=transport),
                 Upstream("candidate", candidate_url, api_key=candidate_api_key, model=candidate_model,
                          timeout=mirror_timeout, transport=transport),
                 store, api_key=api_key, canary_share=canary_share, canary_timeout=canary_timeout,
                 mirror_timeout=mirror_timeout, queue_size=queue_size, mirror_workers=mirror_workers,
                 salt=salt or store.secret("user_salt"), mask=mask or default_masker(), model_name=model_name,
                 drain_timeout=drain_timeout, durability=durability, window_ms=window_ms)

    @asynccontextmanager
    async def lifespan(app):
        await gw.start()
        yield
        await gw.stop()

    app = FastAPI(title="mixtune gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw
    protect_openapi(app, api_key)

    def json_response(status: int, body: Any, headers: dict | None = None) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)

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
        return dict(gw.stats, mirror_queue=gw.mirror_q.qsize(), write_queue=gw.writer.pending(),
                    durability=gw.durability, window_ms=gw.window_ms)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        body, bad = await json_body(request, max_body_bytes)
        if bad is not None:
            return bad
        problem = validate_chat_body(body)
        if problem:
            return error_response(400, problem, param=chat_problem_param(problem))
        if body.get("stream"):
            return error_response(400, "streaming is not supported by the gateway; send stream=false")
        task = request.headers.get("x-task-id")
        if task is not None and len(task) > 120:
            return error_response(400, "X-Task-Id must be at most 120 characters")
        status, out, rid = await gw.handle_chat(body, request.headers)
        return json_response(status, out, {"X-Request-Id": rid})

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        body, bad = await json_body(request, max_body_bytes)
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
        if comment and len(comment.encode("utf-8", "surrogatepass")) > MAX_COMMENT_BYTES:
            return error_response(413, f"'comment' exceeds {MAX_COMMENT_BYTES} bytes", param="comment")
        rid = body["request_id"]
        if len(rid) > 80 or not await asyncio.to_thread(gw.known_request, rid):
            return error_response(404, f"no answer with request id {rid[:80]!r} was recorded",
                                  param="request_id", code="request_not_found")
        await asyncio.to_thread(store.add_feedback, rid, rating, label, gw.mask(comment) if comment else None)
        return {"object": "feedback", "request_id": rid, "status": "stored"}

    return app
