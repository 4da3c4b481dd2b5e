"""Training throughput: mixtune stage 1 vs TRL ``SFTTrainer``, and the cost of each mechanism.

Both sides train the same tiny model (fp32 weights, bf16 autocast), on the same clean stage-1
conversations, with the same max length, batch size, learning rate, packing setting and number of
steps; mixtune's mechanisms are all off for the head-to-head. Tokens/s counts non-padding tokens
only and uses the wall time of the training steps alone (forward, backward, clip, optimizer
step), the first ``WARM`` steps dropped on both sides: mixtune's per-step ``step_time_s`` and
``tokens`` from metrics.jsonl; TRL's time from ``on_step_begin`` to ``on_step_end`` of a callback
and its tokens from the attention mask (or the packed length) of the inputs of that step.
Repetitions are interleaved (A, B, A, B ...) so drift in machine load hits every variant alike.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from mixtune.bench import fixtures
from mixtune.bench.harness import Context, row, summarize
from mixtune.bench.real_model import trl_train  # the same SFTTrainer baseline as the real-model suite
from mixtune.train.stage1 import train_stage1

WARM = 2
ALL_OFF = {"stage1.consistency.enabled": False, "stage1.adversarial.enabled": False, "stage1.clip.policy": "none",
           "stage1.neftune_alpha": 0.0, "stage1.packing": False}
MECHANISMS = {
    "consistency (SupCon)": {"stage1.consistency.enabled": True},
    "adversarial (twin KL)": {"stage1.adversarial.enabled": True},
    "decay clip": {"stage1.clip.policy": "decay"},
    "zclip": {"stage1.clip.policy": "zclip"},
    "neftune (alpha 5)": {"stage1.neftune_alpha": 5.0},
    "packing": {"stage1.packing": True},
}


def sizes(ctx: Context) -> dict:
    return {"steps": 12 if ctx.full else 4, "n_per_task": 40 if ctx.full else 12,
            "batch_size": 16 if ctx.full else 8, "max_len": 256}


def setup(ctx: Context) -> tuple:
    """Dataset, tiny model and the all-off stage-1 config shared by the throughput runs."""
    sz = sizes(ctx)
    cfg = fixtures.demo_config()
    samples, source = fixtures.load_dataset(ctx.work, n_per_task=sz["n_per_task"], seed=ctx.seeds[0], cfg=cfg)
    model = fixtures.tiny_model(ctx.work, samples, fixtures.model_shape(cfg, ctx.tier), seed=ctx.seeds[0])
    base = fixtures.with_updates(cfg, {**ALL_OFF, "seed": ctx.seeds[0], "stage1.batch_size": sz["batch_size"],
                                "stage1.max_len": sz["max_len"], "stage1.eval_every": 10_000,
                                "stage1.checkpoint_every": 10_000, "stage1.warmup_steps": 0})
    stage1 = [s for s in samples if s.stage == 1]
    return sz, base, stage1, model, source


def mixtune_run(cfg, samples: list, model: str, work: Path, steps: int) -> dict:
    """Train ``steps`` stage-1 steps; tokens/s over the steps after the warm-up ones."""
    out = work / f"tp_{time.monotonic_ns()}"
    train_stage1(cfg, samples, model, out, max_steps=steps, progress=False)
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()][WARM:]
    shutil.rmtree(out, ignore_errors=True)
    tokens, secs = sum(r["tokens"] for r in recs), sum(r["step_time_s"] for r in recs)
    seq = tokens / max(1, len(recs)) / cfg.stage1.batch_size
    return {"tokens_per_s": tokens / secs, "tokens": tokens, "seconds": secs, "mean_seq_len": seq}


def run(ctx: Context) -> dict:
    sz, base, stage1, model, source = setup(ctx)
    variants = {"all_off": base, **{k: fixtures.with_updates(base, v) for k, v in MECHANISMS.items()}}
    tps: dict[str, list[float]] = {k: [] for k in ["trl", *variants]}
    seq: list[float] = []
    order = ["trl", *variants]
    for rep in range(ctx.repetitions):
        ctx.log(f"  throughput repetition {rep + 1}/{ctx.repetitions}")
        # Reverse the order on odd repetitions so no variant always runs first or last, while TRL
        # and all-off stay adjacent in time (their per-repetition ratio is the headline number).
        for name in (order if rep % 2 == 0 else order[::-1]):
            if name == "trl":
                tps["trl"].append(trl_train(base, stage1, model, ctx.work, sz["steps"], peak_rss=False)["tokens_per_s"])
                continue
            r = mixtune_run(variants[name], stage1, model, ctx.work, sz["steps"])
            tps[name].append(r["tokens_per_s"])
            if name == "all_off":
                seq.append(r["mean_seq_len"])
    # Ratio per repetition (paired in time), then its median: robust to load drift between pairs.
    ratio = summarize([a / b for a, b in zip(tps["all_off"], tps["trl"])])
    mt, trl = summarize(tps["all_off"]), summarize(tps["trl"])
    rows = [row("stage-1 training, mechanisms off, vs TRL SFTTrainer", mt, unit="tok/s", baseline=trl,
                baseline_name="TRL", ratio=ratio["median"], target="≥ 0.8×",
                note="non-padding tokens / training-step wall time")]
    costs = {}
    for name in MECHANISMS:
        r = summarize([a / b for a, b in zip(tps[name], tps["all_off"])])
        costs[name] = {"tokens_per_s": summarize(tps[name]), "ratio_vs_all_off": r["median"]}
        rows.append(row(f"cost of {name}", summarize(tps[name]), unit="tok/s", baseline=mt, baseline_name="all off",
                        ratio=r["median"], note="ratio < 1 = slower than all-off"))
    return {"mixtune_tokens_per_s": mt["median"], "trl_tokens_per_s": trl["median"], "ratio": ratio["median"],
            "ratio_spread": ratio, "mechanisms": costs, "table": rows, "repetitions": ctx.repetitions,
            "mean_seq_len": summarize(seq)["median"],
            "setup": (f"tiny Llama {fixtures.model_shape(fixtures.demo_config(), ctx.tier)}; {len([s for s in stage1 if s.split == 'train' and not s.parent_id])} "
                      f"clean stage-1 train conversations ({source}); batch {sz['batch_size']}, max_len {sz['max_len']}, "
                      f"{sz['steps']} steps ({WARM} warm-up steps dropped), bf16 autocast, packing off (packing row: "
                      "mixtune's block-diagonal packing only). TRL: prompt-completion conversational data with "
                      "completion-only loss (equals mixtune's assistant-only loss on these single-turn samples), "
                      "gradient checkpointing off, no clipping (max_grad_norm 1e9) like mixtune's all-off. TRL's "
                      "step time excludes its collation (done before on_step_begin); mixtune's includes padding.")}
