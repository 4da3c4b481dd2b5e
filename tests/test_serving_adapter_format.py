"""The LoRA adapters the stages save have the format vLLM's LoRA loader reads (the README's claim).

vLLM (``--enable-lora --lora-modules NAME=DIR``) reads ``adapter_config.json`` (``r``, ``lora_alpha``,
``target_modules``; no DoRA, no ``modules_to_save``) and ``adapter_model.safetensors`` whose keys are
peft's ``base_model.model.<module>.lora_A|lora_B.weight``, on top of the base model it serves. vLLM itself
needs a GPU, so the format is checked field by field and the adapter is loaded with peft's own loader
onto the recorded base, the way vLLM pairs them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixtune.config import PipelineConfig
from mixtune.model.tiny import make_test_model
from mixtune.train.stage1 import train_stage1
from mixtune.train.stage2 import train_stage2

pytestmark = pytest.mark.integration
KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def _check_vllm_format(adapter: Path, r: int, alpha: int) -> Path:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == r and cfg["lora_alpha"] == alpha
    assert not cfg.get("use_dora") and not cfg.get("modules_to_save")  # vLLM loads neither
    targets = set(cfg["target_modules"])
    base = Path(cfg["base_model_name_or_path"])
    assert (base / "config.json").is_file()  # the folder vLLM serves, with the adapter on top
    base_model = AutoModelForCausalLM.from_pretrained(str(base))
    names = {n for n, _ in base_model.named_modules()}
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    assert keys
    seen = set()
    for k in keys:
        m = KEY.match(k)
        assert m, f"not a peft LoRA weight name: {k}"
        module = m["module"]
        assert module in names and module.rsplit(".", 1)[-1] in targets
        layer = base_model.get_submodule(module)
        want = (r, layer.in_features) if m["ab"] == "A" else (layer.out_features, r)
        assert shapes[k] == want
        seen.add((module, m["ab"]))
    assert {mod for mod, _ in seen} == {mod for mod, ab in seen if ab == "A"} == {mod for mod, ab in seen if ab == "B"}
    return base


def test_stage_adapters_have_the_vllm_lora_format_and_load_with_peft(tmp_path):
    from helpers.synth import corpus, make_samples

    samples = make_samples(n_per_task=6, twins=False)
    base = make_test_model(tmp_path / "base", corpus(samples))
    quick = {"batch_size": 4, "precision": "fp32", "warmup_steps": 0, "eval_every": 1000, "checkpoint_every": 1000,
             "lr_schedule": "constant", "clip": {"policy": "none"}, "steps": 3, "lr": 5e-3}
    cfg = PipelineConfig.model_validate({
        "model": {"finetune": "lora", "lora": {"r": 4, "alpha": 8}},
        "stage1": {**quick, "consistency": {"enabled": False}, "adversarial": {"enabled": False}},
        "stage2": {**quick, "context_orchestration": False}})
    s1 = train_stage1(cfg, samples, str(base), tmp_path / "stage1", progress=False)
    s2 = train_stage2(cfg, samples, str(s1), tmp_path / "stage2", business_value={}, groups={}, families={},
                      chains=[], rejection={}, progress=False)

    assert _check_vllm_format(Path(s1), 4, 8) == base
    stage2_base = _check_vllm_format(Path(s2), 4, 8)
    assert stage2_base == tmp_path / "stage2" / "base"  # base + stage 1 merged: vLLM serves this folder

    tok = AutoTokenizer.from_pretrained(str(s2))
    x = tok.apply_chat_template([{"role": "user", "content": "计算流动性覆盖率"}], add_generation_prompt=True,
                                return_tensors="pt", return_dict=True)
    plain = AutoModelForCausalLM.from_pretrained(str(stage2_base))
    with torch.no_grad():
        before = plain(**x).logits
        lora = PeftModel.from_pretrained(plain, str(s2))
        after = lora(**x).logits
        merged = lora.merge_and_unload()(**x).logits
    assert (after - before).abs().max().item() > 1e-4  # the adapter's weights were read and act
    assert (after - merged).abs().max().item() <= 1e-4
