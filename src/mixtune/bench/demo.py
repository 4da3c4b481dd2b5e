"""End-to-end demo wall time: ``mixtune run`` of the finance example in a subprocess.

Full tier: the shipped config exactly as ``make demo`` runs it (name=bench_demo, --fresh). Quick
tier: the same pipeline with every step shortened (few samples, steps, eval items) so the harness
exercises the whole path in seconds. The run directory is removed afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from mixtune.bench import fixtures
from mixtune.bench.harness import Context, row

QUICK = ["data.n_per_task=6", "stage1.steps=4", "stage2.steps=4", "stage1.eval_every=4", "stage2.eval_every=2",
         "stage1.checkpoint_every=4", "stage2.checkpoint_every=4", "eval.samples_per_task=1",
         "eval.max_new_tokens=8", "eval.experience=false", "stage1.max_len=320", "stage2.max_len=320",
         "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1",
         "model.tiny.vocab_size=400"]


def run(ctx: Context) -> dict:
    name = "bench_demo" if ctx.full else "bench_demo_quick"
    overrides = [f"name={name}", f"output_dir={(ctx.work / 'runs').resolve()}"] + ([] if ctx.full else QUICK)
    cmd = [sys.executable, "-m", "mixtune", "run", str(fixtures.demo_config_path()), *overrides, "--fresh"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"mixtune run exited {proc.returncode}: {tail}")
    shutil.rmtree((ctx.work / "runs" / name).resolve(), ignore_errors=True)
    shown = "mixtune run examples/finance_risk/pipeline.yaml " + " ".join(
        [f"name={name}"] + ([] if ctx.full else QUICK)) + " --fresh"
    return {"wall_s": wall, "demo_command": shown, "repetitions": 1,
            "table": [row("end-to-end demo (data → stage 1 → stage 2 → eval → gates → report)", wall, unit="s",
                          note=f"`{shown}`" if ctx.full else "shortened config (quick tier)")],
            "setup": "subprocess wall time including interpreter start and model build"}
