"""Stage-2 mixing ablation: baselines vs mixtune's heat policy ± curriculum ± modulation.

Per seed: ONE shared stage-1 model (the stage-1 ablation's ``full`` variant, reused when already
trained), then stage 2 once per method with identical steps, batch, learning rate and evaluation
cadence. Baselines run as the plain samplers they are elsewhere (curriculum and modulation off);
``mixtune`` is heat + curriculum + modulation (the demo setting), the two ablations drop one each.

- ``mean_score`` / ``worst_task_score``: teacher-forced answer accuracy on the held-out test split,
  mean over tasks and the lowest task, averaged over seeds;
- ``steps_to_uniform_final_worst``: first evaluation step at which the method's worst-task
  validation score (metrics.jsonl ``val``, same cadence for all) reaches uniform's final
  worst-task validation score of the same seed; averaged over the seeds where it is reached
  (``reached`` says in how many), ``None`` if never.
"""

from __future__ import annotations

from pathlib import Path

from mixtune.bench import ablations, fixtures
from mixtune.bench.harness import Context, row

METHODS = {
    "uniform": {"stage2.mixing.method": "uniform", "stage2.curriculum.enabled": False, "stage2.modulation.enabled": False},
    "static": {"stage2.mixing.method": "static", "stage2.curriculum.enabled": False, "stage2.modulation.enabled": False},
    "dbl": {"stage2.mixing.method": "dbl", "stage2.curriculum.enabled": False, "stage2.modulation.enabled": False},
    "exp3": {"stage2.mixing.method": "exp3", "stage2.curriculum.enabled": False, "stage2.modulation.enabled": False},
    "mixtune": {"stage2.mixing.method": "heat", "stage2.curriculum.enabled": True, "stage2.modulation.enabled": True},
    "mixtune_no_curriculum": {"stage2.mixing.method": "heat", "stage2.curriculum.enabled": False,
                              "stage2.modulation.enabled": True},
    "mixtune_no_modulation": {"stage2.mixing.method": "heat", "stage2.curriculum.enabled": True,
                              "stage2.modulation.enabled": False},
}


def train_method(ctx: Context, cfg, samples: list, s1: str, name: str) -> tuple[str, list[tuple[int, float]]]:
    """Stage 2 for one method; returns the model path and its (step, worst-task val score) curve."""
    import shutil

    from mixtune.data.ontology import load_ontology
    from mixtune.rules import RuleEngine, RuleSet
    from mixtune.train.stage2 import train_stage2

    onto = load_ontology(cfg.resolve(cfg.data.ontology))
    out = ctx.work / f"s2_{name}_seed{cfg.seed}"
    shutil.rmtree(out, ignore_errors=True)
    train_stage2(cfg, samples, s1, out, business_value={t.id: t.business_value for t in onto.tasks.values()},
                 groups={t.id: t.group for t in onto.tasks.values()},
                 families={t.id: t.family for t in onto.tasks.values()},
                 chains=[list(c.steps) for c in onto.chains.values()], rejection={},
                 engine=RuleEngine(RuleSet.load(cfg.resolve(cfg.data.rules))), progress=False)
    curve = [(r["step"], min(r["val"].values())) for r in ablations.read_metrics(out / "metrics.jsonl") if r.get("val")]
    return str(out / "model"), curve


def plot(curves: dict[str, list[list[tuple[int, float]]]], methods: dict, path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, runs) in enumerate(curves.items()):
        steps = [s for s, _ in runs[0]]
        ys = [ablations.mean(r[k][1] for r in runs if k < len(r)) for k in range(len(steps))]
        a.plot(steps, ys, label=name, color=f"C{i}", lw=2 if name.startswith("mixtune") else 1.2,
               ls="-" if name.startswith("mixtune") else "--")
    a.set_xlabel("stage-2 step")
    a.set_ylabel("worst-task val score (seed mean)")
    a.legend(fontsize=7)
    names = list(methods)
    x = range(len(names))
    b.bar([i - 0.2 for i in x], [methods[n]["mean_score"] for n in names], 0.4, label="mean task")
    b.bar([i + 0.2 for i in x], [methods[n]["worst_task_score"] for n in names], 0.4, label="worst task")
    b.set_xticks(list(x), names, rotation=30, fontsize=7)
    b.set_ylabel("held-out test score (seed mean)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def run(ctx: Context) -> dict:
    sz = ablations.sizes(ctx.full)
    per: dict[str, list[dict]] = {m: [] for m in METHODS}
    curves: dict[str, list] = {m: [] for m in METHODS}
    source = ""
    stage1_used: list[str] = []
    for seed in ctx.seeds:
        samples, base, source = ablations.seed_inputs(ctx.work, seed, sz)
        cfg = ablations.base_config(seed, sz)
        s1 = ablations.stage1_model(ctx.work, cfg, samples, base, "full", reuse_any=True)
        stage1_used.append(Path(s1).parent.name)
        test = [s for s in samples if s.split == "test" and not s.parent_id]
        uniform_final = None
        for name, upd in METHODS.items():
            ctx.log(f"  mixing seed {seed}: {name}")
            path, curve = train_method(ctx, fixtures.with_updates(cfg, upd), samples, s1, name)
            model, tok = ablations.load_for_scoring(path)
            tasks = ablations.per_task(test, ablations.score(model, tok, test, cfg.stage2.max_len))
            if name == "uniform":
                uniform_final = curve[-1][1]
            reach = next((s for s, w in curve if w >= uniform_final), None)
            per[name].append({"mean_score": ablations.mean(tasks.values()), "worst_task_score": min(tasks.values()),
                              "worst_task": min(tasks, key=tasks.get), "steps_to_uniform_final_worst": reach,
                              "per_task": tasks})
            curves[name].append(curve)
    methods = {}
    for name, rs in per.items():
        reached = [r["steps_to_uniform_final_worst"] for r in rs if r["steps_to_uniform_final_worst"] is not None]
        methods[name] = {"mean_score": ablations.mean(r["mean_score"] for r in rs),
                         "worst_task_score": ablations.mean(r["worst_task_score"] for r in rs),
                         "steps_to_uniform_final_worst": ablations.mean(reached), "reached": f"{len(reached)}/{len(rs)}",
                         "per_seed": rs}
    u = methods["uniform"]
    best_base = max(("uniform", "static", "dbl", "exp3"), key=lambda n: methods[n]["worst_task_score"])
    table = []
    for name, m in methods.items():
        steps = m["steps_to_uniform_final_worst"]
        table.append(row(f"{name}: mean / worst-task test score", f"{m['mean_score']:.3f} / {m['worst_task_score']:.3f}",
                         baseline=f"{u['mean_score']:.3f} / {u['worst_task_score']:.3f}", baseline_name="uniform",
                         ratio=m["worst_task_score"] / u["worst_task_score"] if u["worst_task_score"] else None,
                         note=f"steps to uniform's final worst: {steps if steps is None else round(steps)} "
                              f"(reached {m['reached']} seeds)" + ("; strongest baseline" if name == best_base else "")))
    ctx.plots.mkdir(parents=True, exist_ok=True)
    png = plot(curves, methods, ctx.plots / "mixing_ablation.png")
    return {"methods": methods, "table": table, "plots": [png], "repetitions": len(ctx.seeds),
            "strongest_baseline": best_base, "stage1_models": stage1_used,
            "setup": f"tiny Llama {sz['shape']}; shared stage-1 model per seed ({sz['s1_steps']} steps); stage 2 "
                     f"{sz['s2_steps']} steps, batch {sz['batch']}, eval every {sz['eval_every']} steps on "
                     f"{sz['val_per_task']} val samples/task; data n_per_task {sz['n_per_task']} ({source}); ratio = worst-task score / "
                     "uniform's"}
