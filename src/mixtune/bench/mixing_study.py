"""Statistics of the mixing study: per-method summaries, strongest baseline, paired bootstrap, plots.

Input is a list of run records, one per (scenario, seed, method), as the runner in
:mod:`mixtune.bench.mixing` writes them: ``test`` maps task → per-sample teacher-forced test scores
(the same samples, in the same order, for every method of a scenario and seed), ``curve`` is the
list of ``[step, {task: val score}]`` evaluation cycles.

- ``mean_score`` / ``worst_task_score``: per seed, the mean over tasks and the lowest task of the
  per-task test means; then averaged over seeds.
- ``steps_to_target_ratio``: per seed the target is uniform's final worst-task validation score;
  a method's steps-to-target is the first evaluation step whose worst-task validation score reaches
  it (a seed that never reaches it counts as the full budget, so the ratio is then a lower bound;
  ``reached`` says how often it happened). Ratio = mean steps of the method / mean steps of uniform.
- ``default_vs_strongest``: the default's worst-task score minus the strongest baseline's (best
  mean worst-task score among the baselines), with a paired, two-level bootstrap 95% CI:
  seeds are resampled, and within every drawn seed each task's test samples are resampled with the
  SAME indices for both methods (paired by seed and sample); the worst task is recomputed per
  replicate. ``release.stats.paired_bootstrap`` resamples one flat vector of paired values, which
  cannot express a minimum over tasks, hence this function.
"""

from __future__ import annotations

import statistics

import numpy as np


def seed_scores(test: dict[str, list[float]]) -> tuple[float, float, str, dict[str, float]]:
    """Mean over tasks, worst-task score, worst task and the per-task means of one run."""
    per = {t: float(np.mean(v)) for t, v in sorted(test.items())}
    worst = min(per, key=per.get)
    return statistics.fmean(per.values()), per[worst], worst, per


def worst_curve(curve: list) -> list[tuple[int, float]]:
    """``(step, worst-task val score)`` of an evaluation curve."""
    return [(int(step), min(val.values())) for step, val in curve if val]


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluation step whose value reaches ``target`` (None if never)."""
    return next((s for s, v in curve if v >= target - 1e-12), None)


def summarise(runs: list[dict], uniform_runs: dict[int, dict] | None, total_steps: int) -> dict:
    """One method's study entry from its runs (one per seed); ``uniform_runs`` keyed by seed."""
    per_seed, steps, u_steps = [], [], []
    for r in sorted(runs, key=lambda r: r["seed"]):
        mean, worst, worst_task, per = seed_scores(r["test"])
        entry = {"seed": r["seed"], "mean_score": mean, "worst_task_score": worst, "worst_task": worst_task,
                 "per_task": per, "final_weights": r.get("final_weights"), "mean_weights": r.get("mean_weights")}
        u = (uniform_runs or {}).get(r["seed"])
        if u is not None:
            uc = worst_curve(u["curve"])
            target = uc[-1][1] if uc else None
            reach = steps_to(worst_curve(r["curve"]), target) if target is not None else None
            ureach = steps_to(uc, target) if target is not None else None
            entry.update({"target": target, "steps_to_target": reach})
            steps.append(total_steps if reach is None else reach)
            u_steps.append(total_steps if ureach is None else ureach)
        per_seed.append(entry)
    ratio = statistics.fmean(steps) / statistics.fmean(u_steps) if steps and statistics.fmean(u_steps) else None
    reached = sum(1 for e in per_seed if e.get("steps_to_target") is not None)
    return {"mean_score": statistics.fmean(e["mean_score"] for e in per_seed),
            "worst_task_score": statistics.fmean(e["worst_task_score"] for e in per_seed),
            "steps_to_target_ratio": ratio, "steps_to_target_mean": statistics.fmean(steps) if steps else None,
            "reached": f"{reached}/{len(per_seed)}", "per_seed": per_seed}


def strongest_baseline(methods: dict[str, dict], baselines) -> str | None:
    """The baseline with the best mean worst-task score (ties: the earlier one in ``baselines``)."""
    present = [b for b in baselines if b in methods]
    return max(present, key=lambda b: methods[b]["worst_task_score"]) if present else None


def paired_bootstrap_tasks(a: list[dict[str, list[float]]], b: list[dict[str, list[float]]], *,
                           stat: str = "worst", n_boot: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> dict:
    """Two-level paired bootstrap of ``stat(a) - stat(b)`` averaged over seeds.

    ``a[j]`` / ``b[j]``: seed j's per-task test scores of the two methods, paired sample by sample.
    ``stat``: "worst" (lowest per-task mean) or "mean" (mean of per-task means).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of seeds on both sides (got {len(a)} and {len(b)})")
    reduce = (lambda m: m.min(axis=-1)) if stat == "worst" else (lambda m: m.mean(axis=-1))
    rng = np.random.default_rng(seed)
    n_seeds = len(a)
    inner = np.empty((n_seeds, n_boot * n_seeds))
    point = []
    for j, (ra, rb) in enumerate(zip(a, b)):
        tasks = sorted(ra)
        if tasks != sorted(rb) or any(len(ra[t]) != len(rb[t]) for t in tasks):
            raise ValueError(f"seed index {j}: the two methods were not scored on the same test samples")
        cols_a, cols_b = [], []
        for t in tasks:
            xa, xb = np.asarray(ra[t], float), np.asarray(rb[t], float)
            idx = rng.integers(0, len(xa), size=(n_boot * n_seeds, len(xa)))
            cols_a.append(xa[idx].mean(axis=1))
            cols_b.append(xb[idx].mean(axis=1))
        inner[j] = reduce(np.stack(cols_a, axis=1)) - reduce(np.stack(cols_b, axis=1))
        pa = np.array([[np.mean(ra[t]) for t in tasks]])
        pb = np.array([[np.mean(rb[t]) for t in tasks]])
        point.append(float(reduce(pa)[0] - reduce(pb)[0]))
    # Replicate r: draw n_seeds seeds with replacement; slot k of replicate r uses inner draw r·S + k.
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    slots = np.arange(n_boot)[:, None] * n_seeds + np.arange(n_seeds)[None, :]
    reps = inner[drawn, slots].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return {"delta": statistics.fmean(point), "ci_low": float(lo), "ci_high": float(hi), "n_seeds": n_seeds,
            "n_boot": n_boot, "confidence": confidence, "stat": stat}


def scenario_result(runs: list[dict], methods: list[str], baselines, default: str, total_steps: int,
                    n_boot: int = 2000) -> dict:
    """Methods, strongest baseline and the default-vs-strongest comparison of one scenario's runs."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    uniform = {r["seed"]: r for r in by.get("uniform", [])}
    out = {m: summarise(by[m], uniform, total_steps) for m in methods if m in by}
    best = strongest_baseline(out, baselines)
    res: dict = {"methods": out, "strongest_baseline": best, "default_vs_strongest": None,
                 "default_vs_strongest_mean_score": None}
    if best and default in by and best != default:
        seeds = sorted(set(r["seed"] for r in by[default]) & set(r["seed"] for r in by[best]))
        da = [next(r["test"] for r in by[default] if r["seed"] == s) for s in seeds]
        db = [next(r["test"] for r in by[best] if r["seed"] == s) for s in seeds]
        res["default_vs_strongest"] = paired_bootstrap_tasks(da, db, stat="worst", n_boot=n_boot)
        res["default_vs_strongest_mean_score"] = paired_bootstrap_tasks(da, db, stat="mean", n_boot=n_boot)
    return res


def plot_scenario(name: str, runs: list[dict], result: dict, path, title: str = "") -> str:
    """Worst-task validation curves (seed mean) and test scores per method of one scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(result["methods"])
    for i, m in enumerate(names):
        curves = [worst_curve(r["curve"]) for r in runs if r["method"] == m]
        n = min(len(c) for c in curves)
        if n == 0:
            continue
        steps = [s for s, _ in curves[0][:n]]
        ys = [statistics.fmean(c[k][1] for c in curves) for k in range(n)]
        mine = m.startswith(("mixtune", "heat"))
        a.plot(steps, ys, label=m, color=f"C{i % 10}", lw=2 if mine else 1.2, ls="-" if mine else "--")
    a.set_xlabel("stage-2 step")
    a.set_ylabel("worst-task val score (seed mean)")
    a.set_title(f"{name}: {title}"[:90], fontsize=8)
    a.legend(fontsize=6, ncol=2)
    x = np.arange(len(names))
    b.bar(x - 0.2, [result["methods"][m]["mean_score"] for m in names], 0.4, label="mean task")
    b.bar(x + 0.2, [result["methods"][m]["worst_task_score"] for m in names], 0.4, label="worst task")
    b.set_xticks(x, names, rotation=35, fontsize=6, ha="right")
    b.set_ylabel("held-out test score (seed mean)")
    cmp = result.get("default_vs_strongest")
    if cmp:
        b.set_title(f"default − {result['strongest_baseline']} (worst task): {cmp['delta']:+.3f} "
                    f"[{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}]", fontsize=8)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
