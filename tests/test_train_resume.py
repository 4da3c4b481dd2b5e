"""Exact resume after a real SIGKILL, and identical loss curves under 2-process DDP (gloo, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixtune.model.tiny import make_test_model

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "helpers" / "train_script.py"
pytestmark = pytest.mark.integration


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _run(base, out, steps, *over, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), str(base), str(out), str(steps), *over],
                          env=env or _env(), capture_output=True, text=True, timeout=300)


def _steps(out: Path) -> list[dict]:
    p = out / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from helpers.synth import corpus, make_samples

    return make_test_model(tmp_path_factory.mktemp("base") / "m", corpus(make_samples()))


def test_sigkill_then_resume_reaches_identical_weights(base, tmp_path):
    steps = 40
    ref = _run(base, tmp_path / "ref", steps)
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    cmd = [sys.executable, str(SCRIPT), str(base), str(out), str(steps)]
    proc = subprocess.Popen(cmd, env=_env(MIXTUNE_TEST_SLOW="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = _steps(out)
        if done and done[-1]["step"] >= 23:  # past the step-20 checkpoint, before the end
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists()

    resumed = _run(base, out, steps)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step-00000020" in resumed.stdout + resumed.stderr
    a = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    # the metrics record has each step exactly once
    assert [r["step"] for r in _steps(out)] == list(range(1, steps + 1))


def test_corrupt_latest_checkpoint_resumes_from_previous(base, tmp_path):
    out = tmp_path / "run"
    assert _run(base, out, 30).returncode == 0
    ckpts = sorted((out / "checkpoints").iterdir())
    newest = ckpts[-1] / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (out / "model").rename(out / "model.old")
    res = _run(base, out, 30)
    assert res.returncode == 0
    log = res.stdout + res.stderr
    assert "truncated or corrupt" in log and f"resuming from {ckpts[-2].name}" in log


def test_ddp_two_processes_match_single_process_loss_curve(base, tmp_path):
    over = ["stage1.consistency.enabled=false", "stage1.adversarial.enabled=false"]
    single = _run(base, tmp_path / "single", 6, *over)
    assert single.returncode == 0, single.stderr[-2000:]
    # accelerate's multi-process launcher; on a machine without CUDA the loop selects gloo on CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(SCRIPT), str(base), str(tmp_path / "ddp"), "6", *over]
    ddp = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _steps(tmp_path / "single"), _steps(tmp_path / "ddp")
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x["loss_ce"] - y["loss_ce"]) < 1e-4, (x["step"], x["loss_ce"], y["loss_ce"])
        assert x["tokens"] == y["tokens"]
    wa = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    assert torch.isfinite(torch.tensor(b[-1]["grad_norm"]))
