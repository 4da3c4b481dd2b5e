"""OpenAIBackend against a real local fastapi/uvicorn server: order, concurrency, retries, errors."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mixtune.errors import MixtuneError
from mixtune.eval.backends import OpenAIBackend


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.inflight = self.max_inflight = 0
        self.bodies: list[dict] = []


@pytest.fixture(scope="module")
def server():
    import uvicorn

    st = State()
    app = FastAPI()

    def reply(text):
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}

    @app.post("/ok/v1/chat/completions")
    def ok(body: dict):  # sync handler → runs in a thread pool, so concurrency is real
        with st.lock:
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
            st.bodies.append(body)
        time.sleep(0.05)
        with st.lock:
            st.inflight -= 1
        return reply("echo:" + body["messages"][-1]["content"] + "<END>tail")

    @app.post("/flaky/v1/chat/completions")
    async def flaky(request: Request):
        body = await request.json()
        key = body["messages"][-1]["content"]
        with st.lock:
            st.attempts[key] = st.attempts.get(key, 0) + 1
            n = st.attempts[key]
        if n <= 2:  # the first two attempts of every prompt fail
            return JSONResponse({"error": "overloaded"}, status_code=503)
        return reply(f"{key}@{n}")

    @app.post("/slow/v1/chat/completions")
    async def slow(body: dict):
        import asyncio

        await asyncio.sleep(0.5)
        return reply("late")

    @app.post("/auth/v1/chat/completions")
    async def auth(request: Request):
        if request.headers.get("authorization") != "Bearer sk-good":
            return JSONResponse({"error": "invalid api key"}, status_code=401)
        return {"unexpected": True}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", st
    srv.should_exit = True
    thread.join(timeout=5)


def convs(n, tag="q"):
    return [[{"role": "user", "content": f"{tag}{i}"}] for i in range(n)]


def test_order_concurrency_stop_and_body(server):
    url, st = server
    b = OpenAIBackend(url + "/ok", api_key="k", model="cand", concurrency=4)
    out = b.generate(convs(12), max_new_tokens=7, stop=["<END>"], seed=5)
    assert out == [f"echo:q{i}" for i in range(12)]  # input order kept, stop applied client-side
    assert 1 < st.max_inflight <= 4
    body = st.bodies[0]
    assert body["model"] == "cand" and body["max_tokens"] == 7 and body["stop"] == ["<END>"] and body["seed"] == 5


def test_flaky_endpoint_is_retried_with_backoff(server):
    url, st = server
    sleeps = []
    b = OpenAIBackend(url + "/flaky/v1", model="m", retries=2, backoff=0.01, sleep=sleeps.append)
    assert b.generate(convs(3, "f"), max_new_tokens=4) == ["f0@3", "f1@3", "f2@3"]
    assert sorted(sleeps) == [0.01] * 3 + [0.02] * 3  # exponential per attempt
    few = OpenAIBackend(url + "/flaky", model="m", retries=1, backoff=0, sleep=lambda s: None)
    with pytest.raises(MixtuneError, match="after 2 attempts.*503"):
        few.generate(convs(1, "g"), max_new_tokens=4)


def test_timeout_and_connection_errors(server):
    url, _ = server
    b = OpenAIBackend(url + "/slow", model="m", timeout=0.2, retries=1, backoff=0, sleep=lambda s: None)
    with pytest.raises(MixtuneError, match="timed out"):
        b.generate(convs(1), max_new_tokens=4)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    b = OpenAIBackend(f"http://127.0.0.1:{dead}", model="m", retries=0)
    with pytest.raises(MixtuneError, match="connection failed"):
        b.generate(convs(1), max_new_tokens=4)


def test_client_errors_are_not_retried(server):
    url, _ = server
    sleeps = []
    b = OpenAIBackend(url + "/auth", api_key="sk-bad", model="m", sleep=sleeps.append)
    with pytest.raises(MixtuneError, match="HTTP 401.*invalid api key"):
        b.generate(convs(1), max_new_tokens=4)
    assert sleeps == []
    b = OpenAIBackend(url + "/auth", api_key="sk-good", model="m")
    with pytest.raises(MixtuneError, match="not an OpenAI chat completion"):
        b.generate(convs(1), max_new_tokens=4)
