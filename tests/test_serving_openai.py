"""`mixtune serve`'s app: the official openai client against a real tiny HF model and a fake backend."""

from __future__ import annotations

import threading

import pytest

from mixtune.release.serve import build_serve_app, counters_from_tokenizer
from mixtune.release.server import ServerThread

openai = pytest.importorskip("openai")


class EchoBackend:
    """Records each generate call (to observe batching) and echoes the last user turn."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[int, dict]] = []
        self.delay = delay
        self.gate = threading.Event()

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        if self.delay:
            self.gate.wait(self.delay)
        self.calls.append((len(conversations), {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                                "top_p": top_p, "stop": stop, "seed": seed}))
        return [f"echo: {c[-1]['content']} END tail" for c in conversations]


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    from mixtune.eval.backends import HFBackend
    from mixtune.model.tiny import make_test_model

    path = make_test_model(tmp_path_factory.mktemp("tiny") / "model")
    backend = HFBackend(path, batch_size=4)
    count_text, count_prompt = counters_from_tokenizer(backend.tokenizer)
    app = build_serve_app(backend, model_name="tiny", api_key="k1", count_tokens=count_text,
                          count_prompt_tokens=count_prompt)
    with ServerThread(app) as srv:
        yield srv, backend


def test_openai_client_chats_with_a_real_tiny_model(tiny_server):
    srv, backend = tiny_server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k1", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    msgs = [{"role": "user", "content": "请解释什么是信用利差。"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
    expected = backend.generate([msgs], max_new_tokens=8, temperature=0.0)[0]
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.content == expected.strip() or r.choices[0].message.content == expected
    prompt_ids = backend.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")


def test_errors_have_openai_shapes(tiny_server):
    srv, _ = tiny_server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k1", max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="bad", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="tiny", messages=msgs, n=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=msgs, temperature=5)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])


def test_parameters_reach_the_backend_and_stop_is_applied():
    backend = EchoBackend()
    with ServerThread(build_serve_app(backend, model_name="echo")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "q"}],
                                           max_tokens=7, temperature=0.3, top_p=0.9, stop="END", seed=5)
    assert r.choices[0].message.content == "echo: q " and r.choices[0].finish_reason == "stop"
    assert backend.calls[-1] == (1, {"max_new_tokens": 7, "temperature": 0.3, "top_p": 0.9,
                                     "stop": ["END"], "seed": 5})


def test_concurrent_requests_are_batched_into_one_generate_call():
    from concurrent.futures import ThreadPoolExecutor

    backend = EchoBackend(delay=0.3)  # the first call blocks while the others queue up
    with ServerThread(build_serve_app(backend, model_name="echo", max_batch=8)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=10)

        def ask(i):
            return client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"q{i}"}],
                                                  temperature=0).choices[0].message.content

        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(ask, range(6)))
    assert outs == [f"echo: q{i} END tail" for i in range(6)]  # each request got its own answer
    assert sum(n for n, _ in backend.calls) == 6
    assert len(backend.calls) < 6 and max(n for n, _ in backend.calls) > 1
