"""Pieces both stages share: accelerator, optimiser/scheduler, token CE, validation, metrics, saving.

Model loading (dtype, LoRA/DoRA, QLoRA, stacking) is in :mod:`mixtune.train.modeling`.

Each function takes flat typed arguments; only the stage entry points (stage1.py, stage2.py) see
the pipeline config.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch
import torch.utils.checkpoint
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed

from mixtune.errors import MixtuneError
from mixtune.train.checkpoint import atomic_dir
from mixtune.train.collate import IGNORE, Encoded, pad_batch
from mixtune.train.modeling import DTYPES

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_trackers(trackers: list[str], where: str) -> None:
    """Fail early, with the package to install, when a requested tracker is not importable."""
    for t in trackers:
        pkg = TRACKER_PACKAGES[t]
        if importlib.util.find_spec(pkg) is None:
            raise MixtuneError(f"tracker {t!r} needs the {pkg} package (pip install {pkg})", where=where)


def setup_accelerator(precision: str, trackers: list[str], out_dir: Path, seed: int, where: str):
    """Accelerator (gloo on CPU-only machines) seeded for the stage; returns (accelerator, autocast)."""
    check_trackers(trackers, where)
    # The accelerator state is a process-wide singleton that refuses a second, different mixed
    # precision: ``mixtune run`` trains both stages in one process, each with its own precision.
    # Only the per-run part is reset; the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no" if precision == "fp32" else precision,
                      log_with=trackers or None, project_dir=str(out_dir))
    set_seed(seed)

    def autocast():
        return torch.autocast(acc.device.type, dtype=DTYPES[precision], enabled=precision != "fp32")

    return acc, autocast


def make_optimizer(model, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))


def make_scheduler(optimizer, schedule: str, warmup: int, total: int):
    """Linear warm-up then cosine / linear decay to 10% / constant."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if schedule == "constant":
            return 1.0
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


CE_CHUNK_ELEMENTS = 1 << 24  # logits upcast to fp32 at a time: 64 MiB, whatever the vocabulary


def _chunk_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")


def token_ce(logits: torch.Tensor, labels: torch.Tensor,
             chunk_elements: int = CE_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions and the number of such positions.

    Logits larger than ``chunk_elements`` are processed in chunks of positions: each chunk is upcast
    to fp32 on its own and recomputed in backward (activation checkpointing), so fp32 logits for the
    whole batch never exist — with a 152k vocabulary they would be the largest tensor of the step.
    Small logits (the built-in model) take the single-shot path, bit-identical to before.
    """
    lb = labels[:, 1:]
    count = (lb != IGNORE).sum()
    vocab = logits.size(-1)
    if logits.numel() <= chunk_elements:
        lg = logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(lg.reshape(-1, vocab), lb.reshape(-1), ignore_index=IGNORE,
                                                 reduction="sum"), count
    rows = max(1, chunk_elements // vocab)
    total = logits.new_zeros((), dtype=torch.float32)
    for b in range(logits.size(0)):
        for i in range(0, lb.size(1), rows):
            y = lb[b, i:i + rows]
            if not bool((y != IGNORE).any()):
                continue
            chunk = logits[b, i:i + y.size(0)]  # position p predicts label p + 1
            if torch.is_grad_enabled() and chunk.requires_grad:
                total = total + torch.utils.checkpoint.checkpoint(_chunk_ce, chunk, y, use_reentrant=False)
            else:
                total = total + _chunk_ce(chunk, y)
    return total, count


@torch.no_grad()
def score_samples(model, encs: list[Encoded], pad_id: int, batch_size: int, autocast_dtype,
                  device: str | torch.device = "cpu") -> tuple[list[float], list[float]]:
    """Teacher-forced answer-token accuracy and mean CE per sample: a cheap validation signal.

    Returns (scores, losses). A score of 1.0 means every answer token is the greedy prediction, i.e.
    greedy decoding would reproduce the reference exactly.
    """
    was_training = model.training
    model.eval()
    scores, losses = [], []
    for i in range(0, len(encs), batch_size):
        batch = pad_batch(encs[i : i + batch_size], pad_id)
        dev = torch.device(device)
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)).logits
        logits = logits.cpu()
        lg, lb = logits[:, :-1].float(), batch["labels"][:, 1:]
        mask = lb != IGNORE
        ce = torch.nn.functional.cross_entropy(lg.transpose(1, 2), lb.clamp_min(0), reduction="none")
        correct = (lg.argmax(-1) == lb) & mask
        n = mask.sum(1).clamp_min(1)
        scores += (correct.sum(1) / n).tolist()
        losses += ((ce * mask).sum(1) / n).tolist()
    model.train(was_training)
    return scores, losses


class MetricsWriter:
    """Appends one JSON object per line; the file is the stage's record for the report."""

    def __init__(self, path: Path, resume_from_step: int = 0):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # drop records past the resume point so a resumed run does not duplicate steps
            keep = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_from_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def save_final(model, tokenizer, out_dir: Path, *, merge: bool, state_dict: dict | None = None) -> Path:
    """Save the trained model in HF format (full model, or PEFT adapter plus optional merged copy).

    ``state_dict`` is the gathered one (``accelerator.get_state_dict``) so sharded runs save whole weights.
    """
    # Written into a temp folder and renamed: a crash mid-save never leaves a half-written model
    # where the next step (or a user) would load it.
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        if hasattr(model, "peft_config") and merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(str(tmp / "merged"))
            tokenizer.save_pretrained(str(tmp / "merged"))
    return out_dir
