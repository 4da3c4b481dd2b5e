"""`stream: true` against `mixtune serve`: the openai client's streaming API, raw SSE, the gateway's refusal."""

from __future__ import annotations

import json

import httpx
import pytest

from mixtune.release.serve import build_serve_app, counters_from_tokenizer, stream_pieces
from mixtune.release.server import ServerThread

openai = pytest.importorskip("openai")
MSGS = [{"role": "user", "content": "请解释什么是信用利差。"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mixtune.eval.backends import HFBackend
    from mixtune.model.tiny import make_test_model

    path = make_test_model(tmp_path_factory.mktemp("tiny") / "model")
    backend = HFBackend(path, batch_size=4)
    count_text, count_prompt = counters_from_tokenizer(backend.tokenizer)
    app = build_serve_app(backend, model_name="tiny", api_key="k1", count_tokens=count_text,
                          count_prompt_tokens=count_prompt)
    with ServerThread(app) as srv:
        yield srv, backend


def test_openai_client_streams_the_greedy_answer(tiny):
    srv, backend = tiny
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k1", max_retries=0, timeout=60)
    plain = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == "tiny" for c in chunks)
    assert len({c.id for c in chunks}) == 1  # one completion, one id
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    expected = backend.generate([MSGS], max_new_tokens=24, temperature=0.0)[0]
    assert text == plain.choices[0].message.content == expected
    assert len(with_choices) >= 3  # role, at least one content delta, finish
    assert with_choices[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_raw_sse_lines_end_with_done_and_no_usage_unless_asked(tiny):
    srv, _ = tiny
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer k1"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in events)
    assert events[-1] == "data: [DONE]"
    objs = [json.loads(ln[6:]) for ln in events[:-1]]
    assert all(o["choices"] for o in objs) and not any("usage" in o for o in objs)
    assert objs[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_bad_stream_values_are_400(tiny):
    srv, _ = tiny
    h = {"Authorization": "Bearer k1"}
    for extra in ({"stream": "yes"}, {"stream": True, "stream_options": {"include_usage": "no"}}):
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSGS, **extra}, headers=h, timeout=30)
        assert r.status_code == 400 and "stream" in r.json()["error"]["message"]


def test_pieces_rebuild_the_text_exactly():
    for text in ("", "  ", "hello  world\n x ", "信用利差是" * 10, "a\n\n", "\tx"):
        pieces = stream_pieces(text)
        assert "".join(pieces) == text
        assert all(len(p.strip()) <= 16 for p in pieces)
    assert len(stream_pieces("信用利差是" * 10)) >= 4  # long CJK runs still arrive in several deltas


def test_gateway_refuses_stream_with_a_clear_400(tmp_path):
    from mixtune.release.gateway import build_gateway_app

    # The gateway mirrors whole answers to the candidate, so it does not forward streams: it says so.
    app = build_gateway_app("http://127.0.0.1:9", "http://127.0.0.1:9", api_key="g", champion_model="m",
                            candidate_model="m", db_url=f"sqlite:///{tmp_path / 'gw.db'}")
    with ServerThread(app) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="g", max_retries=0, timeout=30)
        with pytest.raises(openai.BadRequestError, match="streaming is not supported by the gateway"):
            client.chat.completions.create(model="m", messages=MSGS, stream=True)
