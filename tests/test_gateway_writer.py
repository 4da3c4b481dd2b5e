"""The shadow writer: one bad record never takes its batch down; sync refuses answers it cannot record."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError, OperationalError

from mixtune.release.gateway import build_gateway_app
from mixtune.release.server import ServerThread
from mixtune.release.shadow_writer import ShadowWriter


class PickyStore:
    """Refuses any batch containing request id 'poison' (as a database refuses one bad row)."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def warm_up(self):
        pass

    def insert_records(self, rows):
        if any(r["request_id"] == "poison" for r in rows):
            raise IntegrityError("INSERT", {}, Exception("bad row"))
        self.rows.update({r["request_id"]: r for r in rows})


def _rec(rid: str) -> dict:
    return {"request_id": rid, "prompt": [{"role": "user", "content": "电话13812345678"}], "champion_answer": "a"}


def test_poison_record_is_isolated_and_the_rest_is_written():
    async def go():
        store = PickyStore()
        w = ShadowWriter(store, lambda s: s.replace("13812345678", "138****5678"), window_ms=10)
        w.start(asyncio.get_running_loop())
        for rid in ["a", "b", "poison", "c"]:
            w.submit(_rec(rid), final=True)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(w.close, 1.0)  # gives up on the poison record: it is counted lost
        return store, w

    store, w = asyncio.run(go())
    assert set(store.rows) == {"a", "b", "c"}
    assert "138****5678" in store.rows["a"]["prompt"] and "13812345678" not in store.rows["a"]["prompt"]
    assert w.stats["records_written"] == 3 and w.stats["records_lost"] == 1


def _echo_app():
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}

    return app


def _down(*_a, **_k):
    raise OperationalError("INSERT", {}, Exception("database or disk is full"))


def test_sync_durability_answers_503_when_the_record_cannot_be_written(tmp_path):
    with ServerThread(_echo_app()) as up:
        codes = {}
        for durability in ("sync", "batch"):
            app = build_gateway_app(up.url, up.url, api_key="k", db_url=f"sqlite:///{tmp_path / durability}.db",
                                    champion_model="m", candidate_model="m", durability=durability, window_ms=10,
                                    drain_timeout=1)
            store = app.state.gateway.store
            with ServerThread(app) as gw:
                store.insert_records = _down
                r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": "Bearer k"}, timeout=30,
                               json={"messages": [{"role": "user", "content": "hi"}]})
                codes[durability] = (r.status_code, r.json())
                stats = dict(app.state.gateway.stats)
                del store.insert_records  # the database recovers: shutdown writes the retried record
            assert store.count_records() == 1
            if durability == "sync":
                assert stats["unrecorded_refusals"] == 1
    assert codes["sync"][0] == 503 and codes["sync"][1]["error"]["code"] == "shadow_log_unavailable"
    assert codes["batch"][0] == 200  # batch: availability first, the loss is counted and logged


class FlakyStore(PickyStore):
    """Fails the first write like a locked database, then works."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def insert_records(self, rows):
        self.calls += 1
        if self.calls == 1:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        for r in rows:
            self.rows[r["request_id"]] = r


def test_a_retried_half_never_overwrites_the_newer_pair():
    async def go():
        store = FlakyStore()
        w = ShadowWriter(store, lambda s: s, window_ms=10)
        w.start(asyncio.get_running_loop())
        half = _rec("r1")
        w.submit(half, final=False)  # the first write fails: this half waits for its retry
        await asyncio.sleep(0.2)
        w.submit(dict(half, candidate_answer="pair"), final=True)  # written at once, before the retry
        await asyncio.sleep(1.5)  # past the retry pause
        await asyncio.to_thread(w.close, 2.0)
        return store

    store = asyncio.run(go())
    assert store.rows["r1"]["candidate_answer"] == "pair"
