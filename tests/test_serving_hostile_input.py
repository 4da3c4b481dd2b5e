"""Hostile or sloppy requests against `mixtune serve` and the gateway (issue 14, small gaps)."""

from __future__ import annotations

import time

import httpx
import pytest

from mixtune.release.gateway import build_gateway_app
from mixtune.release.serve import build_serve_app
from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore


class Echo:
    def __init__(self):
        self.max_new = []

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.max_new.append(max_new_tokens)
        return [f"echo: {c[-1]['content']}" for c in conversations]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    backend = Echo()
    with ServerThread(build_serve_app(backend, model_name="echo", api_key="k", max_body_bytes=64 * 1024)) as srv:
        db = f"sqlite:///{tmp_path_factory.mktemp('gw') / 's.db'}"
        app = build_gateway_app(srv.url, srv.url, api_key="g", db_url=db, champion_api_key="k",
                                candidate_api_key="k", max_body_bytes=64 * 1024, window_ms=20)
        with ServerThread(app) as gw:
            yield {"serve": (srv.url, "k"), "gateway": (gw.url, "g")}, backend, db


def _post(base, key, body=None, content=None, path="/v1/chat/completions", **kw):
    return httpx.post(base + path, json=body, content=content, headers={"Authorization": f"Bearer {key}"},
                      timeout=30, **kw)


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("which", ["serve", "gateway"])
@pytest.mark.parametrize("extra", [{"max_tokens": 0}, {"max_tokens": -5}, {"max_tokens": True},
                                   {"max_completion_tokens": 0}, {"max_tokens": 1.5}])
def test_bad_max_tokens_is_400_not_a_silent_default(servers, which, extra):
    urls, backend, _ = servers
    n = len(backend.max_new)
    r = _post(*urls[which], dict(messages=MSG, **extra))
    assert r.status_code == 400 and "max_" in r.json()["error"]["message"], r.text
    assert len(backend.max_new) == n  # nothing was generated


@pytest.mark.parametrize("which", ["serve", "gateway"])
def test_non_string_text_part_is_a_json_400(servers, which):
    r = _post(*servers[0][which], {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert "text must be a string" in r.json()["error"]["message"]


@pytest.mark.parametrize("which", ["serve", "gateway"])
def test_oversized_body_is_413_declared_or_streamed(servers, which):
    big = {"messages": [{"role": "user", "content": "x" * 100_000}]}
    r = _post(*servers[0][which], big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the cap applies while reading
        for _ in range(20):
            yield b" " * 8192

    r = _post(*servers[0][which], content=chunks())
    assert r.status_code == 413


@pytest.mark.parametrize("which", ["serve", "gateway"])
def test_openapi_schema_needs_the_key(servers, which):
    base, key = servers[0][which]
    assert httpx.get(base + "/openapi.json").status_code == 401
    assert httpx.get(base + "/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(base + "/openapi.json", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and "/v1/chat/completions" in ok.json()["paths"]
    assert httpx.get(base + "/docs").status_code == 404


def test_gateway_refuses_object_task_id_and_keeps_the_rest(servers):
    urls, _, db = servers
    r = _post(*urls["gateway"], {"messages": MSG, "metadata": {"task_id": {"x": 1}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata"
    r = _post(*urls["gateway"], {"messages": MSG, "metadata": {"task_id": "concept"}})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi"
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while not ShadowStore(db).has_record(rid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [x["task_id"] for x in ShadowStore(db).load_records() if x["request_id"] == rid] == ["concept"]
