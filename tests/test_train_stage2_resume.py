"""Stage 2 resume: the mixing log is rewound to the checkpoint so replayed cycles are not duplicated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixtune.config import PipelineConfig
from mixtune.mixing.log import MixingLog
from mixtune.model.tiny import make_test_model
from mixtune.train.stage2 import train_stage2

pytestmark = pytest.mark.integration
GROUPS = {"calc_lcr": "logic", "concept_spread": "style", "pii_mask": "safety"}


class Killed(Exception):
    """Stands in for a SIGKILL: the run stops between two writes, nothing is cleaned up."""


def _cfg() -> PipelineConfig:
    return PipelineConfig.model_validate({"seed": 1, "stage2": {
        "steps": 8, "batch_size": 6, "eval_every": 2, "checkpoint_every": 4, "precision": "fp32",
        "context_orchestration": False, "keep_checkpoints": 3,
        # both on: resume must restore the curriculum's and the modulation's state too
        "curriculum": {"enabled": True}, "modulation": {"enabled": True}}})


def _train(samples, base: Path, out: Path):
    return train_stage2(_cfg(), samples, str(base), out, business_value={}, groups=GROUPS,
                        families={t: t.split("_")[0] for t in GROUPS}, chains=[], rejection={},
                        progress=False)


def _rows(out: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines() if x.strip()]


def test_resume_after_kill_past_a_cycle_does_not_duplicate_mixing_log_rows(tmp_path, monkeypatch):
    from helpers.synth import corpus, make_samples

    samples = make_samples(twins=False)
    base = make_test_model(tmp_path / "base", corpus(samples))
    _train(samples, base, tmp_path / "ref")

    append = MixingLog.append

    def append_then_die(self, record):
        append(self, record)
        if record["cycle"] == 3:  # step 6: after the step-4 checkpoint, before the step-8 one
            raise Killed

    out = tmp_path / "killed"
    monkeypatch.setattr(MixingLog, "append", append_then_die)
    with pytest.raises(Killed):
        _train(samples, base, out)
    assert [r["cycle"] for r in _rows(out, "mixing_log.jsonl")] == [1, 2, 3]
    monkeypatch.setattr(MixingLog, "append", append)

    _train(samples, base, out)
    cycles = [r["cycle"] for r in _rows(out, "mixing_log.jsonl")]
    assert cycles == [1, 2, 3, 4], cycles
    # The replayed cycles take the same decisions as the uninterrupted run.
    ref = _rows(tmp_path / "ref", "mixing_log.jsonl")
    got = _rows(out, "mixing_log.jsonl")
    assert [r["weights"] for r in got] == [r["weights"] for r in ref]
    assert [r["step"] for r in _rows(out, "metrics.jsonl")] == list(range(1, 9))
    # Exact resume, style-EMA buffers included (concept_spread is a style task here).
    assert "style" in {r["group"] for r in _rows(out, "metrics.jsonl")}
    a = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_style_ema_buffers_are_checkpointed(tmp_path):
    from helpers.synth import corpus, make_samples

    samples = make_samples(twins=False)
    base = make_test_model(tmp_path / "base", corpus(samples))
    _train(samples, base, tmp_path / "run")
    last = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    styled = sum(1 for r in _rows(tmp_path / "run", "metrics.jsonl") if r["group"] == "style")
    assert state["modulation"] == {"method": "groups", "style_steps": styled} and styled > 0
    buffers = torch.load(last / "extra.pt", weights_only=True)["style_ema"]
    assert buffers and any(b.abs().sum() > 0 for b in buffers)
