"""The gateway against fake upstreams, through the official openai client, on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi import Request

from mixtune.release.gateway import build_gateway_app, canary_route, user_hash
from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore

openai = pytest.importorskip("openai")


def fake_upstream(name: str, mode: dict):
    """An OpenAI-ish upstream whose behaviour (`mode["kind"]`) the test flips: ok / crash / hang / garbage."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI()
    app.state.calls = []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": f"{name}-model", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.calls.append(body)
        kind = mode.get("kind", "ok")
        if kind == "crash":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if kind == "hang":
            await asyncio.sleep(mode.get("sleep", 5))
        if kind == "garbage":
            return PlainTextResponse("not json")
        text = f"{name} answer to: {body['messages'][-1]['content']} (model={body.get('model')})"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


@pytest.fixture()
def stack(tmp_path):
    """Champion + candidate fakes and a gateway; yields (gateway url, candidate mode, db url, apps)."""
    champ_mode, cand_mode = {"kind": "ok"}, {"kind": "ok"}
    champ_app, cand_app = fake_upstream("champion", champ_mode), fake_upstream("candidate", cand_mode)
    db = f"sqlite:///{tmp_path / 'shadow.db'}"
    servers = []

    def start(canary_share=0.0, **kw):
        champ = ServerThread(champ_app).start()
        cand = ServerThread(cand_app, graceful_timeout=0.3).start()  # do not wait for a hanging fake
        app = build_gateway_app(champ.url, cand.url, api_key="sekret", db_url=db, canary_share=canary_share,
                                mirror_timeout=1.0, canary_timeout=1.0, drain_timeout=3.0, **kw)
        gw = ServerThread(app).start()
        servers.extend([gw, champ, cand])
        return gw, app

    yield start, cand_mode, db, champ_app, cand_app
    for s in servers:
        s.stop()


def _client(url, key="sekret"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_mirrors_every_request_and_masks_pii(stack):
    start, _, db, champ_app, cand_app = stack
    gw, _ = start()
    client = _client(gw.url)
    raw = client.chat.completions.with_raw_response.create(
        model="whatever", messages=[{"role": "user", "content": "客户电话13812345678，身份证110101199003071234"}],
        user="alice")
    resp = raw.parse()
    rid = raw.headers["x-request-id"]
    assert resp.id == rid and resp.choices[0].message.content.startswith("champion answer")
    # the upstream model name was discovered from /v1/models, not the client's
    assert champ_app.state.calls[-1]["model"] == "champion-model"
    gw.stop()  # drains the mirror queue and flushes records
    rows = ShadowStore(db).load_records()
    assert [r["request_id"] for r in rows] == [rid]
    row = rows[0]
    assert row["routed_to"] == "champion" and row["answered_by"] == "champion"
    assert row["candidate_answer"].startswith("candidate answer") and row["candidate_error"] is None
    assert row["champion_latency_ms"] > 0 and row["candidate_latency_ms"] > 0
    stored = row["prompt"] + row["champion_answer"] + row["candidate_answer"]
    assert "13812345678" not in stored and "110101199003071234" not in stored
    assert "138****5678" in json.loads(row["prompt"])[0]["content"]
    # the salt is a random secret kept in the database, not a constant
    salt = ShadowStore(db).secret("user_salt")
    assert len(salt) == 32 and salt != "mixtune"
    assert row["user_hash"] == user_hash("alice", salt) and "alice" not in json.dumps(row)
    assert len(cand_app.state.calls) == 1


@pytest.mark.parametrize("kind", ["crash", "hang", "garbage", "down"])
def test_failing_candidate_never_affects_the_user(stack, kind):
    start, cand_mode, db, _, _ = stack
    cand_mode.update(kind="ok" if kind == "down" else kind, sleep=5)
    gw, app = start()
    if kind == "down":
        gw_state = app.state.gateway
        gw_state.candidate.base = "http://127.0.0.1:9/v1"  # discard port: connection refused
    client = _client(gw.url)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "warm"}])
    lat = []
    for i in range(4):
        t0 = time.perf_counter()
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
        lat.append(time.perf_counter() - t0)
        assert r.choices[0].message.content.startswith("champion answer")
    # the candidate sleeps 5 s (or fails); the user's answer does not wait for it
    assert max(lat) < 0.5, lat
    gw.stop()
    rows = ShadowStore(db).load_records()
    assert len(rows) == 5
    assert all(r["champion_answer"] and r["candidate_answer"] is None and r["candidate_error"] for r in rows)
    if kind == "hang":
        assert all("timeout" in r["candidate_error"] for r in rows)


def test_wrong_or_missing_api_key_is_refused(stack):
    start, *_ = stack
    gw, _ = start()
    with pytest.raises(openai.AuthenticationError) as e:
        _client(gw.url, key="wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    import httpx

    r = httpx.post(gw.url + "/v1/feedback", json={"request_id": "a", "rating": 1})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_canary_is_sticky_and_falls_back_to_champion(stack):
    start, cand_mode, db, _, _ = stack
    users = [f"user{i}" for i in range(400)]
    share = sum(canary_route(user_hash(u, "mixtune"), 0.25) == "candidate" for u in users) / len(users)
    assert 0.17 < share < 0.33
    canary_user = next(u for u in users if canary_route(user_hash(u, "mixtune"), 0.25) == "candidate")
    other_user = next(u for u in users if canary_route(user_hash(u, "mixtune"), 0.25) == "champion")
    gw, _ = start(canary_share=0.25, salt="mixtune")
    client = _client(gw.url)
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(3):  # sticky: the same user always lands on the same model
        assert client.chat.completions.create(model="m", messages=msgs, user=canary_user) \
            .choices[0].message.content.startswith("candidate answer")
        assert client.chat.completions.create(model="m", messages=msgs, extra_headers={"X-User-Id": other_user}) \
            .choices[0].message.content.startswith("champion answer")
    cand_mode["kind"] = "crash"
    r = client.chat.completions.create(model="m", messages=msgs, user=canary_user)
    assert r.choices[0].message.content.startswith("champion answer")  # hedge answered
    gw.stop()
    rows = ShadowStore(db).load_records()
    canary_rows = [r for r in rows if r["routed_to"] == "candidate"]
    assert len(rows) == 7 and len(canary_rows) == 4
    assert all(r["champion_answer"] for r in rows)  # paired: the champion answer exists for canary rows too
    assert sorted(r["answered_by"] for r in canary_rows) == ["candidate"] * 3 + ["champion"]


def test_feedback_is_stored_and_validated(stack):
    start, _, db, _, _ = stack
    gw, _ = start()
    import httpx

    h = {"Authorization": "Bearer sekret"}
    rid = _client(gw.url).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]).headers["x-request-id"]
    r = httpx.post(gw.url + "/v1/feedback", headers=h,
                   json={"request_id": rid, "rating": 4, "comment": "打给13812345678"})
    assert r.status_code == 200 and r.json()["status"] == "stored"
    bad = httpx.post(gw.url + "/v1/feedback", headers=h, json={"request_id": rid})
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]
    unknown = httpx.post(gw.url + "/v1/feedback", headers=h, json={"request_id": "chatcmpl-nope", "rating": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
    huge = httpx.post(gw.url + "/v1/feedback", headers=h, json={"request_id": rid, "rating": 1, "comment": "x" * 5000})
    assert huge.status_code == 413
    fb = ShadowStore(db).load_feedback()
    assert len(fb) == 1 and fb[0]["rating"] == 4 and fb[0]["comment"] == "打给138****5678"


def test_full_mirror_queue_drops_the_comparison_not_the_answer(stack):
    start, cand_mode, db, _, _ = stack
    cand_mode.update(kind="hang", sleep=5)
    gw, app = start(queue_size=1, mirror_workers=1)
    client = _client(gw.url)
    for i in range(4):
        assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"{i}"}]).choices
    stats = app.state.gateway.stats
    assert stats["mirrors_dropped"] >= 2
    gw.stop()
    rows = ShadowStore(db).load_records()
    assert len(rows) == 4  # every request is still recorded
    assert sum("queue full" in (r["candidate_error"] or "") for r in rows) == stats["mirrors_dropped"]
