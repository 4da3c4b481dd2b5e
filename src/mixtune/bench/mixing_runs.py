"""Runs of the mixing study: methods, the plan of a tier, scenario data on disk, the worker jobs.

A job is a plain dict (picklable for the spawn pool): ``stage1`` trains a seed's shared stage-1
model, ``stage2`` trains one (scenario, seed, method) through ``train_stage2`` and returns the run
record that :mod:`mixtune.bench.mixing_study` reads (per-task test scores, the validation curve,
weights). Workers are single-threaded processes, two at a time on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from mixtune.bench import ablations, fixtures
from mixtune.bench import mixing_scenarios as scenarios_mod
from mixtune.data.ontology import load_ontology
from mixtune.data.schema import samples_to_table, table_to_samples
from mixtune.mixing.factory import make_policy
from mixtune.rules import RuleEngine, RuleSet
from mixtune.train.common import score_samples
from mixtune.train.loop import encode_samples
from mixtune.train.stage2 import train_stage2

# Order matters only for ties of the strongest baseline: uniform (stratified, the Aioli reference) first.
BASELINES = ("uniform", "natural", "temperature", "static", "dbl", "exp3")
REFERENCE = "mixtune"  # the design's controller: heat + curriculum + modulation
# What the demo ships, chosen on the tuning half (seeds 0-4, S1-S3; BENCHMARKS.md "Mixing study"):
# heat-driven weights with curriculum and modulation off won every tuning scenario on the worst task.
DEFAULT = "mixtune_heat_only"
_OFF = {"stage2.curriculum.enabled": False, "stage2.modulation.enabled": False}
_ON = {"stage2.mixing.method": "heat", "stage2.curriculum.enabled": True, "stage2.modulation.enabled": True}
METHODS: dict[str, dict] = {
    **{b: {"stage2.mixing.method": b, **_OFF} for b in BASELINES},
    REFERENCE: dict(_ON),
    "mixtune_no_curriculum": {**_ON, "stage2.curriculum.enabled": False},
    "mixtune_no_modulation": {**_ON, "stage2.modulation.enabled": False},
    # heat-driven weights alone: the two variants above each drop one of the other mechanisms
    "mixtune_heat_only": {**_ON, "stage2.curriculum.enabled": False, "stage2.modulation.enabled": False},
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
    import pyarrow.parquet as pq  # why: only when a scenario is built or read

    path = _scenario_path(root, plan, seed, name)
    if not (path / "meta.json").is_file():
        cfg = fixtures.demo_config()
        data = scenarios_mod.build_scenario(name, load_ontology(cfg.resolve(cfg.data.ontology)), seed, **_data_kw(plan))
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(samples_to_table(data.samples), path / "samples.parquet")
        (path / "meta.json").write_text(json.dumps({"rejection": data.rejection, "sizes": data.sizes,
                                                    "description": data.description}))
    return path


def load_scenario(path: Path) -> tuple[list, dict]:
    import pyarrow.parquet as pq  # why: only when a scenario is built or read

    return table_to_samples(pq.read_table(path / "samples.parquet")), json.loads((path / "meta.json").read_text())


def same_as_uniform(method: str, data: Path, plan: Plan, seed: int) -> bool:
    """Whether a size-based method's weights equal uniform's bit for bit (all tasks the same size).

    Then its run would repeat uniform's exactly (same seed, same sampler draws), so the study reuses
    uniform's run under the method's name (``alias_of``) instead of training it again.
    """

    sizes = json.loads((data / "meta.json").read_text())["sizes"]
    tasks = sorted(sizes)
    mix = study_config(plan, seed).stage2.mixing
    uniform = make_policy("uniform", tasks, uniform_mix=mix.uniform_mix, floor=mix.floor, cap=mix.cap).weights()
    mine = make_policy(method, tasks, sizes=sizes, tau=SIZE_BASED[method]).weights()
    return make_policy("static", tasks, mine, uniform_mix=0.0, floor=0.0, cap=1.0).weights() == uniform


def _stage1_job(job: dict) -> str:
    """Worker: the shared stage-1 model of one seed (cached by config fingerprint)."""
    import torch  # why: only worker processes need torch settings

    torch.set_num_threads(1)
    plan = Plan(**job["plan"])
    cfg = study_config(plan, job["seed"])
    samples, _ = load_scenario(Path(job["s1_data"]))
    parents = scenarios_mod.ScenarioData("S1", samples)
    train = scenarios_mod.stage1_samples(parents, job["seed"], cfg.data.perturb_fraction)
    return ablations.stage1_model(Path(job["work"]), cfg, train, job["base_model"], f"mixstudy_{plan.tag}")


def _stage2_job(job: dict) -> dict:
    """Worker: stage 2 of one (scenario, seed, method); returns the run record (see mixing_study)."""
    import torch  # why: only worker processes need torch settings

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    plan, name, seed, method = Plan(**job["plan"]), job["scenario"], job["seed"], job["method"]
    samples, meta = load_scenario(Path(job["data"]))
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


def run_jobs(plan: Plan, jobs: list[dict]):
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
