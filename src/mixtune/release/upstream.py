"""An OpenAI-compatible upstream as the gateway sees it: one keep-alive pool, calls that never raise.

Model discovery: without a configured model name the upstream's ``/v1/models`` is asked for the
served id (vLLM and ``mixtune serve`` reject unknown names). A failed discovery is retried with
exponential backoff (0.5 s doubling to 10 s) instead of being given up for good, and a 404 from an
upstream that came back (possibly serving a new model) triggers an immediate re-discovery and one
retry of the call, so a gateway that once met a down upstream recovers as soon as it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from mixtune.release.http_client import FastClient

log = logging.getLogger("mixtune.gateway")

_BACKOFF_START, _BACKOFF_MAX = 0.5, 10.0
_JSON = {"content-type": "application/json"}


@dataclass
class UpstreamResult:
    """One upstream call: HTTP status (0 when none), parsed JSON, answer text, latency, error."""

    status: int = 0
    body: dict | None = None
    answer: str | None = None
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.answer is not None


class Upstream:
    """An OpenAI-compatible endpoint reached through its own keep-alive ``httpx.AsyncClient``."""

    def __init__(self, name: str, base_url: str, *, api_key: str | None, model: str | None, timeout: float,
                 max_connections: int = 100, transport: Any = None):
        base = base_url.rstrip("/")
        self.name, self.timeout = name, timeout
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        self._discover = model is None  # a configured name is never second-guessed
        self._retry_at = 0.0
        self._backoff = _BACKOFF_START
        self._lock: asyncio.Lock | None = None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limits = max_connections
        self._transport = transport
        self.client = None

    def open(self) -> None:
        """Create the connection pool: :class:`FastClient` for plain http, httpx for https or a test transport."""
        self._lock = asyncio.Lock()
        if self._transport is None and self.base.startswith("http://"):
            self.client = FastClient(headers=self._headers, timeout=self.timeout, max_connections=self._limits)
            return
        import httpx

        self.client = httpx.AsyncClient(
            headers=self._headers, timeout=self.timeout, transport=self._transport,
            limits=httpx.Limits(max_connections=self._limits, max_keepalive_connections=self._limits))

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def _discover_model(self) -> None:
        try:
            r = await self.client.get(self.base + "/models", timeout=min(self.timeout, 5.0))
            model = r.json()["data"][0]["id"]
            if not isinstance(model, str) or not model:
                raise ValueError("no model id")
        except Exception as e:  # down or not OpenAI-shaped: try again after the backoff
            log.warning("%s: cannot list models at %s (%s); retrying in %.1fs", self.name, self.base,
                        type(e).__name__, self._backoff)
            self.model = None
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
            return
        if model != self.model:
            log.info("%s: serving model %r", self.name, model)
        self.model, self._retry_at, self._backoff = model, 0.0, _BACKOFF_START

    async def _ensure_model(self) -> None:
        if self.model is not None or time.monotonic() < self._retry_at:
            return
        async with self._lock:  # one discovery at a time; the others reuse its answer
            if self.model is None and time.monotonic() >= self._retry_at:
                await self._discover_model()

    async def _rediscover_after_404(self, sent: str | None) -> bool:
        """Re-learn the model after a 404; True when the name changed (the call is worth retrying)."""
        async with self._lock:
            if self.model != sent:  # another request already re-discovered
                return self.model is not None
            self._retry_at = 0.0
            await self._discover_model()
            return self.model is not None and self.model != sent

    async def _post(self, body: dict, timeout: float) -> tuple[Any, str | None]:
        sent = self.model
        payload = dict(body, model=sent) if sent else body
        r = await asyncio.wait_for(self.client.post(self.base + "/chat/completions", content=orjson.dumps(payload),
                                                    headers=_JSON), timeout)
        return r, sent

    async def call(self, body: dict, timeout: float | None = None) -> UpstreamResult:
        """POST the chat request; never raises (errors land in ``UpstreamResult.error``)."""
        t0 = time.perf_counter()
        res = UpstreamResult()
        limit = timeout or self.timeout
        try:
            if self._discover:
                await self._ensure_model()
            r, sent = await self._post(body, limit)
            if r.status_code == 404 and self._discover and await self._rediscover_after_404(sent):
                r, sent = await self._post(body, max(0.001, limit - (time.perf_counter() - t0)))
            res.status = r.status_code
            try:
                res.body = orjson.loads(r.content)
            except orjson.JSONDecodeError:
                res.body = None
            if r.status_code == 200:
                res.answer = res.body["choices"][0]["message"]["content"] or ""
                if not isinstance(res.answer, str):
                    raise TypeError("message content is not a string")
            else:
                res.error = f"HTTP {r.status_code}: {r.text[:300]}"
        except (asyncio.TimeoutError, TimeoutError):
            res.error = f"timeout after {limit:g}s"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # connection refused/reset, malformed body: the upstream's fault
            if self._discover and self.model is not None and not isinstance(e, (TypeError, KeyError, IndexError)):
                self.model = None  # unreachable: it may come back serving another model
            res.error = f"{type(e).__name__}: {e}"[:300]
            res.answer = None
            res.status = res.status if res.status != 200 else 0
        res.latency_ms = (time.perf_counter() - t0) * 1000
        return res
