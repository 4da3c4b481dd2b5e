"""An OpenAI-compatible upstream as the gateway sees it: one async client, calls that never raise."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mixtune.gateway")


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
    """An OpenAI-compatible endpoint reached through its own ``httpx.AsyncClient``."""

    def __init__(self, name: str, base_url: str, *, api_key: str | None, model: str | None, timeout: float,
                 max_connections: int = 100, transport: Any = None):
        base = base_url.rstrip("/")
        self.name, self.timeout = name, timeout
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limits = max_connections
        self._transport = transport
        self.client = None

    def open(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            headers=self._headers, timeout=self.timeout, transport=self._transport,
            limits=httpx.Limits(max_connections=self._limits, max_keepalive_connections=self._limits))

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def _discover_model(self) -> None:
        # vLLM and mixtune serve reject unknown model names, so learn the served id once.
        try:
            r = await self.client.get(self.base + "/models", timeout=min(self.timeout, 5.0))
            self.model = r.json()["data"][0]["id"]
        except Exception as e:  # keep the client's model name; the call itself will report errors
            log.warning("%s: cannot list models at %s (%s)", self.name, self.base, type(e).__name__)
            self.model = ""

    async def call(self, body: dict, timeout: float | None = None) -> UpstreamResult:
        """POST the chat request; never raises (errors land in ``UpstreamResult.error``)."""
        t0 = time.perf_counter()
        res = UpstreamResult()
        try:
            if self.model is None:
                await self._discover_model()
            payload = dict(body, model=self.model) if self.model else body
            r = await asyncio.wait_for(self.client.post(self.base + "/chat/completions", json=payload),
                                       timeout or self.timeout)
            res.status = r.status_code
            try:
                res.body = r.json()
            except ValueError:
                res.body = None
            if r.status_code == 200:
                res.answer = res.body["choices"][0]["message"]["content"] or ""
            else:
                res.error = f"HTTP {r.status_code}: {r.text[:300]}"
        except (asyncio.TimeoutError, TimeoutError):
            res.error = f"timeout after {timeout or self.timeout:g}s"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # connection refused/reset, malformed body: the upstream's fault
            res.error = f"{type(e).__name__}: {e}"[:300]
            res.answer = None
        res.latency_ms = (time.perf_counter() - t0) * 1000
        return res
