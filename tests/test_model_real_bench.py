"""The real-model benchmark and benchmarks/gpu_check.sh, CPU-sized (tiny GGUF written on the spot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers.tiny_gguf import build
from transformers import AutoModelForCausalLM

from mixtune.bench.real_model import flops_per_token
from mixtune.model.sources import resolve_model

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("trl_ratio", "tokens_per_s", "trl_tokens_per_s", "peak_fraction_bf16", "gen_tokens_per_s",
        "gen_bf16_tokens_per_s")


def test_flop_count_matches_the_model(tmp_path):
    path, _ = build(tmp_path, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    folder = resolve_model(f"gguf:{path}", cache_dir=tmp_path / "c")
    model = AutoModelForCausalLM.from_pretrained(folder)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # lm_head tied
    per_full, counts = flops_per_token(folder, "full", seq=100.0)
    assert counts["params_matmul"] == matmul
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    per_lora, counts = flops_per_token(folder, "lora", seq=100.0)
    assert counts["params_lora"] == trainable
    attn = 6 * 2 * 32 * 100.0
    assert per_full == 6 * matmul + attn and per_lora == 4 * matmul + 6 * trainable + attn


def test_gpu_check_dry_run_prints_the_plan_and_runs_the_cpu_sized_version(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "gpu_check plan (dry run: CPU-sized)" in res.stdout
    for step in ("--finetune lora", "--finetune full", "mixtune run --fresh", "summary ->"):
        assert step in res.stdout
    for ft in ("lora", "full"):
        data = json.loads((out / f"real_model_{ft}.json").read_text())
        assert data["finetune"] == ft and data["device"] == "cpu"
        assert all(data[k] > 0 for k in KEYS), {k: data[k] for k in KEYS}
        assert data["peak_rss_mib"] > 0 and data["trl_peak_rss_mib"] > 0
    summary = json.loads((out / "runs" / "gpu_check" / "eval" / "summary.json").read_text())
    assert set(summary) == {"base", "stage1", "stage2", "ifeval"} and summary["stage2"]  # + the IFEval block
    assert summary["ifeval"]["stage2"]["n"] == 2
    md = (out / "summary.md").read_text()
    assert "GPU check: CPU (dry run)" in md and "| lora |" in md and "| full |" in md
