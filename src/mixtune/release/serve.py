"""An OpenAI-compatible chat server in front of any generation backend (``mixtune serve``).

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming, ``n=1``; honours
``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``, ``stop``, ``seed``) and
``GET /health``. Responses, usage and errors follow OpenAI's shapes so the official ``openai``
client, vLLM-style gateways and the mixtune gateway can all talk to it.

The backend is any object with ``generate(conversations, *, max_new_tokens, temperature, top_p,
stop, seed) -> list[str]`` (e.g. :class:`mixtune.eval.backends.HFBackend`). ``generate`` blocks, so
it runs in a worker thread; concurrent requests with identical sampling parameters are batched
into one ``generate`` call (whatever queued while the previous batch ran), which is what makes a
batched HF backend pay off under load without adding latency to a lone request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Request  # module level: FastAPI resolves postponed annotations here

from mixtune.release.openai_compat import (
    MAX_BODY_BYTES,
    bearer_ok,
    chat_problem_param,
    content_text,
    error_response,
    json_body,
    protect_openapi,
    unauthorized,
    validate_chat_body,
)

TokenCounter = Callable[[str], int]
PromptCounter = Callable[[list[dict]], int]


def approx_tokens(text: str) -> int:
    """Rough token count when no tokenizer is known: CJK characters count one each, other text
    one per whitespace-separated word (usage numbers stay plausible for any backend)."""
    cjk = sum(1 for ch in text if "\u3400" <= ch <= "\u9fff")
    words = len("".join(" " if "\u3400" <= ch <= "\u9fff" else ch for ch in text).split())
    return cjk + words


def counters_from_tokenizer(tokenizer: Any) -> tuple[TokenCounter, PromptCounter]:
    """Exact usage counters from a HF tokenizer: completion text, and prompt via its chat template."""
    def count_text(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt(messages: list[dict]) -> int:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
                ids = ids["input_ids"]
            return len(ids)
        return sum(count_text(m.get("content", "")) for m in messages)

    return count_text, count_prompt


class _Batcher:
    """Groups waiting requests with equal sampling parameters into one blocking ``generate`` call."""

    def __init__(self, backend: Any, max_batch: int):
        self.backend, self.max_batch = backend, max(1, max_batch)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def submit(self, conversation: list[dict], params: tuple) -> str:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((conversation, params, fut))
        return await fut

    async def run(self) -> None:
        carry = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            batch = [first]
            while len(batch) < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                if item[1] != first[1]:  # different parameters: next batch starts with it
                    carry = item
                    break
                batch.append(item)
            max_new, temperature, top_p, stop, seed = first[1]
            try:
                outs = await asyncio.to_thread(
                    self.backend.generate, [b[0] for b in batch], max_new_tokens=max_new,
                    temperature=temperature, top_p=top_p, stop=list(stop) if stop else None, seed=seed)
                if len(outs) != len(batch):
                    raise RuntimeError(f"backend returned {len(outs)} outputs for {len(batch)} prompts")
                for (_, _, fut), out in zip(batch, outs, strict=True):
                    if not fut.done():
                        fut.set_result(out)
            except Exception as e:  # a failed generate fails its requests, never the server
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)


def _parse_params(body: dict, default_max_tokens: int, max_tokens_limit: int) -> tuple | str:
    """Validate sampling parameters; returns a hashable tuple or an error message."""
    if body.get("stream"):
        return "streaming is not supported by this server; send stream=false"
    if body.get("n", 1) not in (1, None):
        return "only n=1 is supported"
    # ``is None``, not ``or``: an explicit 0 is an error, never a silent default
    max_tokens = body.get("max_completion_tokens")
    max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        return f"max_tokens must be an integer in 1..{max_tokens_limit}"
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    top_p = body.get("top_p")
    top_p = 1.0 if top_p is None else top_p
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        return "temperature must be a number in [0, 2]"
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        return "top_p must be a number in (0, 1]"
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
                             or len(stop) > 4):
        return "stop must be a string or a list of at most 4 strings"
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return "seed must be an integer"
    return (max_tokens, float(temperature), float(top_p), tuple(stop) if stop else None, seed)


def _apply_stop(text: str, stop: tuple | None) -> tuple[str, bool]:
    """Cut at the first stop string (backends may overshoot); OpenAI never returns the stop text."""
    if not stop:
        return text, False
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def build_serve_app(backend: Any, *, model_name: str, api_key: str | None = None, max_batch: int = 8,
                    count_tokens: TokenCounter | None = None, count_prompt_tokens: PromptCounter | None = None,
                    default_max_tokens: int = 256, max_tokens_limit: int = 4096,
                    max_body_bytes: int = MAX_BODY_BYTES):
    """Create the FastAPI app serving ``backend`` under the model id ``model_name``.

    ``api_key``: when set, every ``/v1`` route and ``/openapi.json`` require
    ``Authorization: Bearer <api_key>``. Bodies over ``max_body_bytes`` get 413.
    ``count_tokens``/``count_prompt_tokens`` give exact usage (see :func:`counters_from_tokenizer`);
    without them usage is estimated by :func:`approx_tokens`.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    count_text = count_tokens or approx_tokens
    count_prompt = count_prompt_tokens or (lambda msgs: sum(approx_tokens(m["content"]) for m in msgs))
    created = int(time.time())
    batcher = _Batcher(backend, max_batch)

    @asynccontextmanager
    async def lifespan(app):
        batcher.task = asyncio.create_task(batcher.run())
        yield
        batcher.task.cancel()

    app = FastAPI(title="mixtune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    protect_openapi(app, api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "mixtune"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        body, bad = await json_body(request, max_body_bytes)
        if bad is not None:
            return bad
        problem = validate_chat_body(body)
        if problem:
            return error_response(400, problem, param=chat_problem_param(problem))
        if body.get("model") not in (None, model_name):
            return error_response(404, f"The model '{body.get('model')}' does not exist; this server "
                                  f"serves '{model_name}'", param="model", code="model_not_found")
        params = _parse_params(body, default_max_tokens, max_tokens_limit)
        if isinstance(params, str):
            return error_response(400, params)
        conv = [{"role": m["role"], "content": content_text(m.get("content"))} for m in body["messages"]]
        try:
            text = await batcher.submit(conv, params)
        except Exception as e:
            return error_response(500, f"generation failed: {type(e).__name__}: {e}")
        text, stopped = _apply_stop(text, params[3])
        completion_tokens = count_text(text)
        prompt_tokens = count_prompt(conv)
        finish = "stop" if stopped or completion_tokens < params[0] else "length"
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    return app
