"""Stage 2 — multi-task co-optimisation. Reads top to bottom: setup → train → save → cleanup.

Every optimizer step trains on ONE task (task-homogeneous micro-batches) drawn by the mixture
sampler from the mixing policy's weights and the curriculum's level distribution, so per-group
gradient modulation needs no extra backward pass: ``logic`` steps scale the loss by a gain, ``style``
steps replace their gradient by its EMA, ``safety`` steps add an unlikelihood term on tokens the
rule engine flags in the prompt (PII, promise words) so the model does not copy them. Every
``eval_every`` steps an evaluation cycle scores each task on validation data and the policy,
curriculum and modulation take their decisions, logged with their inputs to ``mixing_log.jsonl``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from rich.progress import Progress

from mixtune.config import PipelineConfig
from mixtune.errors import DataError
from mixtune.train import batches as B
from mixtune.train.checkpoint import latest_good_checkpoint, load_checkpoint, save_checkpoint
from mixtune.train.clip import ClipSchedule
from mixtune.train.collate import IGNORE, pad_batch, token_ids_for_spans
from mixtune.train.common import (
    DTYPES,
    MetricsWriter,
    load_from_model_config,
    make_optimizer,
    make_scheduler,
    save_final,
    score_samples,
    setup_accelerator,
    token_ce,
)
from mixtune.train.orchestrate import carry_forward, related_pairs, side_by_side
from mixtune.train.stage1 import encode_samples, first_per_task


def unlikelihood(logits: torch.Tensor, labels: torch.Tensor, neg: list[list[int]]) -> torch.Tensor:
    """Mean over response positions of -log(1 - p(negative tokens)), gold token excluded."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    probs = lg.softmax(-1)
    total, count = lg.new_zeros(()), 0
    for b, ids in enumerate(neg):
        pos = (lb[b] != IGNORE).nonzero().flatten()
        if not ids or len(pos) == 0:
            continue
        p = probs[b, pos][:, ids]  # [P, N]
        gold = lb[b, pos][:, None] == torch.tensor(ids)[None]
        p_neg = p.masked_fill(gold, 0.0).sum(-1).clamp(max=1 - 1e-6)
        total = total - torch.log1p(-p_neg).sum()
        count += len(pos)
    return total / max(1, count)


def evaluation_cycle(model, tokenizer, val, val_encs, autocast_dtype, device="cpu") -> tuple[dict, dict, dict]:
    """Per-task mean score, per-sample scores and mean loss on the validation subset."""
    scores, losses = score_samples(model, val_encs, tokenizer.pad_token_id, 32, autocast_dtype, device)
    per_sample: dict[str, list[float]] = {}
    per_loss: dict[str, list[float]] = {}
    for s, v, lo in zip(val, scores, losses):
        per_sample.setdefault(s.task_id, []).append(v)
        per_loss.setdefault(s.task_id, []).append(lo)
    mean = {t: sum(v) / len(v) for t, v in per_sample.items()}
    return mean, per_sample, {t: sum(v) / len(v) for t, v in per_loss.items()}


def train_stage2(cfg: PipelineConfig, samples: list, model_path: str, out_dir: Path, *,
                 business_value: dict[str, float], groups: dict[str, str], families: dict[str, str],
                 chains: list[list[str]], rejection: dict[str, float], engine=None,
                 mixing_log: Path | None = None, max_steps: int | None = None, progress: bool = True) -> Path:
    """Run stage 2 from ``model_path`` (the stage-1 model) and save an HF model under ``out_dir``."""
    from mixtune.mixing.curriculum import Curriculum
    from mixtune.mixing.factory import make_policy
    from mixtune.mixing.log import MixingLog, make_record
    from mixtune.mixing.modulation import make_modulation
    from mixtune.mixing.sampler import MixtureSampler

    st = cfg.stage2
    total = max_steps or st.steps
    # ---------------------------------------------------------------- setup
    acc, autocast = setup_accelerator(st.precision, st.trackers, out_dir, cfg.seed, "stage2.trackers")
    autocast_dtype = DTYPES[st.precision]
    model, tokenizer = load_from_model_config(cfg.model, model_path)
    train = [s for s in samples if s.split == "train" and not s.parent_id]
    if not train:
        raise DataError("no training samples (split=train) in the dataset", where=str(out_dir))
    if st.context_orchestration:
        rng = random.Random(cfg.seed + 17)
        extra = carry_forward([s for s in train if len(s.chain_steps) > 1], rng)
        extra += side_by_side(train, related_pairs(families, chains), rng, n=len(train) // 10)
        train += extra
    val = first_per_task([s for s in samples if s.split == "val" and not s.parent_id], st.eval_samples_per_task)
    with Progress(disable=not (progress and acc.is_main_process)) as prog:
        encs = encode_samples(tokenizer, train, st.max_len, prog, "stage 2: tokenising")
        val_encs = encode_samples(tokenizer, val, st.max_len)
    for s, e in zip(train, encs):  # unlikelihood negatives: flagged spans of the prompt
        if engine is not None and groups.get(s.task_id) == "safety":
            prompt = " ".join(m.content for m in s.messages if m.role == "user")
            spans = [(a, b) for a, b, _ in engine.flag_spans(prompt)]
            e.neg_ids = token_ids_for_spans(tokenizer, prompt, spans)
    tasks = sorted({s.task_id for s in train})
    policy = make_policy(st.mixing.method, tasks, {t: business_value.get(t, 1.0) for t in tasks},
                         eta=st.mixing.eta, uniform_mix=st.mixing.uniform_mix, floor=st.mixing.floor,
                         cap=st.mixing.cap, ema=st.mixing.ema, heat_weights=st.mixing.heat_weights, seed=cfg.seed)
    cur = st.curriculum
    curriculum = Curriculum(tasks, cur.early, cur.middle, cur.late, mastery_threshold=cur.mastery_threshold,
                            mastery_cycles=cur.mastery_cycles, enabled=cur.enabled)
    mod = st.modulation
    modulation = make_modulation(mod.method, enabled=mod.enabled, logic_gain=mod.logic_gain,
                                 style_ema=mod.style_ema, safety_unlikelihood=mod.safety_unlikelihood, seed=cfg.seed)
    sampler = MixtureSampler([(i, s.task_id, s.level) for i, s in enumerate(train)], policy, curriculum,
                             max(1, st.batch_size * st.grad_accum // acc.num_processes), cfg.seed, rank=acc.process_index,
                             world_size=acc.num_processes)
    optimizer = make_optimizer(model, st.lr, st.weight_decay)
    scheduler = make_scheduler(optimizer, st.lr_schedule, st.warmup_steps, total)
    clip = ClipSchedule(st.clip.policy, st.clip.schedule, st.clip.start, st.clip.end, total,
                        zclip_z=st.clip.zclip_z, zclip_alpha=st.clip.zclip_alpha)
    model, optimizer = acc.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    style_ema = [torch.zeros_like(p) for p in params]
    ckpt_root = out_dir / "checkpoints"
    start, cycle, style_steps = 0, 0, 0
    ckpt = latest_good_checkpoint(ckpt_root)
    if ckpt is not None:
        state = load_checkpoint(ckpt, acc.unwrap_model(model), optimizer, scheduler)
        for obj, key in ((clip, "clip"), (policy, "policy"), (curriculum, "curriculum"),
                         (modulation, "modulation"), (sampler, "sampler")):
            obj.load_state_dict(state[key])
        style_ema = [t.to(p.device) for t, p in zip(state["extra"]["style_ema"], params)]
        start, cycle, style_steps = state["step"], state["cycle"], state["style_steps"]
        acc.print(f"stage 2: resuming from {ckpt.name}")
    metrics = MetricsWriter(out_dir / "metrics.jsonl", resume_from_step=start) if acc.is_main_process else None
    log = MixingLog(mixing_log or out_dir / "mixing_log.jsonl") if acc.is_main_process else None
    if log and start == 0 and log.path.exists():
        log.path.unlink()
    pad_id = tokenizer.pad_token_id

    # ---------------------------------------------------------------- train
    model.train()
    with Progress(disable=not (progress and acc.is_main_process)) as prog:
        bar = prog.add_task("stage 2: training", total=total, completed=start)
        for step in range(start, total):
            t0 = time.perf_counter()
            task, idx = sampler.next_batch(step / total)
            group = groups.get(task, "general")
            per_rank = max(1, len(idx) // st.grad_accum)
            micro = [idx[m * per_rank:(m + 1) * per_rank] for m in range(st.grad_accum)]
            micro = [mb for mb in micro if mb]
            n_labels = B.global_count(sum(sum(1 for x in encs[i].labels[1:] if x != IGNORE)
                                          for mb in micro for i in mb), acc)
            ce_total, ul_total, tokens = 0.0, 0.0, 0
            scale = modulation.loss_scale(group)
            ul_w = modulation.unlikelihood_weight(group)
            for m, mb in enumerate(micro):
                items = [encs[i] for i in mb]
                batch = pad_batch(items, pad_id)
                ctx = acc.no_sync(model) if m < len(micro) - 1 else torch.enable_grad()
                with ctx, autocast():
                    out = model(input_ids=batch["input_ids"].to(acc.device),
                                attention_mask=batch["attention_mask"].to(acc.device))
                    ce_sum, _ = token_ce(out.logits, batch["labels"].to(acc.device))
                    loss = ce_sum / max(1, n_labels) * acc.num_processes
                    if ul_w > 0:
                        ul = unlikelihood(out.logits, batch["labels"], [x.neg_ids for x in items])
                        loss = loss + ul_w * ul / len(micro)
                        ul_total += ul.item() / len(micro)
                    loss = loss * scale
                acc.backward(loss)
                ce_total += ce_sum.item()
                tokens += int(batch["attention_mask"].sum())
            modulation.observe(group, ce_total / max(1, n_labels))
            if group == "style" and mod.enabled and mod.method == "groups":
                # EMA of the style group's gradient (bias-corrected), so the noisy style signal
                # moves the model smoothly.
                style_steps += 1
                corr = 1 - mod.style_ema ** style_steps
                for p, buf in zip(params, style_ema):
                    if p.grad is not None:
                        buf.mul_(mod.style_ema).add_(p.grad, alpha=1 - mod.style_ema)
                        p.grad.copy_(buf / corr)
            thr = clip.threshold(step)
            norm = acc.clip_grad_norm_(params, thr if thr is not None else float("inf"))
            rec = clip.record(norm, step)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ce = B.global_sum(ce_total, acc) / max(1, n_labels)
            record = {"step": step + 1, "task": task, "group": group, "lr": scheduler.get_last_lr()[0],
                      "loss": ce * scale + ul_w * ul_total, "loss_ce": ce, "loss_unlikelihood": ul_total,
                      "loss_consistency": 0.0, "loss_adversarial": 0.0, "loss_scale": scale,
                      "grad_norm": rec["grad_norm"], "clip_threshold": rec["clip_threshold"],
                      "clipped": rec["clipped"], "tokens": B.global_count(tokens, acc),
                      "step_time_s": time.perf_counter() - t0}
            if (step + 1) % st.eval_every == 0 or step + 1 == total:
                cycle += 1
                scores, per_sample, losses = evaluation_cycle(acc.unwrap_model(model), tokenizer, val, val_encs,
                                                              autocast_dtype, acc.device)
                decision = policy.update(cycle, step + 1, scores, per_sample, losses, rejection)
                promotions = curriculum.update(cycle, scores)
                record["val"] = scores
                if log:
                    log.append(make_record(decision, curriculum.levels(), promotions, modulation.factors(),
                                           losses=losses, rejection=rejection, progress=(step + 1) / total))
            if metrics:
                metrics.write(record)
            if ((step + 1) % st.checkpoint_every == 0 or step + 1 == total) and acc.is_main_process:
                save_checkpoint(ckpt_root, step + 1, acc.unwrap_model(model), optimizer, scheduler, {
                    "cycle": cycle, "style_steps": style_steps, "clip": clip.state_dict(),
                    "policy": policy.state_dict(), "curriculum": curriculum.state_dict(),
                    "modulation": modulation.state_dict(**({"include_buffers": False} if mod.method == "groups" else {})),
                    "sampler": sampler.state_dict()},
                    st.keep_checkpoints, extra_tensors={"style_ema": [b.cpu() for b in style_ema]})
            acc.wait_for_everyone()
            prog.update(bar, advance=1, description=f"stage 2: training (loss {ce:.3f})")

    # ---------------------------------------------------------------- save
    if acc.is_main_process:
        save_final(acc.unwrap_model(model), tokenizer, out_dir / "model", merge=cfg.model.merge_adapter)
        (out_dir / "final_weights.json").write_text(json.dumps(policy.weights(), indent=1))
    # ---------------------------------------------------------------- cleanup
    acc.wait_for_everyone()
    acc.end_training()
    return out_dir / "model"
