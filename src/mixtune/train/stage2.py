"""Stage 2 — multi-task co-optimisation. Reads top to bottom: setup → train → save → cleanup.

Every optimizer step trains on ONE task (task-homogeneous micro-batches) drawn by the mixture
sampler from the mixing policy's weights and the curriculum's level distribution, so per-group
gradient modulation needs no extra backward pass: ``logic`` steps scale the loss by a gain, ``style``
steps replace their gradient by its EMA (kept by the modulation object), ``safety`` steps add an
unlikelihood term on tokens the rule engine flags in the prompt (PII, promise words) so the model
does not copy them. Every ``eval_every`` steps an evaluation cycle scores each task on validation
data and the policy, curriculum and modulation take their decisions, logged with their inputs to
``mixing_log.jsonl``. On resume the log is rewound to the checkpoint's cycle, so replayed cycles
are not written twice.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from rich.progress import Progress

from mixtune.config import PipelineConfig
from mixtune.errors import DataError
from mixtune.eval.backends import HFBackend
from mixtune.mixing.curriculum import Curriculum
from mixtune.mixing.factory import make_policy
from mixtune.mixing.log import MixingLog, make_record
from mixtune.mixing.modulation import make_modulation
from mixtune.mixing.sampler import MixtureSampler
from mixtune.train import batches
from mixtune.train.checkpoint import save_checkpoint
from mixtune.train.clip import ClipSchedule
from mixtune.train.collate import IGNORE, pad_batch, token_ids_for_spans
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
from mixtune.train.orchestrate import carry_forward, related_pairs, side_by_side


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


# (cycle, model version, {task: [{prompt, output, reference, sample_id}]}) -> {task: (rejection rate, verdicts)}
ReviewFn = Callable[[int, str, dict[str, list[dict]]], dict[str, tuple[float, int]]]


def style_ema_in_use(cfg: PipelineConfig) -> float:
    """Stage 2's style-EMA factor when its modulation rewrites gradients, else 0."""
    mod = cfg.stage2.modulation
    return mod.style_ema if mod.enabled and mod.method == "groups" else 0.0


class Stage2Recipe:
    """One stage-2 run; :func:`train_stage2` calls setup, train, save and cleanup in order."""

    def __init__(self, cfg: PipelineConfig, samples: list, model_path: str, out_dir: Path, *,
                 business_value: dict[str, float], groups: dict[str, str], families: dict[str, str],
                 chains: list[list[str]], rejection: dict[str, float], engine, mixing_log: Path | None,
                 max_steps: int | None, progress: bool, review_outputs: ReviewFn | None = None,
                 review_k: int = 2, review_max_new_tokens: int = 48):
        self.cfg, self.st, self.samples, self.model_path, self.out_dir = cfg, cfg.stage2, samples, model_path, out_dir
        self.business_value, self.groups, self.families, self.chains = business_value, groups, families, chains
        self.rejection, self.engine = rejection, engine
        self.review_outputs, self.review_k, self.review_max_new_tokens = review_outputs, review_k, review_max_new_tokens
        self.mixing_log_path = mixing_log or out_dir / "mixing_log.jsonl"
        self.total = max_steps or self.st.steps
        self.progress = progress

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        st = self.st
        self.acc, self.autocast = setup_accelerator(st.precision, st.trackers, self.out_dir, self.cfg.seed,
                                                    "stage2.trackers")
        self.autocast_dtype = DTYPES[st.precision]
        self.engine_factor = engine_loss_factor(self.acc, st.grad_accum)
        refuse_engine_owned_options(self.acc, 2, st.clip.policy, style_ema_in_use(self.cfg))
        base = stacking_base(self.acc, self.model_path, self.out_dir)
        self.model, self.tokenizer = load_from_model_config(self.cfg.model, base,
                                                            gradient_checkpointing=st.gradient_checkpointing)
        warn_unusual_lr(self.acc, "stage2.lr", self.cfg.model.finetune, st.lr, self.model)
        self._setup_data()
        self._setup_mixing()
        optimizer = make_optimizer(self.model, st.lr, st.weight_decay)
        self.scheduler = make_scheduler(optimizer, st.lr_schedule, st.warmup_steps, self.total)
        self.clip = ClipSchedule(st.clip.policy, st.clip.schedule, st.clip.start, st.clip.end, self.total,
                                 zclip_z=st.clip.zclip_z, zclip_alpha=st.clip.zclip_alpha)
        self.model, self.optimizer = self.acc.prepare(self.model, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ckpt_root = self.out_dir / "checkpoints"
        self._resume()
        if st.trackers:
            self.acc.init_trackers("mixtune-stage2", config={"steps": self.total, "lr": st.lr})

    def _setup_data(self) -> None:
        st = self.st
        train = [s for s in self.samples if s.split == "train" and not s.parent_id]
        if not train:
            raise DataError("no training samples (split=train) in the dataset", where=str(self.out_dir))
        if st.context_orchestration:
            rng = random.Random(self.cfg.seed + 17)
            extra = carry_forward([s for s in train if len(s.chain_steps) > 1], rng)
            extra += side_by_side(train, related_pairs(self.families, self.chains), rng, n=len(train) // 10)
            train += extra
        self.train_samples = train
        self.val = first_per_task([s for s in self.samples if s.split == "val" and not s.parent_id],
                                  st.eval_samples_per_task)
        with Progress(disable=not (self.progress and self.acc.is_main_process)) as prog:
            self.encs = encode_samples(self.tokenizer, train, st.max_len, prog, "stage 2: tokenising",
                                       where="stage2.max_len" if self.acc.is_main_process else None)
            self.val_encs = encode_samples(self.tokenizer, self.val, st.max_len)
        for s, e in zip(train, self.encs):  # unlikelihood negatives: flagged spans of the prompt
            if self.engine is not None and self.groups.get(s.task_id) == "safety":
                prompt = " ".join(m.content for m in s.messages if m.role == "user")
                spans = [(a, b) for a, b, _ in self.engine.flag_spans(prompt)]
                e.neg_ids = token_ids_for_spans(self.tokenizer, prompt, spans)

    def _setup_mixing(self) -> None:
        st, seed = self.st, self.cfg.seed
        tasks = sorted({s.task_id for s in self.train_samples})
        mix, cur, mod = st.mixing, st.curriculum, st.modulation
        self.policy = make_policy(mix.method, tasks, {t: self.business_value.get(t, 1.0) for t in tasks},
                                  eta=mix.eta, uniform_mix=mix.uniform_mix, floor=mix.floor, cap=mix.cap,
                                  ema=mix.ema, heat_weights=mix.heat_weights, seed=seed,
                                  sizes=Counter(s.task_id for s in self.train_samples))
        self.curriculum = Curriculum(tasks, cur.early, cur.middle, cur.late,
                                     mastery_threshold=cur.mastery_threshold, mastery_cycles=cur.mastery_cycles,
                                     enabled=cur.enabled, pacing=cur.pacing, c0=cur.c0, thresholds=cur.thresholds)
        self.modulation = make_modulation(mod.method, enabled=mod.enabled, logic_gain=mod.logic_gain,
                                          style_ema=mod.style_ema, safety_unlikelihood=mod.safety_unlikelihood,
                                          lr=mod.lr, seed=seed if mod.seed is None else mod.seed)
        world = self.acc.num_processes
        self.sampler = MixtureSampler([(i, s.task_id, s.level) for i, s in enumerate(self.train_samples)],
                                      self.policy, self.curriculum, max(1, st.batch_size * st.grad_accum // world),
                                      seed, rank=self.acc.process_index, world_size=world)

    def _resume(self) -> None:
        state = resume(self.ckpt_root, self.acc, self.model, self.optimizer, self.scheduler, "stage 2")
        self.start, self.cycle = 0, 0
        if state is not None:
            for obj, key in ((self.clip, "clip"), (self.policy, "policy"), (self.curriculum, "curriculum"),
                             (self.sampler, "sampler")):
                obj.load_state_dict(state[key])
            # Checkpoints written before the modulation owned the style step count kept it at the top level.
            self.modulation.load_state_dict({"style_steps": state.get("style_steps", 0), **state["modulation"]})
            self.modulation.load_style_buffers(state.get("extra", {}).get("style_ema", []), self.params)
            self.start, self.cycle = state["step"], state["cycle"]
        main = self.acc.is_main_process
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl", resume_from_step=self.start) if main else None
        self.log = MixingLog(self.mixing_log_path) if main else None
        if self.log and self.start == 0 and self.log.path.exists():
            self.log.path.unlink()
        elif self.log:  # cycles after the checkpoint are replayed: drop their records
            self.log.rewind(self.cycle)

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        self.model.train()
        with Progress(disable=not (self.progress and self.acc.is_main_process)) as prog:
            bar = prog.add_task("stage 2: training", total=self.total, completed=self.start)
            for step in range(self.start, self.total):
                ce = self._train_step(step)
                prog.update(bar, advance=1, description=f"stage 2: training (loss {ce:.3f})")

    def _train_step(self, step: int) -> float:
        st, acc, model = self.st, self.acc, self.model
        t0 = time.perf_counter()
        task, idx = self.sampler.next_batch(step / self.total)
        group = self.groups.get(task, "general")
        per_rank = max(1, len(idx) // st.grad_accum)
        micro = [idx[m * per_rank:(m + 1) * per_rank] for m in range(st.grad_accum)]
        micro = [mb for mb in micro if mb]
        n_labels = label_count(self.encs, micro, acc)
        scale = self.modulation.loss_scale(group)
        ul_w = self.modulation.unlikelihood_weight(group)
        sums = {"ce": 0.0, "ul": 0.0, "tokens": 0}
        for m, mb in enumerate(micro):
            with micro_batch_context(acc, model, last=m == len(micro) - 1):
                with self.autocast():
                    loss, terms = self._loss_step(mb, scale, ul_w, len(micro), n_labels)
                acc.backward(loss * self.engine_factor if self.engine_factor != 1 else loss)
            for k in sums:
                sums[k] += terms[k]
        self.modulation.observe(group, sums["ce"] / max(1, n_labels))
        if group == "style":
            self.modulation.smooth_style_(self.params)
        rec = optimizer_step(acc, self.params, self.optimizer, self.scheduler, self.clip, step)
        ce = batches.global_sum(sums["ce"], acc) / max(1, n_labels)
        record = {"step": step + 1, "task": task, "group": group, "lr": self.scheduler.get_last_lr()[0],
                  "loss": ce * scale + ul_w * sums["ul"], "loss_ce": ce, "loss_unlikelihood": sums["ul"],
                  "loss_consistency": 0.0, "loss_adversarial": 0.0, "loss_scale": scale,
                  "grad_norm": rec["grad_norm"], "clip_threshold": rec["clip_threshold"],
                  "clipped": rec["clipped"], "tokens": batches.global_count(sums["tokens"], acc),
                  "step_time_s": time.perf_counter() - t0}
        if due(step, st.eval_every, self.total):
            record["val"] = self._evaluation_cycle(step)
        end_step(acc, model, step, record, self.metrics, trackers=bool(st.trackers),
                 checkpoint_due=due(step, st.checkpoint_every, self.total),
                 save_checkpoint=lambda model_state: self._save_checkpoint(step, model_state))
        return ce

    def _loss_step(self, mb: list[int], scale: float, ul_w: float, n_micro: int,
                   n_labels: int) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch and its terms: summed CE, unlikelihood, token count."""
        dev = self.acc.device
        items = [self.encs[i] for i in mb]
        batch = pad_batch(items, self.tokenizer.pad_token_id)
        out = self.model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev))
        ce_sum, _ = token_ce(out.logits, batch["labels"].to(dev))
        # Normalise by the global label count so DDP's gradient average equals one process.
        loss = ce_sum / max(1, n_labels) * self.acc.num_processes
        terms = {"ce": ce_sum.item(), "ul": 0.0, "tokens": int(batch["attention_mask"].sum())}
        if ul_w > 0:
            ul = unlikelihood(out.logits, batch["labels"], [x.neg_ids for x in items])
            loss = loss + ul_w * ul / n_micro
            terms["ul"] = ul.item() / n_micro
        return loss * scale, terms

    def _evaluation_cycle(self, step: int) -> dict[str, float]:
        """Score every task, let policy and curriculum decide, log the decisions; the per-task scores."""
        self.cycle += 1
        scores = per_task_scores(self.acc.unwrap_model(self.model), self.tokenizer, self.val, self.val_encs,
                                 self.autocast_dtype, self.acc.device)
        rejection, verdicts = self.rejection, {}
        if self.review_outputs is not None:
            rejection, verdicts = self._live_rejection(step)
        decision = self.policy.update(self.cycle, step + 1, scores.mean, scores.per_sample, scores.loss, rejection)
        promotions = self.curriculum.update(self.cycle, scores.mean)
        if self.log:
            self.log.append(make_record(decision, self.curriculum.levels(), promotions, self.modulation.factors(),
                                        losses=scores.loss, rejection=rejection, progress=(step + 1) / self.total,
                                        **({"rejection_verdicts": verdicts} if self.review_outputs else {})))
        return scores.mean

    def _live_rejection(self, step: int) -> tuple[dict[str, float], dict[str, int]]:
        """Sample k outputs per task from the current model, have them reviewed, return the rates.

        Only the main process generates and asks the review store; the rates are broadcast so every
        rank's policy takes the same decision.
        """
        box = [None]
        if self.acc.is_main_process:
            picked = first_per_task(self.val, self.review_k)
            model = self.acc.unwrap_model(self.model)
            gen = HFBackend.from_model(model, self.tokenizer, device=self.acc.device)
            prompts = [[next(m for m in s.messages if m.role == "user").model_dump()] for s in picked]
            model.eval()  # greedy decoding draws no random numbers: the training stream is untouched
            texts = gen.generate(prompts, max_new_tokens=self.review_max_new_tokens)
            model.train()
            outputs: dict[str, list[dict]] = {}
            for s, conv, text in zip(picked, prompts, texts):
                reference = next((m.content for m in s.messages if m.role == "assistant"), "")
                outputs.setdefault(s.task_id, []).append(
                    {"prompt": conv[0]["content"], "output": text, "reference": reference, "sample_id": s.id})
            box[0] = self.review_outputs(self.cycle, f"{self.out_dir}@step{step + 1}", outputs)
        if self.acc.num_processes > 1:
            broadcast_object_list(box)
        rates = box[0]
        return {t: float(r) for t, (r, _) in rates.items()}, {t: int(n) for t, (_, n) in rates.items()}

    def _save_checkpoint(self, step: int, model_state: dict) -> None:
        save_checkpoint(self.ckpt_root, step + 1, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler, {
            "cycle": self.cycle, "clip": self.clip.state_dict(), "policy": self.policy.state_dict(),
            "curriculum": self.curriculum.state_dict(), "modulation": self.modulation.state_dict(),
            "sampler": self.sampler.state_dict()},
            self.st.keep_checkpoints, extra_tensors={"style_ema": self.modulation.style_buffers()},
            model_state=model_state)

    # ------------------------------------------------------------------ save + cleanup
    def save_and_cleanup(self) -> Path:
        if self.acc.is_main_process:
            (self.out_dir / "final_weights.json").parent.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "final_weights.json").write_text(json.dumps(self.policy.weights(), indent=1))
        return finish(self.acc, self.model, self.tokenizer, self.out_dir, merge=self.cfg.model.merge_adapter)


def train_stage2(cfg: PipelineConfig, samples: list, model_path: str, out_dir: Path, *,
                 business_value: dict[str, float], groups: dict[str, str], families: dict[str, str],
                 chains: list[list[str]], rejection: dict[str, float], engine=None,
                 mixing_log: Path | None = None, max_steps: int | None = None, progress: bool = True,
                 review_outputs: ReviewFn | None = None, review_k: int = 2, review_max_new_tokens: int = 48) -> Path:
    """Run stage 2 from ``model_path`` (the stage-1 model) and save an HF model under ``out_dir``.

    ``rejection`` is a fixed per-task human rejection rate. With ``review_outputs`` the rate is
    live instead: at every evaluation cycle ``review_k`` greedy outputs per task of the current
    model go to that callable (the review store and its reviewers), whose per-task rates and
    verdict counts feed the heat engine and ``mixing_log.jsonl``.
    """
    recipe = Stage2Recipe(cfg, samples, model_path, out_dir, business_value=business_value, groups=groups,
                          families=families, chains=chains, rejection=rejection, engine=engine,
                          mixing_log=mixing_log, max_steps=max_steps, progress=progress,
                          review_outputs=review_outputs, review_k=review_k,
                          review_max_new_tokens=review_max_new_tokens)
    recipe.setup()
    recipe.train()
    return recipe.save_and_cleanup()
