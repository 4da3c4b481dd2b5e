"""Gateway overhead benchmark: what the gateway adds to the user's latency, on loopback only.

A fake, fast OpenAI-compatible upstream (a raw ASGI app answering a fixed completion) plays both
champion and candidate. Each client worker alternates a direct call to the champion with the same
call through the gateway, so drift in machine load hits both series equally. Overhead is the
difference of the two latency percentiles. After the gateway shuts down (which drains its mirror
and write queues) the database must hold one record per gateway request: ``lost_records`` counts
the shortfall.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore

_ANSWER = json.dumps({
    "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "流动性覆盖率为150.00%。"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
}).encode()


async def fake_upstream(scope, receive, send):
    """Minimal ASGI OpenAI upstream: any POST gets the fixed completion, GET /v1/models a list."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:  # consume the request body
        msg = await receive()
        more = msg.get("more_body", False)
    body = _ANSWER if scope["method"] == "POST" else json.dumps(
        {"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class FakeUpstream:
    """A configurable fake OpenAI upstream (ASGI) for fault tests: flip ``delay_s`` and ``mode`` live.

    ``mode``: ``ok`` (the fixed completion after ``delay_s``), ``crash`` (HTTP 500), ``garbage``
    (200 with a non-JSON body), ``reset`` (the app raises mid-request: uvicorn answers 500 or drops the connection).
    ``posts`` counts chat calls.
    """

    def __init__(self, model: str = "fake", delay_s: float = 0.0, mode: str = "ok"):
        self.model, self.delay_s, self.mode, self.posts = model, delay_s, mode, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await fake_upstream(scope, receive, send)
            return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        status, body = 200, _ANSWER
        if scope["method"] == "GET":
            body = json.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]}).encode()
        else:
            self.posts += 1
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.mode == "crash":
                status, body = 500, b'{"error": {"message": "boom", "type": "server_error"}}'
            elif self.mode == "garbage":
                body = b"not json"
            elif self.mode == "reset":
                raise RuntimeError("fake upstream drops the connection")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def _drive(direct_url: str, gw_url: str, n: int, concurrency: int, deadline_s: float):
    body = {"model": "any", "messages": [{"role": "user", "content": "流动性覆盖率是多少？电话13812345678"}],
            "max_tokens": 16, "temperature": 0}
    direct, via = [], []
    counter = iter(range(n))
    stop_at = time.monotonic() + deadline_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as c_direct, \
            httpx.AsyncClient(limits=limits, timeout=10, headers={"Authorization": "Bearer bench"}) as c_gw:
        async def worker(k: int) -> None:
            for i in counter:
                if time.monotonic() > stop_at:
                    return
                pair = [(c_direct, direct_url, direct), (c_gw, gw_url, via)]
                for client, url, sink in (pair if (i + k) % 2 == 0 else pair[::-1]):
                    t0 = time.perf_counter()
                    r = await client.post(url + "/v1/chat/completions", json=dict(body, user=f"u{i % 97}"))
                    sink.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return direct, via


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"benchmark process exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # graceful: the gateway drains and flushes its log
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def measure_gateway_overhead(n_requests: int = 500, concurrency: int = 8, *, warmup: int = 20, deadline_s: float = 120.0,
                             durability: str = "batch") -> dict:
    """Run the benchmark; returns p50/p99 latencies (ms) of both paths, overheads and lost records.

    ``durability``: the gateway's ``--durability`` (``sync`` waits for the commit before answering).
    ``gateway_cpu_ms_per_request``: CPU seconds the gateway process spent per request (user + system),
    a number the machine's other load disturbs much less than latencies.

    Client (this process), fake upstreams and the gateway run in three processes, as in production,
    so the gateway's cost is not inflated by sharing one interpreter lock with the load generator.
    """
    if n_requests < 1 or concurrency < 1:
        raise ValueError("n_requests and concurrency must be >= 1")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'shadow.db'}"
        p_champ, p_cand, p_gw = _free_port(), _free_port(), _free_port()
        champ, cand, gw = (f"http://127.0.0.1:{p}" for p in (p_champ, p_cand, p_gw))
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "mixtune.bench.gateway_overhead", str(p_champ),
                                           str(p_cand)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            _wait_up(champ + "/v1/models", procs[0], 30)
            _wait_up(cand + "/v1/models", procs[0], 30)
            env = dict(os.environ, MIXTUNE_API_KEY="bench")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "mixtune", "gateway", "--champion", champ, "--candidate", cand, "--db", db,
                 "--champion-model", "fake", "--candidate-model", "fake", "--host", "127.0.0.1",
                 "--port", str(p_gw), "--durability", durability], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
            _wait_up(gw + "/health", procs[1], 60)
            asyncio.run(_drive(champ, gw, warmup, 2, deadline_s))  # open connections, warm caches
            cpu0 = _cpu_s(procs[1].pid)
            direct, via = asyncio.run(_drive(champ, gw, n_requests, concurrency, deadline_s))
            time.sleep(0.2)  # the mirrors of the last requests
            cpu = (_cpu_s(procs[1].pid) - cpu0) / max(1, len(via)) * 1000
            _stop(procs.pop())  # the gateway: drain + flush before counting
        finally:
            for p in procs:
                _stop(p)
        sent = warmup + len(via)
        stored = ShadowStore(db).count_records()
    return {
        "n_requests": len(via), "concurrency": concurrency,
        "direct_p50_ms": _pct(direct, 0.5), "direct_p99_ms": _pct(direct, 0.99),
        "gateway_p50_ms": _pct(via, 0.5), "gateway_p99_ms": _pct(via, 0.99),
        "p50_overhead_ms": _pct(via, 0.5) - _pct(direct, 0.5),
        "p99_overhead_ms": _pct(via, 0.99) - _pct(direct, 0.99),
        "lost_records": sent - stored, "gateway_cpu_ms_per_request": cpu, "durability": durability,
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _serve_fakes(ports: list[int]) -> None:
    """Serve the fake upstream on each port until SIGTERM (the benchmark's upstream process)."""
    servers = [ServerThread(fake_upstream, port=p).start() for p in ports]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for s in servers:
        s.stop()


if __name__ == "__main__":
    _serve_fakes([int(p) for p in sys.argv[1:]])
