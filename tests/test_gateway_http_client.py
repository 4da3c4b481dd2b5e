"""The gateway's small HTTP/1.1 client: framing, keep-alive reuse, stale connections, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from mixtune.release.http_client import FastClient

CANNED = {
    "/len": b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"a\": \"ok\"}",
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n6\r\n \"ok\"}\r\n0\r\n\r\n",
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\": \"ok\"}",
}


async def _server(behaviour: dict):
    """A raw server: answers by path; ``behaviour['drop_after']`` closes idle connections after one answer."""
    conns = []

    async def handle(reader, writer):
        conns.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            body = await reader.readexactly(length) if length else b""
            path = head.split(b" ")[1].decode()
            behaviour.setdefault("bodies", []).append(body)
            if path == "/slow":
                await asyncio.sleep(2)
                writer.write(CANNED["/len"])
            else:
                writer.write(CANNED[path])
            await writer.drain()
            if path == "/close" or behaviour.get("drop_after"):
                writer.close()
                break

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", conns


@pytest.mark.parametrize("path", ["/len", "/chunked", "/close"])
def test_framing(path):
    async def go():
        srv, base, _ = await _server({})
        c = FastClient(headers={"Authorization": "Bearer x"})
        for _ in range(3):  # and again on the kept-alive (or fresh, for /close) connection
            r = await c.post(base + path, content=b'{"q": 1}', headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.json() == {"a": "ok"}
        await c.aclose()
        srv.close()

    asyncio.run(go())


def test_keep_alive_reuses_one_connection_and_retries_a_stale_one():
    async def go():
        behaviour = {}
        srv, base, conns = await _server(behaviour)
        c = FastClient()
        for _ in range(5):
            assert (await c.post(base + "/len", content=b"{}")).status_code == 200
        assert len(conns) == 1  # one kept-alive connection
        behaviour["drop_after"] = True  # the server now closes after answering: idle connections go stale
        for _ in range(3):
            assert (await c.post(base + "/len", content=b"{}")).json() == {"a": "ok"}
        assert behaviour["bodies"] == [b"{}"] * 8
        srv.close()

    asyncio.run(go())


def test_timeout_closes_the_connection_so_a_late_answer_is_never_misread():
    async def go():
        srv, base, conns = await _server({})
        c = FastClient()
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await c.post(base + "/slow", content=b"{}", timeout=0.2)
        r = await c.post(base + "/chunked", content=b"{}")
        assert r.json() == {"a": "ok"} and len(conns) == 2  # a fresh connection, not the timed-out one
        srv.close()

    asyncio.run(go())


def test_refused_connection_raises():
    async def go():
        with pytest.raises(OSError):
            await FastClient().post("http://127.0.0.1:9/v1/chat/completions", content=b"{}", timeout=5)

    asyncio.run(go())
