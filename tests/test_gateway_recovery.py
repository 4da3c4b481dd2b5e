"""A gateway that met a down upstream recovers as soon as it is back (issue 14, high 1)."""

from __future__ import annotations

import socket
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mixtune.release.gateway import build_gateway_app
from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore


def strict_upstream(model: str):
    """Like vLLM: answers only requests naming the served model, 404 otherwise."""
    app = FastAPI()
    app.state.models_asked = 0

    @app.get("/v1/models")
    async def models():
        app.state.models_asked += 1
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if body.get("model") != model:
            return JSONResponse({"error": {"message": f"The model '{body.get('model')}' does not exist",
                                           "type": "invalid_request_error", "code": "model_not_found"}},
                                status_code=404)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{model} says hi"},
                             "finish_reason": "stop"}]}

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chat(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer k"}, timeout=30,
                      json={"model": "mixtune-gateway", "messages": [{"role": "user", "content": "hi"}]})


def test_champion_down_then_up_recovers_and_mirrors_resume(tmp_path):
    champ_port, cand_port = _free_port(), _free_port()
    db = f"sqlite:///{tmp_path / 's.db'}"
    app = build_gateway_app(f"http://127.0.0.1:{champ_port}", f"http://127.0.0.1:{cand_port}", api_key="k",
                            db_url=db, mirror_timeout=2.0, drain_timeout=3.0, window_ms=20)
    with ServerThread(app) as gw:
        # both upstreams down: the users get 502, discovery failed
        assert [_chat(gw.url).status_code for _ in range(2)] == [502, 502]
        champ_app, cand_app = strict_upstream("champ-v1"), strict_upstream("cand-v1")
        with ServerThread(champ_app, port=champ_port), ServerThread(cand_app, port=cand_port):
            got = [_chat(gw.url) for _ in range(5)]
            assert [r.status_code for r in got] == [200] * 5, [r.text for r in got]
            assert all(r.json()["choices"][0]["message"]["content"] == "champ-v1 says hi" for r in got)
            assert champ_app.state.models_asked >= 1
            rids = [r.headers["x-request-id"] for r in got]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the mirrors to the recovered candidate succeed too
                rows = {r["request_id"]: r for r in ShadowStore(db).load_records()}
                if all(rows.get(rid, {}).get("candidate_answer") for rid in rids):
                    break
                time.sleep(0.1)
            assert [rows[rid]["candidate_answer"] for rid in rids] == ["cand-v1 says hi"] * 5
        # the champion comes back serving a NEW model: a 404 triggers re-discovery, not an outage
        with ServerThread(strict_upstream("champ-v2"), port=champ_port), \
                ServerThread(strict_upstream("cand-v2"), port=cand_port):
            r = _chat(gw.url)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "champ-v2 says hi"
