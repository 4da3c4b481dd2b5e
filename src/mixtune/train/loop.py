"""The parts of a training loop both stage recipes share: encoding, per-task scoring, end of step.

A stage recipe (``stage1.py``, ``stage2.py``) reads setup → train → save → cleanup; what is
identical between the two lives here so neither stage imports the other. Everything takes flat
arguments; the recipes alone see the pipeline config.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from rich.console import Console
from rich.progress import Progress

from mixtune.train import batches
from mixtune.train.checkpoint import latest_good_checkpoint, load_checkpoint
from mixtune.train.clip import ClipSchedule
from mixtune.train.collate import IGNORE, Encoded, encode_conversation
from mixtune.train.common import save_final, score_samples
from mixtune.train.launch import check_engine_owned_options
from mixtune.train.modeling import is_adapter, lr_warning, merged_base, parameter_count

console = Console(stderr=True)
SCORE_BATCH = 32  # validation batch size: scoring is no_grad, so it can be larger than training's


def encode_samples(tokenizer, samples, max_len: int, progress: Progress | None = None,
                   label: str = "tokenising", where: str | None = None) -> list[Encoded]:
    """Tokenise samples' conversations (assistant-only labels), with an optional progress bar.

    With ``where`` (the config key of ``max_len``), samples whose answers lose tokens to the
    truncation are reported once, by task: a real tokenizer can spend several tokens per Chinese
    character, and a silently cut answer teaches the model to stop mid-sentence (or nothing at all).
    """
    task = progress.add_task(label, total=len(samples)) if progress else None
    out = []
    for s in samples:
        out.append(encode_conversation(tokenizer, [m.model_dump() for m in s.messages], max_len, s.instruction))
        if progress:
            progress.advance(task)
    if where:
        warn_truncated(samples, out, max_len, where)
    return out


def warn_truncated(samples, encs: list[Encoded], max_len: int, where: str) -> dict[str, int]:
    """Print one warning naming the tasks whose answers ``max_len`` cuts; returns task -> samples cut."""
    cut: dict[str, int] = {}
    longest = 0
    for s, e in zip(samples, encs, strict=True):
        if e.cut_labels:
            cut[s.task_id] = cut.get(s.task_id, 0) + 1
            longest = max(longest, e.full_len)
    if cut:
        tasks = ", ".join(f"{t} {n}" for t, n in sorted(cut.items(), key=lambda kv: -kv[1]))
        console.print(f"[yellow]warning:[/yellow] {sum(cut.values())} of {len(samples)} samples are longer than "
                      f"{where}={max_len} and lose answer tokens ({tasks}; longest {longest} tokens): "
                      f"raise {where}")
    return cut


def first_per_task(samples: list, n: int) -> list:
    """The first ``n`` samples of every task, in order (a fixed, cheap validation subset)."""
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        if seen.get(s.task_id, 0) < n:
            seen[s.task_id] = seen.get(s.task_id, 0) + 1
            out.append(s)
    return out


@dataclass
class TaskScores:
    """Validation result per task: mean score, per-sample scores and mean loss."""

    mean: dict[str, float]
    per_sample: dict[str, list[float]]
    loss: dict[str, float]


def per_task_scores(model, tokenizer, samples: list, encs: list[Encoded], autocast_dtype,
                    device: str | torch.device = "cpu") -> TaskScores:
    """Teacher-forced answer accuracy and loss on the validation subset, grouped by task."""
    scores, losses = score_samples(model, encs, tokenizer.pad_token_id, SCORE_BATCH, autocast_dtype, device)
    per_sample: dict[str, list[float]] = {}
    per_loss: dict[str, list[float]] = {}
    for s, v, lo in zip(samples, scores, losses):
        per_sample.setdefault(s.task_id, []).append(v)
        per_loss.setdefault(s.task_id, []).append(lo)
    return TaskScores(mean={t: sum(v) / len(v) for t, v in sorted(per_sample.items())}, per_sample=per_sample,
                      loss={t: sum(v) / len(v) for t, v in per_loss.items()})


def label_count(encs: list[Encoded], micro: list[list[int]], accelerator) -> int:
    """Labelled next-token positions in a step's micro-batches, summed over ranks.

    The loss of every micro-batch is divided by this, so a step's gradient is the mean over all its
    labelled tokens whatever the accumulation and process count.
    """
    local = sum(sum(1 for x in encs[i].labels[1:] if x != IGNORE) for mb in micro for i in mb)
    return batches.global_count(local, accelerator)


def stacking_base(accelerator, model_path: str, out_dir: Path) -> str:
    """The model a stage loads: ``model_path``, or the merged copy when it is a LoRA adapter.

    The merged copy becomes the new adapter's recorded base, so stage 2's adapter stacks on stage 1
    (see :mod:`mixtune.train.modeling`). Merging runs on the main process with the RNG forked, so
    a run that finds the copy already written (a resume) draws the same random numbers.
    """
    if not is_adapter(model_path):
        return model_path
    if accelerator.is_main_process:
        with torch.random.fork_rng():
            merged_base(Path(model_path), out_dir / "base")
    accelerator.wait_for_everyone()
    return str(merged_base(Path(model_path), out_dir / "base"))


def warn_unusual_lr(accelerator, where: str, finetune: str, lr: float, model) -> None:
    """Print (not raise) a warning naming an lr far from typical for the mode and model size."""
    warning = lr_warning(finetune, lr, parameter_count(model))
    if warning and accelerator.is_main_process:
        console.print(f"[yellow]warning:[/] {where}: {warning}")


def refuse_engine_owned_options(accelerator, stage: int, clip_policy: str, style_ema: float = 0.0) -> None:
    """The launch-time refusals again, for a stage started under DeepSpeed by hand (accelerate launch)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        check_engine_owned_options(stage, "deepspeed", clip_policy=clip_policy, style_ema=style_ema)


def micro_batch_context(accelerator, model, last: bool):
    """Gradients are synchronised on the step's last micro-batch only.

    DDP / FSDP: ``no_sync`` before the last. DeepSpeed: accelerate's ``backward`` tells the engine
    it is at an accumulation boundary (and steps it) when ``sync_gradients`` is set, so the flag is
    set per micro-batch; it is True again for the step's last one.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.gradient_state._set_sync_gradients(last)  # the flag accelerate's accumulate() sets
    return nullcontext() if last else accelerator.no_sync(model)


def engine_loss_factor(accelerator, grad_accum: int) -> int:
    """Undo DeepSpeed's division of each micro-batch loss by its accumulation steps.

    The stages already normalise a step's loss over all its micro-batches (by the global label
    count), so under DeepSpeed the loss is multiplied back; elsewhere the factor is 1.
    """
    return grad_accum if accelerator.distributed_type == DistributedType.DEEPSPEED else 1


def resume(ckpt_root: Path, accelerator, model, optimizer, scheduler, label: str) -> dict | None:
    """Restore the newest intact checkpoint (weights, optimizer, scheduler, RNG); its state or None."""
    ckpt = latest_good_checkpoint(ckpt_root)
    if ckpt is None:
        return None
    state = load_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler)
    accelerator.print(f"{label}: resuming from {ckpt.name}")
    return state


def optimizer_step(accelerator, params: list, optimizer, scheduler, clip: ClipSchedule, step: int) -> dict:
    """Clip by the policy's threshold, step optimizer and scheduler, clear gradients; the clip record."""
    thr = clip.threshold(step)
    norm = accelerator.clip_grad_norm_(params, thr if thr is not None else float("inf"))
    rec = clip.record(norm, step)
    optimizer.step()
    scheduler.step()  # stepped by hand: accelerate would step a prepared scheduler once per process
    optimizer.zero_grad(set_to_none=True)
    return rec


def end_step(accelerator, model, step: int, record: dict, metrics, *, trackers: bool, checkpoint_due: bool,
             save_checkpoint: Callable[[dict], object]) -> None:
    """Write the step's record (metrics file, trackers), checkpoint when due, sync ranks.

    ``save_checkpoint`` gets the gathered model state (``accelerator.get_state_dict``: every rank
    takes part, so ZeRO-3 / FSDP shards are complete) and runs on the main process only.
    """
    if metrics is not None:
        metrics.write(record)
    if trackers:
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step + 1)
    if checkpoint_due:
        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            save_checkpoint(state)
    accelerator.wait_for_everyone()


def due(step: int, every: int, total: int) -> bool:
    """True after the (0-based) ``step`` when a periodic action runs: every ``every`` steps and at the end."""
    return (step + 1) % every == 0 or step + 1 == total


def finish(accelerator, model, tokenizer, out_dir: Path, *, merge: bool) -> Path:
    """Save the final model (gathered state) on the main process, then end training on every process."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        save_final(accelerator.unwrap_model(model), tokenizer, out_dir / "model", merge=merge, state_dict=state)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out_dir / "model"
