"""Stage-1 ablations: the consistency (SupCon) term and the adversarial twin-KL term, on and off.

Per seed, one dataset and base model; variants ``full`` (both on, the demo setting),
``no_consistency`` and ``no_adversarial`` train stage 1 with identical steps, batch and data
order seed. Measured on the held-out test split (clean stage-1 samples and their perturbed twins,
made by the data layer's perturbation generator):

- ``score``: mean teacher-forced answer accuracy on clean test samples;
- ``phrasing_spread``: per task, max − min of the mean score over instruction phrasings, averaged
  over tasks (lower = the model answers the same whatever the wording);
- ``cosine_gap``: intra-task minus inter-task cosine of pooled instruction embeddings;
- ``perturbation_drop``: score on clean parents minus score on their perturbed twins (paired).
"""

from __future__ import annotations

import statistics

import torch

from mixtune.bench import ablations, fixtures
from mixtune.bench.harness import Context, row, summarize
from mixtune.train.collate import pad_batch
from mixtune.train.loop import encode_samples
from mixtune.train.supcon import cosine_gap, pool_instruction

VARIANTS = {"full": {}, "no_consistency": {"stage1.consistency.enabled": False},
            "no_adversarial": {"stage1.adversarial.enabled": False}}
METRICS = ("score", "phrasing_spread", "cosine_gap", "perturbation_drop")


def cosine_gap_of(model, tok, samples: list, max_len: int) -> float:
    encs = encode_samples(tok, samples, max_len)
    tasks = sorted({s.task_id for s in samples})
    embs = []
    with torch.no_grad():
        for i in range(0, len(encs), 32):
            b = pad_batch(encs[i:i + 32], tok.pad_token_id)
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
            embs.append(pool_instruction(out.hidden_states[-1].float(), b["instr_mask"]))
    labels = torch.tensor([tasks.index(s.task_id) for s in samples])
    return float(cosine_gap(torch.cat(embs), labels))


def evaluate(model_path: str, test: list, max_len: int) -> dict:
    """The four stage-1 metrics of one trained model."""
    model, tok = ablations.load_for_scoring(model_path)
    clean = [s for s in test if not s.parent_id]
    twins = [s for s in test if s.parent_id]
    by_id = {s.id: s for s in clean}
    twins = [t for t in twins if t.parent_id in by_id]
    sc = dict(zip([s.id for s in clean], ablations.score(model, tok, clean, max_len), strict=True))
    tw = ablations.score(model, tok, twins, max_len)
    spread = []
    for t in sorted({s.task_id for s in clean}):
        by_p: dict[int, list[float]] = {}
        for s in clean:
            if s.task_id == t:
                by_p.setdefault(s.phrasing_id, []).append(sc[s.id])
        means = [statistics.fmean(v) for v in by_p.values()]
        if len(means) > 1:
            spread.append(max(means) - min(means))
    drop = [sc[t.parent_id] - v for t, v in zip(twins, tw, strict=True)]
    return {"score": statistics.fmean(sc.values()), "phrasing_spread": ablations.mean(spread),
            "cosine_gap": cosine_gap_of(model, tok, clean, max_len), "perturbation_drop": ablations.mean(drop),
            "n_clean": len(clean), "n_twins": len(twins)}


def plot(variants: dict, path) -> str:
    # why: the Agg backend must be chosen before pyplot loads (headless, no display)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3))
    names = list(variants)
    for ax, m in zip(axes, METRICS, strict=True):
        ax.bar(names, [variants[n][m] or 0.0 for n in names], color=["C0", "C1", "C2"][: len(names)])
        ax.set_title(m, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle("stage-1 ablation (seed mean, held-out test)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def run(ctx: Context) -> dict:
    sz = ablations.sizes(ctx.full)
    per_seed: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    source = ""
    for seed in ctx.seeds:
        samples, base, source = ablations.seed_inputs(ctx.work, seed, sz)
        cfg = ablations.base_config(seed, sz)
        test = [s for s in samples if s.split == "test" and s.stage == 1]
        for name, upd in VARIANTS.items():
            ctx.log(f"  stage-1 ablation seed {seed}: {name}")
            path = ablations.stage1_model(ctx.work, fixtures.with_updates(cfg, upd), samples, base, name)
            per_seed[name].append(evaluate(path, test, cfg.stage1.max_len))
    variants = {n: {m: ablations.mean(r[m] for r in rs) for m in METRICS} | {"per_seed": rs} for n, rs in per_seed.items()}
    full = variants["full"]
    table = []
    labels = {"score": "clean test score", "phrasing_spread": "per-phrasing score spread (lower better)",
              "cosine_gap": "instruction cosine gap (higher better)",
              "perturbation_drop": "score drop under perturbation (lower better)"}
    for other, what in (("no_consistency", ("score", "phrasing_spread", "cosine_gap")),
                        ("no_adversarial", ("score", "perturbation_drop"))):
        for m in what:
            seeds_full = summarize([r[m] for r in per_seed["full"] if r[m] is not None])
            seeds_other = summarize([r[m] for r in per_seed[other] if r[m] is not None])
            table.append(row(f"{labels[m]}: full vs {other}", seeds_full, baseline=seeds_other,
                             baseline_name=other, note=f"median [min–max] over {len(ctx.seeds)} seeds; "
                                                        f"means {full[m]:.3f} vs {variants[other][m]:.3f}"))
    ctx.plots.mkdir(parents=True, exist_ok=True)
    png = plot(variants, ctx.plots / "stage1_ablation.png")
    return {"variants": variants, "table": table, "plots": [png], "repetitions": len(ctx.seeds),
            "setup": f"tiny Llama {sz['shape']}; {sz['s1_steps']} stage-1 steps, batch {sz['batch']}; data: "
                     f"n_per_task {sz['n_per_task']} ({source}); test twins: every clean stage-1 test sample"}
