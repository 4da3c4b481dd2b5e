"""Two-stage stacking: stage 2's saved model, loaded with plain peft/transformers, holds stage 1's changes.

Stage 1 trains with a high learning rate so its model differs clearly from the base; stage 2 then
runs with lr 0, so its saved model must reproduce the stage-1 model exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixtune.config import PipelineConfig
from mixtune.model.tiny import make_test_model
from mixtune.train.stage1 import train_stage1
from mixtune.train.stage2 import train_stage2

pytestmark = pytest.mark.integration
PROMPTS = ["计算流动性覆盖率\n数据12和34", "解释信用利差\n数据56和78"]


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.mark.parametrize(("finetune", "loader", "lr"), [("lora", AutoPeftModelForCausalLM, 0.05),
                                                          ("full", AutoModelForCausalLM, 0.01)])
def test_stage2_at_lr0_loads_as_the_stage1_model(tmp_path, capsys, finetune, loader, lr):
    from helpers.synth import corpus, make_samples

    samples = make_samples(twins=False)
    base = make_test_model(tmp_path / "base", corpus(samples))
    quick = {"batch_size": 8, "precision": "fp32", "warmup_steps": 0, "eval_every": 1000, "checkpoint_every": 1000,
             "lr_schedule": "constant", "clip": {"policy": "none"}}
    cfg = PipelineConfig.model_validate({
        "model": {"finetune": finetune, "lora": {"r": 8, "alpha": 16}},
        "stage1": {**quick, "steps": 8, "lr": lr, "consistency": {"enabled": False},
                   "adversarial": {"enabled": False}},
        "stage2": {**quick, "steps": 2, "lr": 0.0, "context_orchestration": False}})
    s1 = train_stage1(cfg, samples, str(base), tmp_path / "stage1", progress=False)
    s2 = train_stage2(cfg, samples, str(s1), tmp_path / "stage2", business_value={}, groups={}, families={},
                      chains=[], rejection={}, progress=False)

    err = capsys.readouterr().err
    # lr 0.05 is far outside the usual LoRA range: a warning, not an error
    assert ("stage1.lr" in err and "LoRA range" in err) == (finetune == "lora")
    tok = AutoTokenizer.from_pretrained(str(s2))
    tok.pad_token = tok.pad_token or tok.eos_token
    stage2 = _logits(loader.from_pretrained(str(s2)), tok)
    stage1 = _logits(loader.from_pretrained(str(s1)), tok)
    plain = _logits(AutoModelForCausalLM.from_pretrained(str(base)), tok)
    assert (stage1 - plain).abs().max().item() > 0.5  # stage 1 changed the model a lot
    assert (stage2 - stage1).abs().max().item() <= 1e-4
    if finetune == "lora":
        recorded = Path(json.loads((s2 / "adapter_config.json").read_text())["base_model_name_or_path"])
        assert recorded == tmp_path / "stage2" / "base"  # the merged stage-1 model, not the original base
        assert (recorded / "config.json").is_file()
