"""eval.backend: openai — the pipeline's eval step against `mixtune serve` (as a user would run vLLM) gives
the same records as loading the model locally, for greedy decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mixtune.config import load_config
from mixtune.errors import ConfigError, MixtuneError
from mixtune.eval.backends import HFBackend, OpenAIBackend
from mixtune.model.tiny import make_test_model
from mixtune.pipeline import eval_backend, load_samples, step_data, step_eval
from mixtune.release.serve import build_serve_app, counters_from_tokenizer
from mixtune.release.server import ServerThread
from mixtune.rundir import RunDir

DEMO = Path(__file__).resolve().parents[1] / "examples" / "finance_risk" / "pipeline.yaml"
# batch size 1 on both sides: no padding, so local and served greedy decoding are bit-identical
SMALL = ["data.n_per_task=12", "eval.models=[stage2]", "eval.samples_per_task=1", "eval.experience_per_task=1",
         "eval.max_new_tokens=12", "eval.batch_size=1", "eval.device=cpu", "review.live=false"]


def _noisy_model(path: Path, texts: list[str]) -> Path:
    """A tiny model with large random weights: its greedy answers differ by prompt (an untrained one
    answers newlines to everything, which would make the comparison below vacuous)."""
    make_test_model(path, texts)
    m = AutoModelForCausalLM.from_pretrained(str(path))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    m.save_pretrained(str(path))
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pipeline_eval_through_an_endpoint_matches_local(tmp_path, monkeypatch):
    cfg = load_config(DEMO, [*SMALL, f"output_dir={tmp_path / 'runs'}"])
    rd = RunDir(cfg)
    step_data(cfg, rd)
    samples = load_samples(rd)
    model = _noisy_model(tmp_path / "model", [m.content for s in samples for m in s.messages])

    step_eval(cfg, rd, samples, {"stage2": str(model)})
    local = _records(rd.path / "eval" / "stage2.jsonl")
    n_test = len({r["sample_id"] for r in local if r["layer"] == "business"})
    assert n_test >= 10 and any(r["layer"] == "experience" for r in local)
    answers = {r["prediction"] for r in local}
    assert len(answers) >= n_test // 2 and all(a.strip() for a in answers)  # real, varied text

    backend = HFBackend(model, batch_size=1)
    count_text, count_prompt = counters_from_tokenizer(backend.tokenizer)
    app = build_serve_app(backend, model_name="cand", api_key="sk-x", max_batch=1, count_tokens=count_text,
                          count_prompt_tokens=count_prompt)
    monkeypatch.setenv("EVAL_KEY", "sk-x")
    with ServerThread(app) as srv:
        # no model name: the one the server lists is evaluated
        remote_cfg = load_config(DEMO, [*SMALL, f"output_dir={tmp_path / 'runs'}", "name=remote",
                                        "eval.backend=openai",
                                        f"eval.endpoints={{stage2: {{url: '{srv.url}', api_key_env: EVAL_KEY}}}}"])
        remote_rd = RunDir(remote_cfg)
        step_eval(remote_cfg, remote_rd, samples, {"stage2": "/nonexistent/never/loaded"})
    remote = _records(remote_rd.path / "eval" / "stage2.jsonl")
    assert remote == local  # same prompts, same greedy answers, same scores, every sample and layer


def test_openai_backend_config_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="backend openai needs eval.endpoints for base, stage1"):
        load_config(DEMO, ["eval.backend=openai", "eval.endpoints={stage2: {url: 'http://127.0.0.1:9'}}"])
    with pytest.raises(ConfigError, match=r"eval\.endpoints\.stage2\.url"):
        load_config(DEMO, ["eval.backend=openai", "eval.models=[stage2]", "eval.endpoints={stage2: {url: ftp://x}}"])
    cfg = load_config(DEMO, ["eval.backend=openai", "eval.models=[stage2]",
                             "eval.endpoints={stage2: {url: 'http://127.0.0.1:9', model: m, api_key_env: NO_SUCH_KEY}}"])
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY is not set") as e:
        eval_backend(cfg, "stage2", "unused")
    assert e.value.where == "eval.endpoints.stage2.api_key_env"
    monkeypatch.setenv("NO_SUCH_KEY", "k")
    b = eval_backend(cfg, "stage2", "unused")
    assert isinstance(b, OpenAIBackend) and b.model == "m" and b.url == "http://127.0.0.1:9/v1/chat/completions"
    b.close()
    # without a model name the server is asked; a dead server is a clear error naming the URL
    with pytest.raises(MixtuneError, match="cannot list the served models") as e:
        OpenAIBackend("http://127.0.0.1:9", model=None)
    assert e.value.where == "http://127.0.0.1:9/v1/models"
