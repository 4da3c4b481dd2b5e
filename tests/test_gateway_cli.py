"""End to end through the real CLI: `mixtune serve` and `mixtune gateway` processes, the openai client,
SIGTERM shutdown that flushes the log, then `mixtune shadow report` over what was recorded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from mixtune.release.serve import build_serve_app
from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], port: int, timeout: float = 60.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "mixtune", *args, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{args[0]} did not come up in {timeout}s")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown runs the app's lifespan exit
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"process ignored SIGTERM:\n{out}") from None
    return out


class Canned:
    """A stand-in candidate: rule-clean answers (the champion here is a random tiny model)."""

    def generate(self, conversations, **kw):
        return ["流动性覆盖率为150.00%，符合监管要求。" for _ in conversations]


def test_serve_and_gateway_processes_with_the_openai_client(tmp_path):
    from mixtune.model.tiny import make_test_model

    model = make_test_model(tmp_path / "tiny")
    serve_port, gw_port = _free_port(), _free_port()
    db = f"sqlite:///{tmp_path / 'shadow.db'}"
    serve = _start(["serve", str(model), "--api-key", "up-key", "--model-name", "tiny-champ"], serve_port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{serve_port}/v1", api_key="up-key", max_retries=0)
        r = client.chat.completions.create(model="tiny-champ", messages=[{"role": "user", "content": "你好"}],
                                           max_tokens=5, temperature=0)
        assert r.model == "tiny-champ" and r.usage.completion_tokens <= 5
        with ServerThread(build_serve_app(Canned(), model_name="cand")) as cand:
            gw = _start(["gateway", "--champion", f"http://127.0.0.1:{serve_port}", "--candidate", cand.url,
                         "--api-key", "gw-key", "--db", db, "--canary-share", "0.5"], gw_port)
            try:
                gclient = openai.OpenAI(base_url=f"http://127.0.0.1:{gw_port}/v1", api_key="gw-key", max_retries=0,
                                        timeout=30)
                with pytest.raises(openai.AuthenticationError):
                    openai.OpenAI(base_url=f"http://127.0.0.1:{gw_port}/v1", api_key="nope",
                                  max_retries=0).chat.completions.create(
                        model="x", messages=[{"role": "user", "content": "hi"}])
                ids = []
                for i in range(12):
                    raw = gclient.chat.completions.with_raw_response.create(
                        model="any", messages=[{"role": "user", "content": f"问题{i}：身份证110101199003071234"}],
                        max_tokens=5, temperature=0, user=f"user-{i}")
                    ids.append(raw.headers["x-request-id"])
                    assert raw.parse().choices[0].message.content is not None
            finally:
                gw_out = _stop(gw)
    finally:
        _stop(serve)
    rows = ShadowStore(db).load_records()
    assert sorted(r["request_id"] for r in rows) == sorted(ids), gw_out
    assert {r["routed_to"] for r in rows} == {"champion", "candidate"}
    assert all("110101199003071234" not in r["prompt"] for r in rows)
    assert all(r["candidate_answer"] for r in rows)
    assert json.loads(rows[0]["prompt"])[0]["content"].endswith("110***********1234")


@pytest.fixture(autouse=True)
def _champion_key_env(monkeypatch):
    # the gateway subprocess reads the champion's key from the environment (never from argv)
    monkeypatch.setenv("MIXTUNE_CHAMPION_KEY", "up-key")
