"""Stage 1 — instruction-structure alignment. Reads top to bottom: setup → train → save → cleanup.

Main loss: assistant-only cross-entropy on clean single-task samples. Optional terms, each with an
off switch: SupCon over pooled instruction embeddings (tasks as classes, perturbed twins as extra
views), and a KL consistency term that makes the response distribution under a perturbed twin
match the stop-gradient clean one. Twins never enter the cross-entropy.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import Progress

from mixtune.config import PipelineConfig
from mixtune.errors import DataError
from mixtune.train import batches as B
from mixtune.train.checkpoint import latest_good_checkpoint, load_checkpoint, save_checkpoint
from mixtune.train.clip import ClipSchedule
from mixtune.train.collate import IGNORE, encode_conversation, pack_batch, pad_batch
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


def encode_samples(tokenizer, samples, max_len: int, progress: Progress | None = None, label: str = "tokenising"):
    task = progress.add_task(label, total=len(samples)) if progress else None
    out = []
    for s in samples:
        out.append(encode_conversation(tokenizer, [m.model_dump() for m in s.messages], max_len, s.instruction))
        if progress:
            progress.advance(task)
    return out


def first_per_task(samples: list, n: int) -> list:
    """The first ``n`` samples of every task, in order (a fixed, cheap validation subset)."""
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        if seen.get(s.task_id, 0) < n:
            seen[s.task_id] = seen.get(s.task_id, 0) + 1
            out.append(s)
    return out


def validate(model, tokenizer, val_samples, val_encs, batch_size, autocast_dtype, device="cpu") -> dict[str, float]:
    """Per-task teacher-forced answer accuracy on the validation split."""
    scores, _ = score_samples(model, val_encs, tokenizer.pad_token_id, batch_size, autocast_dtype, device)
    per: dict[str, list[float]] = {}
    for s, v in zip(val_samples, scores):
        per.setdefault(s.task_id, []).append(v)
    return {t: sum(v) / len(v) for t, v in sorted(per.items())}


def train_stage1(cfg: PipelineConfig, samples: list, model_path: str, out_dir: Path, *,
                 max_steps: int | None = None, progress: bool = True) -> Path:
    """Run stage 1 from ``model_path`` on ``samples`` and save an HF model under ``out_dir``."""
    from mixtune.train.adversarial import response_kl, response_positions, should_pay
    from mixtune.train.neftune import neftune
    from mixtune.train.supcon import compose_consistency_batch, cosine_gap, pool_instruction, supcon_loss

    st = cfg.stage1
    total = max_steps or st.steps
    # ---------------------------------------------------------------- setup
    acc, autocast = setup_accelerator(st.precision, st.trackers, out_dir, cfg.seed, "stage1.trackers")
    autocast_dtype = DTYPES[st.precision]
    model, tokenizer = load_from_model_config(cfg.model, model_path)
    clean = [s for s in samples if s.split == "train" and not s.parent_id]
    if not clean:
        raise DataError("no stage-1 training samples (split=train, stage=1) in the dataset",
                        where=str(out_dir))
    twins: dict[str, list] = {}
    for s in samples:
        if s.split == "train" and s.parent_id:
            twins.setdefault(s.parent_id, []).append(s)
    val = first_per_task([s for s in samples if s.split == "val"], st.eval_samples_per_task)
    with Progress(disable=not (progress and acc.is_main_process)) as prog:
        encs = encode_samples(tokenizer, clean, st.max_len, prog, "stage 1: tokenising")
        val_encs = encode_samples(tokenizer, val, st.max_len)
    # Twins are tokenised once; a twin whose (possibly truncated) response differs in length from
    # its parent's cannot be aligned token by token for the KL term and is left out.
    n_resp = {s.id: sum(1 for x in e.labels if x != IGNORE) for s, e in zip(clean, encs)}
    twin_encs: dict[str, list] = {}
    for parent, options in twins.items():
        for t in options:
            e = encode_conversation(tokenizer, [m.model_dump() for m in t.messages], st.max_len, t.instruction)
            if parent in n_resp and sum(1 for x in e.labels if x != IGNORE) == n_resp[parent]:
                twin_encs.setdefault(parent, []).append((t, e))
    task_ids = sorted({s.task_id for s in clean})
    task_index = {t: i for i, t in enumerate(task_ids)}
    meta = [(i, s.task_id, s.phrasing_id) for i, s in enumerate(clean)]

    optimizer = make_optimizer(model, st.lr, st.weight_decay)
    scheduler = make_scheduler(optimizer, st.lr_schedule, st.warmup_steps, total)
    clip = ClipSchedule(st.clip.policy, st.clip.schedule, st.clip.start, st.clip.end, total,
                        zclip_z=st.clip.zclip_z, zclip_alpha=st.clip.zclip_alpha)
    # The scheduler is stepped by hand: accelerate would step it once per process.
    model, optimizer = acc.prepare(model, optimizer)
    ckpt_root = out_dir / "checkpoints"
    start = 0
    ckpt = latest_good_checkpoint(ckpt_root)
    if ckpt is not None:
        state = load_checkpoint(ckpt, acc.unwrap_model(model), optimizer, scheduler)
        clip.load_state_dict(state["clip"])
        start = state["step"]
        acc.print(f"stage 1: resuming from {ckpt.name}")
    metrics = MetricsWriter(out_dir / "metrics.jsonl", resume_from_step=start) if acc.is_main_process else None
    if st.trackers:
        acc.init_trackers("mixtune-stage1", config={"steps": total, "lr": st.lr})
    rank, world = acc.process_index, acc.num_processes
    pad_id = tokenizer.pad_token_id

    # ---------------------------------------------------------------- train
    model.train()
    with Progress(disable=not (progress and acc.is_main_process)) as prog:
        bar = prog.add_task("stage 1: training", total=total, completed=start)
        for step in range(start, total):
            t0 = time.perf_counter()
            micro = []
            for m in range(st.grad_accum):
                index = step * st.grad_accum + m
                if st.consistency.enabled:
                    glob = compose_consistency_batch(meta, st.batch_size, B.step_rng(cfg.seed, index))
                else:
                    glob = B.epoch_batch(len(clean), st.batch_size, index, cfg.seed)
                micro.append(B.rank_slice(glob, rank, world))
            n_labels = B.global_count(sum(sum(1 for x in encs[i].labels[1:] if x != IGNORE)
                                          for mb in micro for i in mb), acc)
            sums = {"ce": 0.0, "con": 0.0, "adv": 0.0, "tokens": 0, "gap": None}
            for m, idx in enumerate(micro):
                items = [encs[i] for i in idx]
                batch = pack_batch(items, st.max_len, pad_id) if st.packing else pad_batch(items, pad_id)
                sync = m == len(micro) - 1
                ctx = acc.no_sync(model) if not sync else torch.enable_grad()
                with ctx, autocast(), \
                        neftune(acc.unwrap_model(model), st.neftune_alpha):
                    fwd = {k: v.to(acc.device) for k, v in batch.items() if k not in ("labels", "instr_mask")}
                    out = model(**fwd, output_hidden_states=st.consistency.enabled)
                    ce_sum, _ = token_ce(out.logits, batch["labels"].to(acc.device))
                    # Normalise by the global label count so DDP's gradient average equals one process.
                    loss = ce_sum / max(1, n_labels) * world
                    sums["ce"] += ce_sum.item()
                    views_emb, views_lab = [], []
                    if st.consistency.enabled and not st.packing:
                        emb = pool_instruction(out.hidden_states[-1], batch["instr_mask"].to(acc.device))
                        views_emb.append(emb)
                        views_lab += [task_index[clean[i].task_id] for i in idx]
                    pay = (st.adversarial.enabled and not st.packing
                           and should_pay(step, st.adversarial.share, cfg.seed))
                    pairs = [(j, twin_encs[clean[i].id]) for j, i in enumerate(idx) if clean[i].id in twin_encs] \
                        if pay else []
                    if pairs:
                        rng = B.step_rng(cfg.seed, step, salt=7)
                        chosen = [rng.choice(options) for _, options in pairs]
                        tw = [t for t, _ in chosen]
                        tb = pad_batch([e for _, e in chosen], pad_id)
                        tout = model(input_ids=tb["input_ids"].to(acc.device),
                                     attention_mask=tb["attention_mask"].to(acc.device),
                                     output_hidden_states=st.consistency.enabled)
                        rows = torch.tensor([j for j, _ in pairs])
                        kl = response_kl(tout.logits, out.logits[rows].detach(),
                                         response_positions(tb["labels"]).to(acc.device),
                                         response_positions(batch["labels"][rows]).to(acc.device))
                        loss = loss + st.adversarial.weight * kl / len(micro)
                        sums["adv"] += kl.item() / len(micro)
                        if st.consistency.enabled:
                            views_emb.append(pool_instruction(tout.hidden_states[-1], tb["instr_mask"].to(acc.device)))
                            views_lab += [task_index[t.task_id] for t in tw]
                    if views_emb:
                        emb = torch.cat(views_emb).float()
                        labels_t = torch.tensor(views_lab, device=acc.device)
                        con = supcon_loss(emb, labels_t, st.consistency.temperature)
                        loss = loss + st.consistency.weight * con / len(micro)
                        sums["con"] += con.item() / len(micro)
                        sums["gap"] = cosine_gap(emb.detach(), labels_t)
                    sums["tokens"] += int(batch["attention_mask"].sum().item()) if batch["attention_mask"].dim() == 2 \
                        else int((batch["position_ids"] > 0).sum().item() + len(items))
                acc.backward(loss)
            thr = clip.threshold(step)
            norm = acc.clip_grad_norm_(model.parameters(), thr if thr is not None else float("inf"))
            rec = clip.record(norm, step)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ce = B.global_sum(sums["ce"], acc) / max(1, n_labels)
            record = {
                "step": step + 1, "lr": scheduler.get_last_lr()[0], "loss_ce": ce,
                "loss_consistency": sums["con"], "loss_adversarial": sums["adv"],
                "loss": ce + st.consistency.weight * sums["con"] + st.adversarial.weight * sums["adv"],
                "grad_norm": rec["grad_norm"], "clip_threshold": rec["clip_threshold"], "clipped": rec["clipped"],
                "tokens": B.global_count(sums["tokens"], acc), "cosine_gap": sums["gap"],
                "step_time_s": time.perf_counter() - t0,
            }
            if (step + 1) % st.eval_every == 0 or step + 1 == total:
                record["val"] = validate(acc.unwrap_model(model), tokenizer, val, val_encs, 32, autocast_dtype,
                                         acc.device)
            if metrics:
                metrics.write(record)
            if st.trackers:
                acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step + 1)
            if ((step + 1) % st.checkpoint_every == 0 or step + 1 == total) and acc.is_main_process:
                save_checkpoint(ckpt_root, step + 1, acc.unwrap_model(model), optimizer, scheduler,
                                {"clip": clip.state_dict()}, st.keep_checkpoints)
            acc.wait_for_everyone()
            prog.update(bar, advance=1, description=f"stage 1: training (loss {ce:.3f})")

    # ---------------------------------------------------------------- save
    if acc.is_main_process:
        save_final(acc.unwrap_model(model), tokenizer, out_dir / "model", merge=cfg.model.merge_adapter)
    # ---------------------------------------------------------------- cleanup
    acc.wait_for_everyone()
    acc.end_training()
    return out_dir / "model"
