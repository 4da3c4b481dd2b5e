"""The mixing study (issue 11): scenarios S1–S5 × baselines × mixtune variants, seeds in two halves.

``mixtune bench mixing --tier full`` runs the whole study; ``--tier quick`` runs the same code path
tiny (default tests); ``python -m mixtune.bench.mixing pilot`` runs the pilot reported in
BENCHMARKS.md. Per seed: one tiny base model and ONE stage-1 model (trained on S1's stage-1 data),
shared by every scenario and method of that seed; then stage 2 once per (scenario, method) through
``train_stage2`` with identical steps, batch, learning rate and evaluation cadence. Data recipes:
:mod:`mixtune.bench.mixing_scenarios`; jobs: :mod:`mixtune.bench.mixing_runs`; statistics:
:mod:`mixtune.bench.mixing_study`.

Methods. Baselines (every scenario, curriculum and modulation off): ``natural`` (∝ training-set
size), ``temperature`` (τ = 3), ``uniform``, ``static`` (business value), ``dbl``, ``exp3``.
``natural``/``temperature`` weights come from the registered policies; ``train_stage2`` does not
pass training-set sizes to ``make_policy`` yet, so the study feeds those weights to ``static`` with
uniform mix, floor and cap off, which reproduces them exactly (tests/test_mixing_study.py).
mixtune variants (tuning half, S1–S3): ``mixtune`` (the design's controller: heat + curriculum +
modulation, also the confirmation half's ``REFERENCE``), without curriculum, without modulation,
heat alone (``mixtune_heat_only``), and one heat input alone (decay, cv, rejection) via
``heat_weights``. ``DEFAULT`` — what the demo ships and ``default_method`` reports — was chosen on
the tuning half: ``mixtune_heat_only``.

Halves. Tuning: seeds 0–4 on S1–S3, every method. Confirmation: fresh seeds 5–9 on S1–S5, the
baselines, ``DEFAULT`` and ``REFERENCE``. Both are reported; ``scenarios`` (the issue's keys) is the
confirmation half, ``tuning.scenarios`` the tuning half. Runs go two at a time in single-threaded
worker processes; each finished run is cached as JSON under ``<work>/mixing_study/runs`` so an
interrupted study resumes where it stopped.

Budget (full tier ≤ 90 min on 2 idle cores). Trained runs: natural/temperature reuse uniform's run
where all tasks have the same size (S1, S3, S4), so tuning 5 seeds × (11 + 13 + 11) = 175 and
confirmation 5 × (6 + 8 + 6 + 6 + 8) = 170, 345 stage-2 runs plus 10 stage-1 models. One run
(hidden-64 model, 400 steps of batch 8, 20 cycles on 16 tasks × 24 val samples, 16 × 40 test
samples) measured ≈ 42 CPU-s on the 2026-12-03 machine (Intel Xeon, two runs side by side), so the whole
study takes ≈ 345 × 42 s / 2 ≈ 121 min: over the 90-minute budget when run in one go. The tuning
half runs outside ``make bench`` (``python -m mixtune.bench.mixing tuning``: 68 min measured, with
test jobs beside it at nice 10); the full tier then reuses its cached runs and trains the
confirmation half (69 min measured). Every run records its CPU
seconds and the result's ``full_tier_estimate_s`` extrapolates the full tier from them (``estimate_s``).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from mixtune.bench import SUITES, ablations, fixtures
from mixtune.bench import mixing_scenarios as scenarios_mod
from mixtune.bench import mixing_study as study
from mixtune.bench.harness import Context, render_markdown, row, run_suite
from mixtune.bench.mixing_runs import (
    BASELINES,
    DEFAULT,
    METHODS,
    REFERENCE,
    SIZE_BASED,
    VARIANTS_IN,
    Plan,
    load_scenario,
    prepare_scenario,
    run_jobs,
    same_as_uniform,
    study_config,
)

_SMALL = tuple(sorted(ablations.ABLATION_SHAPE.items()))
PLANS = {
    "full": Plan("full", ("S1", "S2", "S3"), (0, 1, 2, 3, 4), scenarios_mod.SCENARIOS, (5, 6, 7, 8, 9),
                 tuple(m for m in METHODS if m != "heat_gap_only"),
                 n_train=96, n_val=24, n_test=40, s1_steps=200, s2_steps=400, eval_every=20, batch=8,
                 shape=_SMALL, workers=2),
    "tuning": Plan("tuning", ("S1", "S2", "S3"), (0, 1, 2, 3, 4), (), (),
                   tuple(m for m in METHODS if m != "heat_gap_only"),
                   n_train=96, n_val=24, n_test=40, s1_steps=200, s2_steps=400, eval_every=20, batch=8,
                   shape=_SMALL, workers=2, cache_tag="full"),
    "pilot": Plan("pilot", ("S1", "S2"), (0, 1), (), (),
                  ("natural", "temperature", "uniform", "static", REFERENCE, "mixtune_no_modulation"),
                  n_train=96, n_val=24, n_test=40, s1_steps=200, s2_steps=400, eval_every=20, batch=8,
                  shape=_SMALL, workers=2),
    "quick": Plan("quick", (), (), ("S1", "S2"), (0,), ("natural", "uniform", DEFAULT), n_train=10, n_val=2, n_test=3,
                  s1_steps=2, s2_steps=10, eval_every=5, batch=4, shape=tuple(sorted(fixtures.QUICK_SHAPE.items())),
                  workers=1, n_boot=200),
}


def methods_for(plan: Plan, scenario: str, half: str = "tuning") -> list[str]:
    """Baselines and the default everywhere; the mixtune variants only in S1–S3 of the tuning half.

    The confirmation half compares the shipped default (chosen on the tuning seeds) with the
    baselines and, as a reference, the design's full controller (``mixtune``); re-running every
    variant there would buy nothing the tuning half does not show and cost 40% more runs.
    """
    if half == "confirmation":
        return [m for m in plan.methods if m in BASELINES or m in (DEFAULT, REFERENCE)]
    return [m for m in plan.methods if m in BASELINES or m == DEFAULT or scenario in VARIANTS_IN]


def run_plan(ctx: Context, plan: Plan, *, cached_only: bool = False) -> dict:
    """Run (or resume) every job of ``plan`` and return the suite result.

    ``cached_only``: train nothing; report the cached runs, keeping a (scenario, seed) only when
    every method of it finished (so all methods are compared on the same seeds); the dropped ones
    are listed under ``missing_runs``.
    """
    root = ctx.work / "mixing_study"
    halves = {"tuning": (plan.tuning_scenarios, plan.tuning_seeds),
              "confirmation": (plan.confirm_scenarios, plan.confirm_seeds)}
    seeds = halves_seeds(halves)
    pd = asdict(plan)
    t0 = time.perf_counter()
    stage1, s1_jobs = {}, []
    for seed in seeds:
        s1_data = prepare_scenario(root, plan, seed, "S1")
        samples, _ = load_scenario(s1_data)
        base = fixtures.tiny_model(root, [s for s in samples if s.split == "train"], dict(plan.shape), seed=seed)
        s1_jobs.append({"kind": "stage1", "plan": pd, "seed": seed, "s1_data": str(s1_data), "work": str(root),
                        "base_model": base})
    for job, path in run_jobs(plan, s1_jobs):
        stage1[job["seed"]] = path
    t_s1 = time.perf_counter() - t0
    jobs, records, aliases = [], {}, []
    for half, (scenarios, hseeds) in halves.items():
        for name in scenarios:
            for seed in hseeds:
                data = prepare_scenario(root, plan, seed, name)
                for method in methods_for(plan, name, half):
                    if method in SIZE_BASED and same_as_uniform(method, data, plan, seed):
                        aliases.append((name, seed, method))
                        continue
                    cfg = fixtures.with_updates(study_config(plan, seed), METHODS[method])
                    key = hashlib.sha256(json.dumps([cfg.fingerprint("stage2", "model"), str(data.name), method,
                                                     Path(stage1[seed]).parent.name]).encode()).hexdigest()[:12]
                    cache = root / "runs" / f"{name}_s{seed}_{method}_{key}.json"
                    if cache.is_file():
                        records[(name, seed, method)] = json.loads(cache.read_text())
                        continue
                    jobs.append({"kind": "stage2", "plan": pd, "scenario": name, "seed": seed, "method": method,
                                 "data": str(data), "stage1": stage1[seed], "cache": str(cache),
                                 "out": str(root / "tmp" / cache.stem)})
    jobs = list({j["cache"]: j for j in jobs}.values())
    missing = sorted({f"{j['scenario']} seed {j['seed']}" for j in jobs}) if cached_only else []
    if cached_only:
        records = {k: r for k, r in records.items() if f"{k[0]} seed {k[1]}" not in missing}
        jobs = []
    ctx.log(f"  mixing study ({plan.tier}): {len(records)} cached runs, {len(jobs)} to run, {plan.workers} workers")
    t1 = time.perf_counter()
    for k, (job, rec) in enumerate(run_jobs(plan, jobs), 1):
        Path(job["cache"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["cache"]).write_text(json.dumps(rec))
        records[(job["scenario"], job["seed"], job["method"])] = rec
        eta = (time.perf_counter() - t1) / k * (len(jobs) - k)
        ctx.log(f"  [{k}/{len(jobs)}] {job['scenario']} seed {job['seed']} {job['method']}: "
                f"{rec['wall_s']} s; eta {eta / 60:.1f} min")
    for name, seed, method in aliases:
        if (name, seed, "uniform") in records:
            records[(name, seed, method)] = {**records[(name, seed, "uniform")], "method": method,
                                             "alias_of": "uniform"}
    result = assemble(ctx, plan, halves, records, t_s1, time.perf_counter() - t0)
    result["missing_runs"] = missing
    return result


def assemble(ctx: Context, plan: Plan, halves: dict, records: dict, stage1_s: float, wall_s: float) -> dict:
    """The suite JSON: both halves' statistics, plots, table rows, budget."""
    result: dict = {"tier_plan": plan.tier, "default_method": DEFAULT, "baselines": list(BASELINES),
                    "descriptions": dict(scenarios_mod.DESCRIPTIONS)}
    ctx.plots.mkdir(parents=True, exist_ok=True)
    plots, table = [], []
    for half, (scenarios, hseeds) in halves.items():
        part = {"seeds": list(hseeds), "scenarios": {}}
        for name in scenarios:
            runs = [records[(name, s, m)] for s in hseeds for m in methods_for(plan, name, half)
                    if (name, s, m) in records]
            if not runs:
                continue
            res = study.scenario_result(runs, methods_for(plan, name, half), BASELINES, DEFAULT, plan.s2_steps, plan.n_boot)
            part["scenarios"][name] = res
            png = ctx.plots / f"mixing_{half}_{name}.png"
            plots.append(study.plot_scenario(f"{name} ({half}, seeds {list(hseeds)})", runs, res, png,
                                          scenarios_mod.DESCRIPTIONS[name]))
            table += _rows(half, name, res)
        result[half] = part if part["scenarios"] else None
    headline = result["confirmation"] or result["tuning"]
    if headline is None:
        raise RuntimeError("no finished runs to report")
    result["scenarios"] = headline["scenarios"]
    result["headline_half"] = "confirmation" if result["confirmation"] else "tuning"
    n_runs = len(records)
    run_s = [r["wall_s"] for r in records.values()]
    cpu_s = [r["cpu_s"] for r in records.values() if r.get("cpu_s")]
    result.update({
        "table": table, "plots": plots, "repetitions": len(headline["seeds"]),
        "runs": n_runs, "mean_run_s": statistics.fmean(run_s) if run_s else None,
        "mean_run_cpu_s": statistics.fmean(cpu_s) if cpu_s else None, "stage1_s": round(stage1_s, 1),
        "study_wall_s": round(wall_s, 1), "budget_s": 90 * 60, "workers": plan.workers,
        # Full-tier wall time on 2 idle cores, extrapolated from this run's per-run CPU seconds.
        "full_tier_estimate_s": round(estimate_s(PLANS["full"], statistics.fmean(cpu_s or run_s),
                                                 stage1_s * plan.workers / max(1, len(halves_seeds(halves)))))
        if run_s else None,
        "plan": {k: v for k, v in asdict(plan).items() if k != "shape"},
        "setup": f"tuning seeds {list(plan.tuning_seeds)} on {list(plan.tuning_scenarios)}, confirmation seeds "
                 f"{list(plan.confirm_seeds)} on {list(plan.confirm_scenarios)} (the seeds line above is the "
                 f"CLI's, unused here); tiny Llama {dict(plan.shape)}; per seed one stage-1 model ({plan.s1_steps} steps on S1's "
                 f"stage-1 data); stage 2 {plan.s2_steps} steps, batch {plan.batch}, eval every {plan.eval_every} "
                 f"steps on {plan.n_val} val samples/task (teacher-forced); test {plan.n_test} samples/task; "
                 f"n_train {plan.n_train}/task before the scenario's recipe; {plan.workers} single-threaded "
                 f"workers. Row value = mean / worst-task test score; ratio = worst-task score / the scenario's "
                 f"strongest baseline's; CI = paired two-level bootstrap 95%."})
    return result


def _rows(half: str, name: str, res: dict) -> list[dict]:
    best = res["strongest_baseline"]
    b = res["methods"].get(best, {}) if best else {}
    rows = []
    for m, s in res["methods"].items():
        note = f"steps-to-target ×{s['steps_to_target_ratio']:.2f} of uniform (reached {s['reached']})" \
            if s["steps_to_target_ratio"] is not None else ""
        if m == best:
            note += "; strongest baseline"
        if m == DEFAULT and res["default_vs_strongest"]:
            c = res["default_vs_strongest"]
            note += f"; Δworst vs {best} {c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
        ratio = s["worst_task_score"] / b["worst_task_score"] if b and b["worst_task_score"] else None
        rows.append(row(f"{half} {name} {m}", f"{s['mean_score']:.3f} / {s['worst_task_score']:.3f}",
                        baseline=f"{b['mean_score']:.3f} / {b['worst_task_score']:.3f}" if b else None,
                        baseline_name=best or "", ratio=ratio, note=note))
    return rows


def halves_seeds(halves: dict) -> list[int]:
    """Seeds that run in at least one half."""
    return sorted({s for sc, ss in halves.values() if sc for s in ss})


def estimate_s(plan: Plan, run_s: float, stage1_s: float) -> float:
    """Wall-time estimate of ``plan`` from one stage-2 run's and one stage-1 model's cost (seconds).

    Size-based methods in scenarios whose tasks all have the same size reuse uniform's run.
    """
    n = sum(len(seeds) * sum(1 for s in sc for m in methods_for(plan, s, half)
                             if m not in SIZE_BASED or s in scenarios_mod.UNEQUAL_SIZES)
            for half, sc, seeds in (("tuning", plan.tuning_scenarios, plan.tuning_seeds),
                                    ("confirmation", plan.confirm_scenarios, plan.confirm_seeds)))
    n_s1 = len(set(plan.tuning_seeds) | set(plan.confirm_seeds))
    return (n * run_s + n_s1 * stage1_s) / max(1, plan.workers)


def run(ctx: Context) -> dict:
    """Suite entry of ``mixtune bench mixing``: the full study or the quick tier."""
    return run_plan(ctx, PLANS["full" if ctx.full else "quick"])


def main(argv: list[str] | None = None) -> int:
    """``python -m mixtune.bench.mixing {pilot|tuning|quick|full} [OUT_DIR] [--cached-only]``.

    Runs one plan through the harness (JSON + BENCHMARKS.md); ``tuning`` is the full study's tuning
    half alone (it may run outside ``make bench``; the full tier then reuses its cached runs).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    cached_only = "--cached-only" in args
    args = [a for a in args if a != "--cached-only"]
    tier = args[0] if args else "pilot"
    if tier not in PLANS:
        print(f"unknown plan {tier!r}; plans: {', '.join(PLANS)}", file=sys.stderr)
        return 2
    out = Path(args[1]) if len(args) > 1 else Path("benchmarks/results")
    md = out.resolve().parent.parent / "BENCHMARKS.md"
    plan = PLANS[tier]
    ctx = Context(tier=tier, seeds=sorted(set(plan.tuning_seeds) | set(plan.confirm_seeds)), out=out,
                  plots=out.parent, work=out.parent / "work", md_path=md, repetitions=1)
    command = "python -m mixtune.bench.mixing " + " ".join(args + (["--cached-only"] if cached_only else []))
    res = run_suite("mixing", lambda c: run_plan(c, plan, cached_only=cached_only), ctx, command)
    render_markdown(out, md, list(SUITES))
    return 0 if res.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
