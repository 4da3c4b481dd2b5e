"""LoRA fine-tuning saves a PEFT adapter that plain peft + transformers load in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixtune.model.tiny import make_test_model

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.integration


def test_lora_adapter_and_merged_copy_load_and_generate(tmp_path):
    from helpers.synth import corpus, make_samples

    base = make_test_model(tmp_path / "base", corpus(make_samples()))
    out = tmp_path / "lora"
    res = subprocess.run([sys.executable, str(HERE / "helpers" / "train_script.py"), str(base), str(out), "5",
                          "model.finetune=lora", "model.lora.r=4", "model.merge_adapter=true"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    adapter = out / "model"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and Path(cfg["base_model_name_or_path"]) == base
    assert (adapter / "adapter_model.safetensors").is_file()  # the file vLLM's LoRA loader reads
    code = (
        "import sys\n"
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "for p, cls in ((sys.argv[1], AutoPeftModelForCausalLM), (sys.argv[1] + '/merged', AutoModelForCausalLM)):\n"
        "    tok = AutoTokenizer.from_pretrained(p); m = cls.from_pretrained(p)\n"
        "    x = tok.apply_chat_template([{'role': 'user', 'content': '计算流动性覆盖率'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)\n"
        "    y = m.generate(**x, max_new_tokens=4, do_sample=False)\n"
        "    print('OK', y.shape[1] > x['input_ids'].shape[1])\n")
    res = subprocess.run([sys.executable, "-c", code, str(adapter)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("OK True") == 2
