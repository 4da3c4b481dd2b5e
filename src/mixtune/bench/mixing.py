"""The mixing study (issue 11): scenarios S1–S5 × baselines × mixtune variants, seeds in two halves.

``mixtune bench mixing --tier full`` runs the whole study; ``--tier quick`` runs the same code path
tiny (default tests); ``python -m mixtune.bench.mixing pilot`` runs the pilot reported in
BENCHMARKS.md. Per seed: one tiny base model and ONE stage-1 model (trained on S1's stage-1 data),
shared by every scenario and method of that seed; then stage 2 once per (scenario, method) through
``train_stage2`` with identical steps, batch, learning rate and evaluation cadence. Data recipes:
:mod:`mixtune.bench.mixing_scenarios`; statistics: :mod:`mixtune.bench.mixing_study`.

Methods. Baselines (every scenario, curriculum and modulation off): ``natural`` (∝ training-set
size), ``temperature`` (τ = 3), ``uniform``, ``static`` (business value), ``dbl``, ``exp3``.
``natural``/``temperature`` weights come from the registered policies; ``train_stage2`` does not
pass training-set sizes to ``make_policy`` yet, so the study feeds those weights to ``static`` with
uniform mix, floor and cap off, which reproduces them exactly (tests/test_mixing_study.py).
mixtune (the demo's controller: heat + curriculum + modulation) runs everywhere and is the
``default_method``; in S1–S3 also without curriculum, without modulation, and with one heat input
alone (decay, cv, rejection, gap) via ``heat_weights``.

Halves. Tuning: seeds 0–4 on S1–S3. Confirmation: seeds 5–9 on S1–S5. Both are reported;
``scenarios`` (the issue's keys) is the confirmation half, ``tuning.scenarios`` the tuning half.
Runs go two at a time in single-threaded worker processes; each finished run is cached as JSON
under ``<work>/mixing_study/runs`` so an interrupted study resumes where it stopped.

Budget (full tier, measured on the shared 2-core VM, see BENCHMARKS.md): a stage-2 run of the
hidden-64 model, 400 steps of batch 8 plus 20 evaluation cycles on 16 tasks × 24 val samples and
the 16 × 40 test scoring, costs ≈ RUN_S CPU-seconds single-threaded. Runs: tuning 5 seeds × 3
scenarios × 13 methods = 195; confirmation 5 × (3 × 13 + 2 × 7) = 265; total 460 runs, plus 10
stage-1 models (≈ S1_S each). Two workers: (460 × RUN_S + 10 × S1_S) / 2 — see ``estimate_s``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mixtune.bench import SUITES, ablations, fixtures
from mixtune.bench import mixing_scenarios as scenarios_mod
from mixtune.bench import mixing_study as study
from mixtune.bench.harness import Context, render_markdown, row, run_suite

BASELINES = ("natural", "temperature", "uniform", "static", "dbl", "exp3")
DEFAULT = "mixtune"
_OFF = {"stage2.curriculum.enabled": False, "stage2.modulation.enabled": False}
_ON = {"stage2.mixing.method": "heat", "stage2.curriculum.enabled": True, "stage2.modulation.enabled": True}
METHODS: dict[str, dict] = {
    **{b: {"stage2.mixing.method": b, **_OFF} for b in BASELINES},
    DEFAULT: dict(_ON),
    "mixtune_no_curriculum": {**_ON, "stage2.curriculum.enabled": False},
    "mixtune_no_modulation": {**_ON, "stage2.modulation.enabled": False},
    **{f"heat_{c}_only": {**_ON, "stage2.mixing.heat_weights": {c: 1.0}} for c in ("decay", "cv", "rejection", "gap")},
}
VARIANTS_IN = ("S1", "S2", "S3")  # where the mixtune variants run (the list)
SIZE_BASED = {"natural": 1.0, "temperature": 3.0}  # method -> tau


@dataclass(frozen=True)
class Plan:
    """What one tier runs; the data and model sizes are part of every run's cache key."""

    tier: str
    tuning_scenarios: tuple[str, ...]
    tuning_seeds: tuple[int, ...]
    confirm_scenarios: tuple[str, ...]
    confirm_seeds: tuple[int, ...]
    methods: tuple[str, ...]
    n_train: int
    n_val: int
    n_test: int
    s1_steps: int
    s2_steps: int
    eval_every: int
    batch: int
    shape: tuple
    workers: int
    n_boot: int = 2000
    # Stage-1 models and run caches are shared by plans with the same sizes (full and tuning).
    cache_tag: str = ""

    @property
    def tag(self) -> str:
        return self.cache_tag or self.tier


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
                  ("natural", "temperature", "uniform", "static", DEFAULT, "mixtune_no_modulation"),
                  n_train=96, n_val=24, n_test=40, s1_steps=200, s2_steps=400, eval_every=20, batch=8,
                  shape=_SMALL, workers=2),
    "quick": Plan("quick", (), (), ("S1", "S2"), (0,), ("uniform", DEFAULT), n_train=10, n_val=2, n_test=3,
                  s1_steps=2, s2_steps=10, eval_every=5, batch=4, shape=tuple(sorted(fixtures.QUICK_SHAPE.items())),
                  workers=1, n_boot=200),
}


def methods_for(plan: Plan, scenario: str) -> list[str]:
    """Baselines and the default everywhere; the mixtune variants only in S1–S3."""
    return [m for m in plan.methods if m in BASELINES or m == DEFAULT or scenario in VARIANTS_IN]


def study_config(plan: Plan, seed: int):
    """The demo config with the study's sizes (same cadence, batch and lr for every method)."""
    return fixtures.with_updates(fixtures.demo_config(), {
        "seed": seed, "threads": 1, "stage1.max_len": 320, "stage2.max_len": 256,
        "stage1.steps": plan.s1_steps, "stage1.batch_size": plan.batch, "stage1.eval_every": 10_000,
        "stage1.checkpoint_every": 10_000, "stage1.warmup_steps": 5, "stage2.steps": plan.s2_steps,
        "stage2.batch_size": plan.batch, "stage2.eval_every": plan.eval_every, "stage2.checkpoint_every": 10_000,
        "stage2.eval_samples_per_task": plan.n_val, "stage2.warmup_steps": 5})


def _data_kw(plan: Plan) -> dict:
    return {"n_train": plan.n_train, "n_val": plan.n_val, "n_test": plan.n_test, "value_pool": 8}


def _scenario_path(root: Path, plan: Plan, seed: int, name: str) -> Path:
    key = hashlib.sha256(json.dumps([_data_kw(plan), seed, name]).encode()).hexdigest()[:10]
    return root / "data" / f"{name}_s{seed}_{key}"


def prepare_scenario(root: Path, plan: Plan, seed: int, name: str) -> Path:
    """Build (once) and store scenario ``name`` of ``seed``: samples parquet + rejection/sizes JSON."""
    import pyarrow.parquet as pq

    from mixtune.data.ontology import load_ontology
    from mixtune.data.schema import samples_to_table

    path = _scenario_path(root, plan, seed, name)
    if not (path / "meta.json").is_file():
        cfg = fixtures.demo_config()
        data = scenarios_mod.build_scenario(name, load_ontology(cfg.resolve(cfg.data.ontology)), seed, **_data_kw(plan))
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(samples_to_table(data.samples), path / "samples.parquet")
        (path / "meta.json").write_text(json.dumps({"rejection": data.rejection, "sizes": data.sizes,
                                                    "description": data.description}))
    return path


def _load_scenario(path: Path) -> tuple[list, dict]:
    import pyarrow.parquet as pq

    from mixtune.data.schema import table_to_samples

    return table_to_samples(pq.read_table(path / "samples.parquet")), json.loads((path / "meta.json").read_text())


def _stage1_job(job: dict) -> str:
    """Worker: the shared stage-1 model of one seed (cached by config fingerprint)."""
    import torch

    torch.set_num_threads(1)
    plan = Plan(**job["plan"])
    cfg = study_config(plan, job["seed"])
    samples, _ = _load_scenario(Path(job["s1_data"]))
    parents = scenarios_mod.ScenarioData("S1", samples)
    train = scenarios_mod.stage1_samples(parents, job["seed"], cfg.data.perturb_fraction)
    return ablations.stage1_model(Path(job["work"]), cfg, train, job["base_model"], f"mixstudy_{plan.tag}")


def _stage2_job(job: dict) -> dict:
    """Worker: stage 2 of one (scenario, seed, method); returns the run record (see mixing_study)."""
    import torch

    from mixtune.data.ontology import load_ontology
    from mixtune.mixing.factory import make_policy
    from mixtune.rules import RuleEngine, RuleSet
    from mixtune.train.common import score_samples
    from mixtune.train.stage1 import encode_samples
    from mixtune.train.stage2 import train_stage2

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    plan, name, seed, method = Plan(**job["plan"]), job["scenario"], job["seed"], job["method"]
    samples, meta = _load_scenario(Path(job["data"]))
    cfg = study_config(plan, seed)
    onto = load_ontology(cfg.resolve(cfg.data.ontology))
    business = {t.id: t.business_value for t in onto.tasks.values()}
    updates = dict(METHODS[method])
    if method in SIZE_BASED:  # see the module docstring: static with exactly these weights
        tasks = sorted(meta["sizes"])
        business = make_policy(method, tasks, sizes=meta["sizes"], tau=SIZE_BASED[method]).weights()
        updates.update({"stage2.mixing.method": "static", "stage2.mixing.uniform_mix": 0.0,
                        "stage2.mixing.floor": 0.0, "stage2.mixing.cap": 1.0})
    cfg = fixtures.with_updates(cfg, updates)
    out = Path(job["out"])
    shutil.rmtree(out, ignore_errors=True)
    train_stage2(cfg, samples, job["stage1"], out, business_value=business,
                 groups={t.id: t.group for t in onto.tasks.values()},
                 families={t.id: t.family for t in onto.tasks.values()},
                 chains=[list(c.steps) for c in onto.chains.values()], rejection=meta["rejection"],
                 engine=RuleEngine(RuleSet.load(cfg.resolve(cfg.data.rules))), progress=False)
    t_train = time.perf_counter() - t0
    model, tok = ablations.load_for_scoring(str(out / "model"))
    test = [s for s in samples if s.split == "test" and not s.parent_id]
    # fp32 like training and the validation cycles (ablations.score autocasts to bf16)
    scores = score_samples(model, encode_samples(tok, test, cfg.stage2.max_len), tok.pad_token_id, 32,
                           torch.float32)[0]
    per_task: dict[str, list[float]] = {}
    for s, v in zip(test, scores, strict=True):
        per_task.setdefault(s.task_id, []).append(v)
    log = ablations.read_metrics(out / "mixing_log.jsonl")
    weights = [r["weights"] for r in log]
    rec = {"scenario": name, "seed": seed, "method": method, "test": per_task,
           "curve": [[r["step"], r["val"]] for r in ablations.read_metrics(out / "metrics.jsonl") if r.get("val")],
           "final_weights": json.loads((out / "final_weights.json").read_text()),
           "mean_weights": {t: statistics.fmean(w[t] for w in weights) for t in weights[0]} if weights else None,
           "weights_by_cycle": [[r["step"], r["weights"]] for r in log],
           "heat_inputs_logged": sorted(log[-1]["heat"][next(iter(log[-1]["heat"]))]) if log else [],
           "train_s": round(t_train, 1), "wall_s": round(time.perf_counter() - t0, 1),
           # CPU seconds of this single-threaded run: ≈ its wall time on an otherwise idle core
           "cpu_s": round(time.process_time() - c0, 1)}
    shutil.rmtree(out, ignore_errors=True)  # models are not kept: 460 of them would fill the disk
    return rec


def _call(job: dict):
    return _stage1_job(job) if job["kind"] == "stage1" else _stage2_job(job)


def _map(plan: Plan, jobs: list[dict]):
    """Yield ``(job, result)`` as jobs finish: inline for one worker, else a spawn pool."""
    if plan.workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            yield j, _call(j)
        return
    # spawn: a forked child would inherit the parent's torch thread pool state; fresh processes are clean
    with mp.get_context("spawn").Pool(plan.workers, maxtasksperchild=20) as pool:
        for i, res in pool.imap_unordered(_indexed, list(enumerate(jobs))):
            yield jobs[i], res


def _indexed(arg):
    i, job = arg
    return i, _call(job)


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
        samples, _ = _load_scenario(s1_data)
        base = fixtures.tiny_model(root, [s for s in samples if s.split == "train"], dict(plan.shape), seed=seed)
        s1_jobs.append({"kind": "stage1", "plan": pd, "seed": seed, "s1_data": str(s1_data), "work": str(root),
                        "base_model": base})
    for job, path in _map(plan, s1_jobs):
        stage1[job["seed"]] = path
    t_s1 = time.perf_counter() - t0
    jobs, records = [], {}
    for scenarios, hseeds in halves.values():
        for name in scenarios:
            for seed in hseeds:
                data = prepare_scenario(root, plan, seed, name)
                for method in methods_for(plan, name):
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
    for k, (job, rec) in enumerate(_map(plan, jobs), 1):
        Path(job["cache"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["cache"]).write_text(json.dumps(rec))
        records[(job["scenario"], job["seed"], job["method"])] = rec
        eta = (time.perf_counter() - t1) / k * (len(jobs) - k)
        ctx.log(f"  [{k}/{len(jobs)}] {job['scenario']} seed {job['seed']} {job['method']}: "
                f"{rec['wall_s']} s; eta {eta / 60:.1f} min")
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
            runs = [records[(name, s, m)] for s in hseeds for m in methods_for(plan, name) if (name, s, m) in records]
            if not runs:
                continue
            res = study.scenario_result(runs, methods_for(plan, name), BASELINES, DEFAULT, plan.s2_steps, plan.n_boot)
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
        "setup": f"tiny Llama {dict(plan.shape)}; per seed one stage-1 model ({plan.s1_steps} steps on S1's "
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
    """Wall-time estimate of ``plan`` from a measured stage-2 run and stage-1 model cost (seconds)."""
    n = sum(len(seeds) * sum(len(methods_for(plan, s)) for s in sc)
            for sc, seeds in ((plan.tuning_scenarios, plan.tuning_seeds), (plan.confirm_scenarios, plan.confirm_seeds)))
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
