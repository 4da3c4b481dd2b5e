"""Shared training/scoring pieces of the two ablation suites (stage 1 and stage-2 mixing).

Both ablations use a smaller tiny model than the demo (``ABLATION_SHAPE``) so 3 seeds × every
variant fit the full tier's time budget on 2 cores; the shape is recorded in the results. Scores
are teacher-forced answer accuracy (``score_samples``) on the held-out test split.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixtune.bench import fixtures
from mixtune.train.common import score_samples
from mixtune.train.loop import encode_samples
from mixtune.train.stage1 import train_stage1

ABLATION_SHAPE = {"vocab_size": 1500, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


def sizes(full: bool) -> dict:
    """Steps and data sizes per tier (full tier sized for ≈10 minutes of ablations on 2 cores)."""
    if full:
        return {"n_per_task": 60, "s1_steps": 150, "s2_steps": 60, "eval_every": 10, "batch": 8, "val_per_task": 4,
                "shape": ABLATION_SHAPE}
    return {"n_per_task": 10, "s1_steps": 4, "s2_steps": 4, "eval_every": 2, "batch": 4, "val_per_task": 4,
            "shape": fixtures.QUICK_SHAPE}


def base_config(seed: int, sz: dict):
    """Demo config with the ablation's sizes (same cadence and batch for every variant)."""
    cfg = fixtures.demo_config()
    return fixtures.with_updates(cfg, {
        # max_len 320: a perturbed twin's longer prompt must not truncate its (shared) answer
        "seed": seed, "stage1.max_len": 320, "stage2.max_len": 256, "stage1.steps": sz["s1_steps"], "stage1.batch_size": sz["batch"],
        "stage1.eval_every": 10_000, "stage1.checkpoint_every": 10_000, "stage1.warmup_steps": 5,
        "stage2.steps": sz["s2_steps"], "stage2.batch_size": sz["batch"], "stage2.eval_every": sz["eval_every"],
        "stage2.checkpoint_every": 10_000, "stage2.eval_samples_per_task": sz["val_per_task"], "stage2.warmup_steps": 5})


def seed_inputs(work: Path, seed: int, sz: dict) -> tuple[list, str, str]:
    """Dataset and base model of one seed (cached)."""
    samples, source = fixtures.load_dataset(work, n_per_task=sz["n_per_task"], seed=seed)
    return samples, fixtures.tiny_model(work, samples, sz["shape"], seed=seed), source


def stage1_model(work: Path, cfg, samples: list, base_model: str, tag: str, *, reuse_any: bool = False) -> str:
    """Train (or reuse) the stage-1 model of ``tag``; the mixing suite reuses the ``full`` one.

    ``reuse_any``: when no model of exactly this stage-1 config exists, take the newest one of the
    same tag, seed and base model (e.g. trained by the stage-1 ablation before the demo YAML was
    edited) instead of training again; the caller records which one it used.
    """
    prefix = f"s1_{tag}_seed{cfg.seed}_{Path(base_model).name}_"
    out = work / f"{prefix}{cfg.fingerprint('stage1', 'model')}"
    if not (out / "model" / "config.json").is_file() and reuse_any:
        found = sorted((p for p in work.glob(prefix + "*") if (p / "model" / "config.json").is_file()),
                       key=lambda p: p.stat().st_mtime)
        out = found[0] if found else out
    if not (out / "model" / "config.json").is_file():
        train_stage1(cfg, [s for s in samples if s.stage == 1], base_model, out, progress=False)
    return str(out / "model")


def load_for_scoring(path: str):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tok


def score(model, tok, samples: list, max_len: int) -> list[float]:
    """Teacher-forced answer accuracy per sample (bf16 autocast, as in training)."""
    encs = encode_samples(tok, samples, max_len)
    return score_samples(model, encs, tok.pad_token_id, 32, torch.bfloat16)[0]


def per_task(samples: list, scores: list[float]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for s, v in zip(samples, scores, strict=True):
        out.setdefault(s.task_id, []).append(v)
    return {t: statistics.fmean(v) for t, v in sorted(out.items())}


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None
