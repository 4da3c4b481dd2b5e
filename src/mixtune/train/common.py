"""Pieces both stages share: model loading, LoRA, optimiser/scheduler, validation, metrics, saving.

Each function takes flat typed arguments; only the stage entry points (stage1.py, stage2.py) see
the pipeline config.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixtune.errors import MixtuneError
from mixtune.train.collate import IGNORE, Encoded, pad_batch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model_and_tokenizer(path: str, *, finetune: str, lora_r: int = 16, lora_alpha: int = 32,
                             lora_dropout: float = 0.0, lora_targets: list[str] | None = None,
                             trust_remote_code: bool = False):
    """Load any HF causal LM by id or directory (weights in fp32: autocast handles precision)."""
    p = Path(path)
    if not p.exists() and (path.startswith((".", "/")) or path.count("/") != 1):
        raise MixtuneError("model path does not exist", where=path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if (p / "adapter_config.json").is_file():
            model = AutoPeftModelForCausalLM.from_pretrained(path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                         trust_remote_code=trust_remote_code)
    except OSError as e:
        raise MixtuneError(f"cannot load model: {str(e).splitlines()[0]}", where=path) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise MixtuneError("tokenizer has no chat template; set one or use an instruct model", where=path)
    if finetune == "lora":
        model = get_peft_model(model, LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            target_modules=lora_targets or "all-linear", task_type="CAUSAL_LM"))
    return model, tokenizer


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


def load_from_model_config(model_cfg, path: str):
    """``load_model_and_tokenizer`` with the ``model`` section's settings (stage entry points only)."""
    return load_model_and_tokenizer(
        path, finetune=model_cfg.finetune, lora_r=model_cfg.lora.r, lora_alpha=model_cfg.lora.alpha,
        lora_dropout=model_cfg.lora.dropout, lora_targets=model_cfg.lora.target_modules,
        trust_remote_code=model_cfg.trust_remote_code)


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


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions and the number of such positions."""
    lg = logits[:, :-1].float()
    lb = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, (lb != IGNORE).sum()


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


def save_final(model, tokenizer, out_dir: Path, *, merge: bool) -> Path:
    """Save the trained model in HF format (full model, or PEFT adapter plus optional merged copy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    if hasattr(model, "peft_config") and merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(out_dir / "merged"))
        tokenizer.save_pretrained(str(out_dir / "merged"))
    return out_dir
