"""Generation backends: one ``generate`` interface over a local HF model or an OpenAI endpoint.

Every evaluator in :mod:`mixtune.eval` talks to a :class:`Backend`, so the same matrix can be
computed for a checkpoint on disk (:class:`HFBackend`) or for a model served elsewhere by vLLM,
the mixtune gateway or any OpenAI-compatible server (:class:`OpenAIBackend`).

Interface::

    backend.generate(conversations, *, max_new_tokens, temperature=0.0, top_p=1.0,
                     stop=None, seed=None) -> list[str]

``conversations`` is a list of chat message lists (``{"role", "content"}``); the result holds one
completion per conversation, in the input order, with any stop string (and what follows) cut off.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx

from mixtune.errors import CheckpointError, MixtuneError
from mixtune.eval.devices import resolve_device, resolve_dtype

Conversation = list[dict]


@runtime_checkable
class Backend(Protocol):
    """Anything that turns chat conversations into completions."""

    name: str

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None) -> list[str]:
        ...


def truncate_at_stop(text: str, stop: list[str] | None) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop string is dropped)."""
    if not stop:
        return text
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut]


# --------------------------------------------------------------------------------------------- HF


class HFBackend:
    """Batched local generation with ``transformers`` (full model dir or PEFT adapter dir).

    Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``),
    sorted by token length so each batch pads little, left-padded (decoder-only models continue
    from the right edge) and generated greedily when ``temperature == 0``, sampled otherwise.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype: str = "fp32", batch_size: int = 32,
                 device_where: str = "eval.device", dtype_where: str = "eval.dtype"):
        import torch  # why: torch/transformers/peft load only with a local model (endpoint evals skip them)

        if batch_size < 1:
            raise MixtuneError("batch_size must be >= 1", where="eval.batch_size")
        # "auto" follows the accelerator; the *_where names say which setting a refusal is about.
        device = resolve_device(device, where=device_where)
        dtype = resolve_dtype(dtype, device, where=dtype_where)
        self.path = Path(path)
        self.name = self.path.name
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.is_adapter = (self.path / "adapter_config.json").is_file()
        self._check_dir()
        self.tokenizer = self._load_tokenizer()
        self.model = self._load_model(torch_dtype).to(device)
        self.model.eval()

    @classmethod
    def from_model(cls, model, tokenizer, *, device="cpu", batch_size: int = 32, name: str = "in-training"):
        """A backend over an already loaded model (e.g. the one stage 2 is training), nothing reloaded.

        The tokenizer is copied: generation pads and truncates on the left, training must not.
        """
        import copy

        self = cls.__new__(cls)
        self.path, self.name, self.device, self.batch_size = Path(name), name, device, batch_size
        self.is_adapter = False
        self.tokenizer = copy.deepcopy(tokenizer)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model
        return self

    # -- loading ---------------------------------------------------------------------------------
    def _check_dir(self) -> None:
        if not self.path.exists():
            raise CheckpointError("model path does not exist", where=str(self.path))
        if not self.path.is_dir():
            raise CheckpointError("model path is not a directory (expected an HF model or adapter dir)",
                                  where=str(self.path))
        if not self.is_adapter and not (self.path / "config.json").is_file():
            raise CheckpointError("neither config.json (HF model) nor adapter_config.json (PEFT adapter) found",
                                  where=str(self.path))

    def _adapter_base(self) -> str | None:
        try:
            cfg = json.loads((self.path / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"unreadable adapter_config.json: {e}", where=str(self.path)) from None
        return cfg.get("base_model_name_or_path")

    def _load_tokenizer(self):
        from transformers import AutoTokenizer  # why: heavy, local models only (see __init__)

        # Adapters are usually saved with their tokenizer; fall back to the base model's if not.
        candidates = [str(self.path)]
        if self.is_adapter and (base := self._adapter_base()):
            candidates.append(base)
        last: Exception | None = None
        for c in candidates:
            try:
                tok = AutoTokenizer.from_pretrained(c)
                break
            except (OSError, ValueError, TypeError) as e:
                last = e
        else:
            raise CheckpointError(f"cannot load tokenizer: {last}", where=str(self.path))
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def _load_model(self, torch_dtype):
        try:
            if self.is_adapter:
                from peft import AutoPeftModelForCausalLM  # why: heavy, adapters only

                # Merged for generation: an unmerged adapter adds two small matmuls to every linear
                # layer at every decoding step (SmolLM2-135M, CPU, bf16, batch 64: 149 vs 181 new tok/s).
                return AutoPeftModelForCausalLM.from_pretrained(str(self.path), dtype=torch_dtype).merge_and_unload()
            from transformers import AutoModelForCausalLM  # why: heavy, local models only

            return AutoModelForCausalLM.from_pretrained(str(self.path), dtype=torch_dtype)
        except (OSError, ValueError, RuntimeError, KeyError, json.JSONDecodeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"cannot load model ({type(e).__name__}): {msg}", where=str(self.path)) from None

    # -- generation ------------------------------------------------------------------------------
    def render(self, conversation: Conversation) -> str:
        """The prompt text for one conversation (chat template + generation prompt)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        # Base models without a template: a plain transcript ending where the answer starts.
        lines = [f"{m['role']}: {m['content']}" for m in conversation]
        return "\n".join(lines) + "\nassistant: "

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None) -> list[str]:
        """Generate one completion per conversation (see module docstring)."""
        import torch  # why: heavy, local models only (see __init__)

        if not conversations:
            return []
        prompts = [self.render(c) for c in conversations]
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        # Longest first: similar lengths share a batch (less padding) and an OOM shows up at once.
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        out: list[str] = [""] * len(prompts)
        # Sampling draws from a forked RNG: evaluating mid-training must not shift the training
        # run's random stream (resume and ablations compare runs with and without evaluation).
        devices = [] if str(self.device).startswith("cpu") else None
        with torch.random.fork_rng(devices=devices, enabled=temperature > 0):
            if seed is not None and temperature > 0:
                torch.manual_seed(seed)
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                texts = self._generate_batch([prompts[i] for i in idx], max_new_tokens, temperature, top_p, stop)
                for i, t in zip(idx, texts, strict=True):
                    out[i] = t
        return out

    def _encode(self, prompts: list[str], limit: int | None) -> dict:
        """Token ids, left-padded and left-truncated by hand.

        A fast tokenizer's padding/truncation settings are shared mutable state: a server that
        counts usage tokens on another thread while a batch is encoded (``mixtune serve``) could
        switch padding off mid-call ("Unable to create tensor ..."). Plain per-prompt encoding does
        not depend on that state. Over-long prompts keep their end (the question and the
        generation prompt) rather than running past the model's positions.
        """
        import torch  # why: heavy, local models only (see __init__)

        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if limit is not None:
            ids = [x[-limit:] for x in ids]
        width = max(1, max(len(x) for x in ids))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in ids], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _prompt_limit(self, max_new_tokens: int) -> int | None:
        cfg = getattr(self.model, "config", None)
        n = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
        return max(1, n - max_new_tokens) if isinstance(n, int) and n > 0 else None

    def _generate_batch(self, prompts: list[str], max_new_tokens: int, temperature: float, top_p: float,
                        stop: list[str] | None) -> list[str]:
        import torch  # why: heavy, local models only (see __init__)
        from transformers import StoppingCriteriaList

        enc = self._encode(prompts, self._prompt_limit(max_new_tokens))
        prompt_len = enc["input_ids"].shape[1]
        kwargs: dict = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(self.tokenizer, stop, prompt_len)])
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kwargs)
        texts = self.tokenizer.batch_decode(gen[:, prompt_len:], skip_special_tokens=True)
        return [truncate_at_stop(t, stop) for t in texts]


@functools.cache
def _stop_criteria_class():
    """Built on first use so importing this module does not import transformers."""
    from transformers import StoppingCriteria

    class StopOnStrings(StoppingCriteria):
        """Stops a row once its generated tail contains a stop string (rows finish independently)."""

        def __init__(self, tokenizer, stop: list[str], prompt_len: int):
            self.tokenizer, self.stop, self.prompt_len = tokenizer, [s for s in stop if s], prompt_len
            # A stop string of n chars spans at most ~n byte-level tokens; decode a small tail only.
            self.window = 4 * max((len(s) for s in self.stop), default=1) + 8

        def __call__(self, input_ids, scores, **kwargs):
            import torch  # why: heavy, local models only (see HFBackend.__init__)

            tail = input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.window):]
            texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)

    return StopOnStrings


def _StopOnStrings(tokenizer, stop: list[str], prompt_len: int):
    return _stop_criteria_class()(tokenizer, stop, prompt_len)


# ----------------------------------------------------------------------------------------- OpenAI


class OpenAIBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, the mixtune gateway, ...).

    Requests run on ``concurrency`` threads; 5xx, 429, timeouts and connection errors are retried
    ``retries`` times with exponential backoff; any other failure raises :class:`MixtuneError`
    naming the endpoint and the server's reply.
    """

    RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None, concurrency: int = 4,
                 timeout: float = 30, retries: int = 2, backoff: float = 0.5,
                 transport=None, sleep: Callable[[float], None] = time.sleep):
        if concurrency < 1:
            raise MixtuneError("concurrency must be >= 1", where="eval.concurrency")
        base = base_url.rstrip("/")
        # Accept both "http://host:port" and "http://host:port/v1".
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.url = self.base + "/chat/completions"
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=transport)
        # No model name: the one the server lists (a vLLM or `mixtune serve` serving a single model).
        self.model = model or self._served_model()
        self.name = self.model

    def _served_model(self) -> str:
        url = self.base + "/models"
        try:
            r = self._client.get(url)
            ids = [m["id"] for m in r.json()["data"]] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise MixtuneError(f"cannot list the served models ({type(e).__name__}: {e}); name the model",
                               where=url) from None
        if ids is None:
            raise MixtuneError(f"cannot list the served models (HTTP {r.status_code}: {r.text[:200]}); "
                               "name the model", where=url)
        if len(ids) != 1:
            raise MixtuneError(f"the server lists {len(ids)} models {ids[:5]}; name the one to evaluate",
                               where=url)
        return ids[0]

    def close(self) -> None:
        self._client.close()

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None) -> list[str]:
        """Generate one completion per conversation, ``concurrency`` requests in flight."""
        def one(conv: Conversation) -> str:
            body = {"model": self.model, "messages": conv, "max_tokens": max_new_tokens,
                    "temperature": temperature, "top_p": top_p}
            if stop:
                body["stop"] = stop
            if seed is not None:
                body["seed"] = seed
            return truncate_at_stop(self._post(body), stop)

        if self.concurrency == 1 or len(conversations) <= 1:
            return [one(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, conversations))  # map keeps input order

    def _post(self, body: dict) -> str:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as e:
                last = f"connection failed: {e}"
                continue
            if r.status_code in self.RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code != 200:
                # 4xx other than 408/429 is the caller's fault (bad key, unknown model): no retry.
                raise MixtuneError(f"HTTP {r.status_code}: {r.text[:300]}", where=self.url)
            try:
                return r.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise MixtuneError(f"not an OpenAI chat completion response: {r.text[:300]}",
                                   where=self.url) from None
        raise MixtuneError(f"request failed after {self.retries + 1} attempts ({last})", where=self.url)


def load_backend(spec: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 32,
                 api_key: str | None = None, model: str | None = None) -> Backend:
    """A backend from a string: an ``http(s)://`` URL → :class:`OpenAIBackend`, else a model dir."""
    if spec.startswith(("http://", "https://")):
        if not model:
            raise MixtuneError("an endpoint URL needs a served model name (--served-model)", where=spec)
        return OpenAIBackend(spec, api_key=api_key, model=model)
    return HFBackend(spec, device=device, dtype=dtype, batch_size=batch_size, device_where="--device",
                     dtype_where="--dtype")
