"""What a killed or stopped gateway keeps (issue 14): real `mixtune gateway` processes, fake upstreams.

* SIGKILL with a slow candidate: sync keeps every answered request, batch all but the last window.
* SIGTERM with a champion slower than the old hard-coded 5 s window: in-flight requests complete.
* 60 requests with malformed ones among them: the bad ones get 400, every answered one is stored.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from mixtune.bench.gateway_overhead import FakeUpstream
from mixtune.bench.reliability import KEY, drive, start_gateway, stored_ids
from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore

pytestmark = pytest.mark.integration
MODELS = ("--champion-model", "fake", "--candidate-model", "fake")


@pytest.fixture()
def upstreams():
    champ, cand = FakeUpstream("champ"), FakeUpstream("cand", delay_s=3.0)  # the mirror is still running
    with ServerThread(champ, graceful_timeout=0.2) as c1, ServerThread(cand, graceful_timeout=0.2) as c2:
        yield champ, c1.url, c2.url


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_sigkill_loses_no_answer_beyond_the_durability_window(upstreams, tmp_path, durability):
    champ, champ_url, cand_url = upstreams
    champ.delay_s = 0.05  # the load lasts long enough for most answers to be older than the window
    db = f"sqlite:///{tmp_path / 's.db'}"
    window_ms = 100
    proc, url = start_gateway(champ_url, cand_url, db, durability=durability, window_ms=window_ms,
                              args=(*MODELS, "--mirror-timeout", "10"))
    try:
        results = asyncio.run(drive(url, 96))
        proc.send_signal(signal.SIGKILL)
        kill_t = time.monotonic()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    answered = [r for r in results if r["status"] == 200]
    assert len(answered) == 96
    missing = [r for r in answered if r["rid"] not in stored_ids(db)]
    if durability == "sync":
        assert missing == []
    else:  # only the answers of the last window (+ an allowance for the write in flight) may be missing
        allowance = window_ms / 1000 + 0.5
        assert [r for r in missing if r["t"] < kill_t - allowance] == []
        assert len(missing) < len(answered) / 2
    rows = ShadowStore(db).load_records()
    assert all(r["champion_answer"] and r["candidate_answer"] is None for r in rows)  # the mirror was pending


def test_sigterm_lets_slow_in_flight_requests_finish(upstreams, tmp_path):
    champ, champ_url, cand_url = upstreams
    champ.delay_s = 6.0  # longer than the old hard-coded 5 s graceful window
    db = f"sqlite:///{tmp_path / 's.db'}"
    proc, url = start_gateway(champ_url, cand_url, db, args=(*MODELS, "--champion-timeout", "10"))

    async def go():
        task = asyncio.create_task(drive(url, 4, concurrency=4))
        await asyncio.sleep(1.0)  # all four are waiting for the champion
        proc.send_signal(signal.SIGTERM)
        return await task

    try:
        results = asyncio.run(go())
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["status"] for r in results] == [200] * 4, out
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal after a clean shutdown
    assert "could not be written" not in out
    assert {r["rid"] for r in results} <= stored_ids(db)


def test_malformed_requests_never_cost_other_records(tmp_path):
    champ, cand = FakeUpstream("champ"), FakeUpstream("cand")
    db = f"sqlite:///{tmp_path / 's.db'}"
    with ServerThread(champ) as c1, ServerThread(cand) as c2:
        proc, url = start_gateway(c1.url, c2.url, db, args=MODELS)
        statuses, rids = [], []
        try:
            with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
                for i in range(60):
                    body = {"messages": [{"role": "user", "content": f"q{i}"}]}
                    if i % 10 == 3:
                        body["metadata"] = {"task_id": {"x": 1}}
                    elif i % 10 == 7:
                        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
                    elif i % 10 == 5:  # odd but valid: stored sanitised
                        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "NUL\x00"},
                                                                          {"type": "image_url", "image_url": {}}]}]
                        body["metadata"] = {"task_id": "t" * 500}
                        body["user"] = 12345
                    r = client.post(url + "/v1/chat/completions", json=body)
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        rids.append(r.headers["x-request-id"])
                    else:
                        assert r.headers["content-type"].startswith("application/json")
        finally:
            out = _term(proc)
    assert statuses.count(400) == 12 and statuses.count(200) == 48, statuses
    assert set(rids) == stored_ids(db), out
    assert "failed" not in out


def _term(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[0]
    except Exception:
        proc.kill()
        return proc.communicate()[0]
