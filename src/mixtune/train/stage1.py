"""Stage 1 — instruction-structure alignment. Reads top to bottom: setup → train → save → cleanup.

Main loss: assistant-only cross-entropy on clean single-task samples. Optional terms, each with an
off switch: SupCon over pooled instruction embeddings (tasks as classes, perturbed twins as extra
views), and a KL consistency term that makes the response distribution under a perturbed twin
match the stop-gradient clean one. Twins never enter the cross-entropy. :meth:`Stage1Recipe._loss_step`
returns all the terms of one micro-batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import Progress

from mixtune.config import PipelineConfig
from mixtune.errors import DataError
from mixtune.train import batches
from mixtune.train.adversarial import response_kl, response_positions, should_pay
from mixtune.train.checkpoint import save_checkpoint
from mixtune.train.clip import ClipSchedule
from mixtune.train.collate import IGNORE, encode_conversation, pack_batch, pad_batch
from mixtune.train.common import (
    DTYPES,
    MetricsWriter,
    make_optimizer,
    make_scheduler,
    setup_accelerator,
    token_ce,
)
from mixtune.train.loop import (
    due,
    encode_samples,
    end_step,
    engine_loss_factor,
    finish,
    first_per_task,
    label_count,
    micro_batch_context,
    optimizer_step,
    per_task_scores,
    refuse_engine_owned_options,
    resume,
    stacking_base,
    warn_unusual_lr,
)
from mixtune.train.modeling import load_from_model_config
from mixtune.train.neftune import neftune
from mixtune.train.supcon import compose_consistency_batch, cosine_gap, pool_instruction, supcon_loss


class Stage1Recipe:
    """One stage-1 run; :func:`train_stage1` calls setup, train, save and cleanup in order."""

    def __init__(self, cfg: PipelineConfig, samples: list, model_path: str, out_dir: Path,
                 max_steps: int | None, progress: bool):
        self.cfg, self.st, self.samples, self.model_path, self.out_dir = cfg, cfg.stage1, samples, model_path, out_dir
        self.total = max_steps or self.st.steps
        self.progress = progress

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        st = self.st
        self.acc, self.autocast = setup_accelerator(st.precision, st.trackers, self.out_dir, self.cfg.seed,
                                                    "stage1.trackers")
        self.autocast_dtype = DTYPES[st.precision]
        self.engine_factor = engine_loss_factor(self.acc, st.grad_accum)
        refuse_engine_owned_options(self.acc, 1, st.clip.policy)
        base = stacking_base(self.acc, self.model_path, self.out_dir)
        self.model, self.tokenizer = load_from_model_config(self.cfg.model, base,
                                                            gradient_checkpointing=st.gradient_checkpointing)
        warn_unusual_lr(self.acc, "stage1.lr", self.cfg.model.finetune, st.lr, self.model)
        self._setup_data()
        optimizer = make_optimizer(self.model, st.lr, st.weight_decay)
        self.scheduler = make_scheduler(optimizer, st.lr_schedule, st.warmup_steps, self.total)
        self.clip = ClipSchedule(st.clip.policy, st.clip.schedule, st.clip.start, st.clip.end, self.total,
                                 zclip_z=st.clip.zclip_z, zclip_alpha=st.clip.zclip_alpha)
        self.model, self.optimizer = self.acc.prepare(self.model, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ckpt_root = self.out_dir / "checkpoints"
        state = resume(self.ckpt_root, self.acc, self.model, self.optimizer, self.scheduler, "stage 1")
        self.start = 0
        if state is not None:
            self.clip.load_state_dict(state["clip"])
            self.start = state["step"]
        main = self.acc.is_main_process
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl", resume_from_step=self.start) if main else None
        if st.trackers:
            self.acc.init_trackers("mixtune-stage1", config={"steps": self.total, "lr": st.lr})

    def _setup_data(self) -> None:
        st, samples = self.st, self.samples
        self.clean = [s for s in samples if s.split == "train" and not s.parent_id]
        if not self.clean:
            raise DataError("no stage-1 training samples (split=train, stage=1) in the dataset",
                            where=str(self.out_dir))
        twins: dict[str, list] = {}
        for s in samples:
            if s.split == "train" and s.parent_id:
                twins.setdefault(s.parent_id, []).append(s)
        self.val = first_per_task([s for s in samples if s.split == "val"], st.eval_samples_per_task)
        with Progress(disable=not (self.progress and self.acc.is_main_process)) as prog:
            self.encs = encode_samples(self.tokenizer, self.clean, st.max_len, prog, "stage 1: tokenising",
                                       where="stage1.max_len" if self.acc.is_main_process else None)
            self.val_encs = encode_samples(self.tokenizer, self.val, st.max_len)
        # Twins are tokenised once; a twin whose (possibly truncated) response differs in length from
        # its parent's cannot be aligned token by token for the KL term and is left out.
        n_resp = {s.id: sum(1 for x in e.labels if x != IGNORE) for s, e in zip(self.clean, self.encs)}
        self.twin_encs: dict[str, list] = {}
        for parent, options in twins.items():
            for t in options:
                e = encode_conversation(self.tokenizer, [m.model_dump() for m in t.messages], st.max_len,
                                        t.instruction)
                if parent in n_resp and sum(1 for x in e.labels if x != IGNORE) == n_resp[parent]:
                    self.twin_encs.setdefault(parent, []).append((t, e))
        self.task_index = {t: i for i, t in enumerate(sorted({s.task_id for s in self.clean}))}
        self.meta = [(i, s.task_id, s.phrasing_id) for i, s in enumerate(self.clean)]

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        self.model.train()
        with Progress(disable=not (self.progress and self.acc.is_main_process)) as prog:
            bar = prog.add_task("stage 1: training", total=self.total, completed=self.start)
            for step in range(self.start, self.total):
                ce = self._train_step(step)
                prog.update(bar, advance=1, description=f"stage 1: training (loss {ce:.3f})")

    def _micro_batches(self, step: int) -> list[list[int]]:
        """This rank's share of the step's micro-batches: a pure function of (seed, index)."""
        st, seed = self.st, self.cfg.seed
        micro = []
        for m in range(st.grad_accum):
            index = step * st.grad_accum + m
            if st.consistency.enabled:
                glob = compose_consistency_batch(self.meta, st.batch_size, batches.step_rng(seed, index))
            else:
                glob = batches.epoch_batch(len(self.clean), st.batch_size, index, seed)
            micro.append(batches.rank_slice(glob, self.acc.process_index, self.acc.num_processes))
        return micro

    def _train_step(self, step: int) -> float:
        st, acc, model = self.st, self.acc, self.model
        t0 = time.perf_counter()
        micro = self._micro_batches(step)
        n_labels = label_count(self.encs, micro, acc)
        sums = {"ce": 0.0, "con": 0.0, "adv": 0.0, "tokens": 0, "gap": None}
        for m, idx in enumerate(micro):
            with micro_batch_context(acc, model, last=m == len(micro) - 1):
                with self.autocast(), neftune(acc.unwrap_model(model), st.neftune_alpha):
                    loss, terms = self._loss_step(idx, step, len(micro), n_labels)
                acc.backward(loss * self.engine_factor if self.engine_factor != 1 else loss)
            for k in ("ce", "con", "adv", "tokens"):
                sums[k] += terms[k]
            if terms["gap"] is not None:
                sums["gap"] = terms["gap"]
        rec = optimizer_step(acc, self.params, self.optimizer, self.scheduler, self.clip, step)
        ce = batches.global_sum(sums["ce"], acc) / max(1, n_labels)
        record = {
            "step": step + 1, "lr": self.scheduler.get_last_lr()[0], "loss_ce": ce,
            "loss_consistency": sums["con"], "loss_adversarial": sums["adv"],
            "loss": ce + st.consistency.weight * sums["con"] + st.adversarial.weight * sums["adv"],
            "grad_norm": rec["grad_norm"], "clip_threshold": rec["clip_threshold"], "clipped": rec["clipped"],
            "tokens": batches.global_count(sums["tokens"], acc), "cosine_gap": sums["gap"],
            "step_time_s": time.perf_counter() - t0,
        }
        if due(step, st.eval_every, self.total):
            record["val"] = per_task_scores(acc.unwrap_model(model), self.tokenizer, self.val, self.val_encs,
                                            self.autocast_dtype, acc.device).mean
        end_step(acc, model, step, record, self.metrics, trackers=bool(st.trackers),
                 checkpoint_due=due(step, st.checkpoint_every, self.total),
                 save_checkpoint=lambda model_state: save_checkpoint(
                     self.ckpt_root, step + 1, acc.unwrap_model(model), self.optimizer, self.scheduler,
                     {"clip": self.clip.state_dict()}, st.keep_checkpoints, model_state=model_state))
        return ce

    def _loss_step(self, idx: list[int], step: int, n_micro: int, n_labels: int) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch and its terms: summed CE, SupCon, twin KL, token count, cosine gap."""
        st, acc, model = self.st, self.acc, self.model
        dev, world = acc.device, acc.num_processes
        items = [self.encs[i] for i in idx]
        batch = pack_batch(items, st.max_len, self.tokenizer.pad_token_id) if st.packing \
            else pad_batch(items, self.tokenizer.pad_token_id)
        fwd = {k: v.to(dev) for k, v in batch.items() if k not in ("labels", "instr_mask")}
        out = model(**fwd, output_hidden_states=st.consistency.enabled)
        ce_sum, _ = token_ce(out.logits, batch["labels"].to(dev))
        # Normalise by the global label count so DDP's gradient average equals one process.
        loss = ce_sum / max(1, n_labels) * world
        terms = {"ce": ce_sum.item(), "con": 0.0, "adv": 0.0, "gap": None}
        views_emb, views_lab = [], []
        if st.consistency.enabled and not st.packing:
            views_emb.append(pool_instruction(out.hidden_states[-1], batch["instr_mask"].to(dev)))
            views_lab += [self.task_index[self.clean[i].task_id] for i in idx]
        pay = st.adversarial.enabled and not st.packing and should_pay(step, st.adversarial.share, self.cfg.seed)
        pairs = [(j, self.twin_encs[self.clean[i].id]) for j, i in enumerate(idx)
                 if self.clean[i].id in self.twin_encs] if pay else []
        if pairs:
            rng = batches.step_rng(self.cfg.seed, step, salt=7)
            chosen = [rng.choice(options) for _, options in pairs]
            twin_batch = pad_batch([e for _, e in chosen], self.tokenizer.pad_token_id)
            twin_out = model(input_ids=twin_batch["input_ids"].to(dev),
                             attention_mask=twin_batch["attention_mask"].to(dev),
                             output_hidden_states=st.consistency.enabled)
            rows = torch.tensor([j for j, _ in pairs])
            kl = response_kl(twin_out.logits, out.logits[rows].detach(),
                             response_positions(twin_batch["labels"]).to(dev),
                             response_positions(batch["labels"][rows]).to(dev))
            loss = loss + st.adversarial.weight * kl / n_micro
            terms["adv"] = kl.item() / n_micro
            if st.consistency.enabled:
                views_emb.append(pool_instruction(twin_out.hidden_states[-1], twin_batch["instr_mask"].to(dev)))
                views_lab += [self.task_index[t.task_id] for t, _ in chosen]
        if views_emb:
            emb = torch.cat(views_emb).float()
            labels = torch.tensor(views_lab, device=dev)
            con = supcon_loss(emb, labels, st.consistency.temperature)
            loss = loss + st.consistency.weight * con / n_micro
            terms["con"] = con.item() / n_micro
            terms["gap"] = cosine_gap(emb.detach(), labels)
        mask = batch["attention_mask"]
        # A packed batch has no 2-D attention mask: count the non-first positions plus one per item.
        terms["tokens"] = int(mask.sum().item()) if mask.dim() == 2 \
            else int((batch["position_ids"] > 0).sum().item() + len(items))
        return loss, terms

    # ------------------------------------------------------------------ save + cleanup
    def save_and_cleanup(self) -> Path:
        return finish(self.acc, self.model, self.tokenizer, self.out_dir, merge=self.cfg.model.merge_adapter)


def train_stage1(cfg: PipelineConfig, samples: list, model_path: str, out_dir: Path, *,
                 max_steps: int | None = None, progress: bool = True) -> Path:
    """Run stage 1 from ``model_path`` on ``samples`` and save an HF model under ``out_dir``."""
    recipe = Stage1Recipe(cfg, samples, model_path, out_dir, max_steps, progress)
    recipe.setup()
    recipe.train()
    return recipe.save_and_cleanup()
