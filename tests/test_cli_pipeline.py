"""The real CLI end to end on a shortened demo config, plus user-error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "finance_risk" / "pipeline.yaml"
pytestmark = pytest.mark.integration

QUICK = ["data.n_per_task=12", "stage1.steps=6", "stage1.eval_every=3", "stage1.checkpoint_every=3",
         "stage2.steps=6", "stage2.eval_every=2", "stage2.checkpoint_every=3", "eval.samples_per_task=1",
         "eval.max_new_tokens=8", "eval.session_turns=2", "eval.experience_scripts=[contradiction,vague]",
         "gates.bootstrap_samples=200",
         "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1",
         "model.tiny.vocab_size=600"]


def mixtune(*args, cwd=ROOT, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "mixtune", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = mixtune("run", str(DEMO), *QUICK, f"output_dir={out}", "name=quick")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "quick", res


def test_run_writes_the_documented_layout(run):
    rd, _ = run
    for rel in ("config.resolved.yaml", "data/samples.parquet", "data/quarantine.jsonl", "data/rule_report.json",
                "stage1/model/config.json", "stage1/metrics.jsonl", "stage2/model/config.json",
                "stage2/metrics.jsonl", "mixing_log.jsonl", "eval/matrix.json", "eval/summary.json",
                "eval/base.jsonl", "eval/stage2.jsonl", "gates.jsonl", "registry.json", "report.html"):
        assert (rd / rel).is_file(), rel
    summary = json.loads((rd / "eval" / "summary.json").read_text())
    assert set(summary) == {"base", "stage1", "stage2", "ifeval"}  # the demo evaluates 5 IFEval prompts
    fams = set(summary["stage2"])
    assert {"concept", "calculation", "attribution", "compliance", "history"} <= fams and "ifeval" not in fams
    assert all(0.0 <= v <= 1.0 for m in ("base", "stage1", "stage2") for v in summary[m].values())
    ife = summary["ifeval"]
    assert set(ife) == {"base", "stage1", "stage2"}
    for agg in ife.values():  # the same seeded, stratified subset for every model
        assert set(agg) == {"prompt_strict", "prompt_loose", "inst_strict", "inst_loose", "n", "instructions",
                            "instruction_types"}
        assert agg["n"] == 5 and agg["instruction_types"] == ife["base"]["instruction_types"]
        assert len(agg["instruction_types"]) >= 5 and all(0.0 <= agg[k] <= 1.0 for k in ("prompt_loose", "inst_loose"))
    ids = {m: sorted(json.loads(x)["sample_id"] for x in (rd / "eval" / f"{m}.jsonl").read_text().splitlines()
                     if json.loads(x)["family"] == "ifeval") for m in ("base", "stage1", "stage2")}
    assert len(ids["base"]) == 5 and ids["base"] == ids["stage1"] == ids["stage2"]
    sessions = [r for m in ("base", "stage2") for r in map(json.loads, (rd / "eval" / f"{m}.jsonl").read_text().splitlines())
                if r["layer"] == "experience" and r["detail"]["kind"] == "session"]
    # eval.session_turns bounds the adaptive simulated-user sessions (default 6)
    assert sessions and max(len(r["detail"]["turn_scores"]) for r in sessions) == 2
    scripted = {r["sample_id"].rsplit("#", 1)[1] for m in ("base", "stage2")
                for r in map(json.loads, (rd / "eval" / f"{m}.jsonl").read_text().splitlines())
                if r["layer"] == "experience" and r["detail"]["kind"] != "session"}
    assert scripted == {"contradiction", "vague"}  # eval.experience_scripts picks the stress dialogues
    rec = json.loads((rd / "stage1" / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("step", "lr", "loss", "loss_ce", "loss_consistency", "loss_adversarial", "grad_norm",
                "clip_threshold", "clipped", "tokens"):
        assert key in rec
    cycle = json.loads((rd / "mixing_log.jsonl").read_text().splitlines()[-1])
    for key in ("cycle", "step", "scores", "heat", "weights", "levels", "promotions", "modulation"):
        assert key in cycle
    html = (rd / "report.html").read_text()
    assert "data:image/png;base64" in html and "stage2" in html and "Gates" in html
    assert "Instruction following (IFEval" in html and "stage2 − base" in html
    gates = [json.loads(x) for x in (rd / "gates.jsonl").read_text().splitlines()]
    assert gates and gates[0]["gate"] == "validate" and gates[0]["status"] in ("pass", "fail", "inconclusive")


def test_rerun_skips_finished_steps_and_refuses_changed_config(run):
    rd, _ = run
    before = (rd / "stage2" / "model" / "model.safetensors").stat().st_mtime
    again = mixtune("run", str(DEMO), *QUICK, f"output_dir={rd.parent}", "name=quick")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (rd / "stage2" / "model" / "model.safetensors").stat().st_mtime == before
    changed = mixtune("run", str(DEMO), *QUICK, f"output_dir={rd.parent}", "name=quick", "stage2.lr=0.1")
    assert changed.returncode == 2
    assert "different run" in changed.stderr and "stage2.lr" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_trained_model_loads_in_a_fresh_process_with_plain_transformers(run):
    rd, _ = run
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "p = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(p); m = AutoModelForCausalLM.from_pretrained(p)\n"
        "x = tok.apply_chat_template([{'role': 'user', 'content': '请解释什么是信用利差'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)\n"
        "y = m.generate(**x, max_new_tokens=8, do_sample=False)\n"
        "print('GEN', len(y[0]) > x['input_ids'].shape[1], repr(tok.decode(y[0][x['input_ids'].shape[1]:])))\n")
    res = subprocess.run([sys.executable, "-c", code, str(rd / "stage2" / "model")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "GEN True" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["run", "missing.yaml"], "file not found"),
    (["run", str(DEMO), "stage1.clip.strat=3"], "stage1.clip.strat: unknown key"),
    (["run", str(DEMO), "stage1.steps=abc"], "stage1.steps"),
    (["run", str(DEMO), "model.name_or_path=/nonexistent/model", "name=badmodel", "data.n_per_task=3"],
     "/nonexistent/model"),
])
def test_user_errors_are_one_clear_message(args, needle, tmp_path):
    res = mixtune(*args, f"output_dir={tmp_path}")
    assert res.returncode == 2, res.stdout[-1000:] + res.stderr[-1000:]
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
