"""A small keep-alive HTTP/1.1 client for the gateway's upstream calls (plain ``http://`` only).

Why not httpx everywhere: on the gateway's hot path httpx costs about 1 ms of CPU per call (anyio,
httpcore and h11 layers), and every user request makes two calls (the answer and the mirror), so
on a 2-core box httpx alone was most of the overhead budget. This client is an ``asyncio.Protocol``
with the ``httptools`` parser (the one uvicorn uses), a pool of kept-alive connections per
upstream and nothing else: about a tenth of the CPU. ``https://`` upstreams and custom transports
(tests) still go through httpx (:class:`~mixtune.release.upstream.Upstream` picks).

Semantics that matter: a call that is cancelled or times out closes its connection (a late
answer must never be read as the answer to the next request); a reused keep-alive connection that
the server closed before sending a single byte is retried once on a fresh one (the usual idle
keep-alive race); bodies are framed by Content-Length, chunked encoding or connection close.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import httptools
import orjson


class Response:
    """The parts of an HTTP response the gateway reads (an httpx-like subset)."""

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes):
        self.status_code, self.headers, self.content = status_code, headers, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return orjson.loads(self.content)


class _Conn(asyncio.Protocol):
    """One TCP connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.fut: asyncio.Future | None = None
        self.got_bytes = False
        self.keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.fut is None or self.fut.done():  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.fut.set_exception(ConnectionError(f"malformed HTTP response: {e}"))
            self.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            if self._status is not None and not self._has_length:  # body delimited by the close
                self._finish()
            else:
                self.fut.set_exception(ConnectionResetError("upstream closed the connection before answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self._headers[key] = value.decode("latin-1")
        if key in ("content-length", "transfer-encoding"):
            self._has_length = True

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(Response(self._status or 0, self._headers, b"".join(self._body)))

    def send(self, data: bytes) -> asyncio.Future:
        self.parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._status: int | None = None
        self._has_length = False
        self.got_bytes = False
        self.keep_alive = False
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.fut

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastClient:
    """Keep-alive connection pools to ``http://`` hosts (at most ``max_connections`` requests at once)."""

    def __init__(self, *, headers: dict[str, str] | None = None, timeout: float = 60.0, max_connections: int = 100):
        self.timeout = timeout
        fixed = {"User-Agent": "mixtune-gateway", "Accept": "application/json", **(headers or {})}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._sem = asyncio.Semaphore(max_connections)

    def _request_bytes(self, method: str, host: str, path: str, body: bytes | None,
                       headers: dict[str, str] | None) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
        return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{self._head}{extra}{length}\r\n".encode("latin-1")
                + (body or b""))

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FastClient handles plain http:// URLs, not {url!r}")
        addr = (parts.hostname, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        host = f"{host}:{parts.port}" if parts.port else host  # never user:password@ from the URL
        data = self._request_bytes(method, host, target, content, headers)
        idle = self._idle.setdefault(addr, [])
        async with self._sem:
            for attempt in (0, 1):
                conn = None
                while idle and conn is None:
                    c = idle.pop()
                    conn = None if c.closed else c
                reused = conn is not None
                if conn is None:
                    _, conn = await asyncio.wait_for(
                        asyncio.get_running_loop().create_connection(_Conn, *addr), timeout or self.timeout)
                try:
                    resp = await asyncio.wait_for(conn.send(data), timeout or self.timeout)
                except ConnectionResetError:
                    conn.close()
                    if reused and not conn.got_bytes and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: once more, fresh
                    raise
                except BaseException:  # timeout, cancellation, parse error: never reuse this connection
                    conn.close()
                    raise
                if conn.keep_alive and not conn.closed:
                    idle.append(conn)
                else:
                    conn.close()
                return resp
        raise AssertionError("unreachable")

    async def get(self, url: str, *, timeout: float | None = None) -> Response:
        return await self.request("GET", url, timeout=timeout)

    async def post(self, url: str, *, content: bytes, headers: dict[str, str] | None = None,
                   timeout: float | None = None) -> Response:
        return await self.request("POST", url, content=content, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
