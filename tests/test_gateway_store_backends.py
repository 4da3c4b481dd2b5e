"""The shadow store on SQLite and, when MIXTUNE_TEST_PG_URL is set, on PostgreSQL (replicas share it).

Each PostgreSQL test uses its own table prefix and drops its tables afterwards.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid

import httpx
import pytest

from mixtune.release.gateway import build_gateway_app, user_hash
from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore

PG_URL = os.environ.get("MIXTUNE_TEST_PG_URL")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not PG_URL, reason="PostgreSQL not available: set MIXTUNE_TEST_PG_URL to run the shared-store tests"))]


@pytest.fixture(params=BACKENDS)
def store_spec(request, tmp_path):
    """(url, table prefix) of an empty store; PostgreSQL tables are dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 's.db'}", ""
        return
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    yield PG_URL, prefix
    ShadowStore(PG_URL, table_prefix=prefix).drop_tables()


def _hostile_rows(n: int) -> list[dict]:
    rows = [{"request_id": f"ok-{i}", "ts": float(i), "source": "gateway", "routed_to": "champion",
             "prompt": [{"role": "user", "content": f"q{i}"}], "champion_answer": f"a{i}",
             "params": {"max_tokens": 16}} for i in range(n)]
    rows[3]["task_id"] = {"x": 1}                       # an object where a string belongs
    rows[7]["prompt"] = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    rows[11]["champion_answer"] = "NUL\x00inside"        # PostgreSQL refuses NUL in text
    rows[13]["task_id"] = "t" * 5000                    # longer than the column
    rows[17]["champion_latency_ms"] = math.inf          # not a storable float everywhere
    rows[19]["candidate_error"] = 12345                 # a number where text belongs
    rows[23]["ts"] = "yesterday"
    return rows


def test_one_bad_record_never_fails_the_batch(store_spec):
    url, prefix = store_spec
    store = ShadowStore(url, table_prefix=prefix)
    assert store.insert_records(_hostile_rows(60)) == 60
    rows = {r["request_id"]: r for r in store.load_records()}
    assert len(rows) == 60
    assert rows["ok-3"]["task_id"] == json.dumps({"x": 1})
    assert rows["ok-11"]["champion_answer"] == "NUL\ufffdinside"
    assert len(rows["ok-13"]["task_id"]) == 120 and rows["ok-17"]["champion_latency_ms"] is None
    assert rows["ok-19"]["candidate_error"] == "12345"
    # an upsert: the second version of a request id replaces the first
    store.insert_records([dict(_hostile_rows(60)[0], candidate_answer="later")])
    again = {r["request_id"]: r for r in store.load_records()}
    assert len(again) == 60 and again["ok-0"]["candidate_answer"] == "later"
    assert store.has_record("ok-5") and not store.has_record("nope")
    store.close()


def test_replicas_share_one_salt_and_one_log(store_spec, tmp_path):
    url, prefix = store_spec
    a, b = ShadowStore(url, table_prefix=prefix), ShadowStore(url, table_prefix=prefix)
    salt = a.secret("user_salt")
    assert salt == b.secret("user_salt") and len(salt) == 32
    other = ShadowStore(f"sqlite:///{tmp_path / 'other.db'}")
    assert other.secret("user_salt") != salt  # random per store, not a constant

    def echo():
        from fastapi import FastAPI

        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat():
            return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}

        return app

    with ServerThread(echo()) as up:
        apps = [build_gateway_app(up.url, up.url, api_key="k", db_url=url, table_prefix=prefix, champion_model="m",
                                  candidate_model="m", window_ms=20, drain_timeout=3) for _ in range(2)]
        rids = []
        with ServerThread(apps[0]) as g1, ServerThread(apps[1]) as g2:
            for g in (g1, g2, g1, g2):
                r = httpx.post(g.url + "/v1/chat/completions", headers={"Authorization": "Bearer k"}, timeout=30,
                               json={"messages": [{"role": "user", "content": "hi"}], "user": "alice"})
                assert r.status_code == 200
                rids.append(r.headers["x-request-id"])
            # feedback for an answer of the OTHER replica is accepted: it is in the shared log
            fb = None
            for _ in range(100):
                fb = httpx.post(g2.url + "/v1/feedback", headers={"Authorization": "Bearer k"},
                                json={"request_id": rids[0], "rating": 5})
                if fb.status_code == 200:
                    break
                time.sleep(0.05)
            assert fb.status_code == 200
    rows = a.load_records()
    assert sorted(r["request_id"] for r in rows) == sorted(rids)
    assert {r["user_hash"] for r in rows} == {user_hash("alice", salt)}
    assert [f["request_id"] for f in a.load_feedback()] == [rids[0]]
    for s in (a, b, other):
        s.close()
