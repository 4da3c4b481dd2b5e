"""``mixtune run``: the whole pipeline, step by step, each step skipped when already done.

data build → base model → stage 1 → stage 2 → evaluation matrix → gates → registry → report.
Every step is also its own sub-command; this module is the one place that strings them together
and maps the pipeline config onto the components' flat arguments.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console

from mixtune.config import PipelineConfig, apply_runtime
from mixtune.data.build import build_dataset
from mixtune.data.ingest import Source
from mixtune.data.io import read_samples
from mixtune.data.ontology import load_ontology
from mixtune.errors import ConfigError, MixtuneError
from mixtune.eval.backends import Backend, HFBackend, OpenAIBackend
from mixtune.eval.ifeval.subset import instruction_types, packaged_subset
from mixtune.eval.matrix import IFEVAL_FAMILIES, family_scores
from mixtune.eval.runner import evaluate_model, write_matrix
from mixtune.model.sources import PRESETS, resolve_model
from mixtune.model.tiny import build_tiny_model
from mixtune.release.pipeline_steps import step_gates_and_registry
from mixtune.report import write_report
from mixtune.review import LiveRejection, ReviewStore, decisions_digest, enqueue_samples, sample_decisions
from mixtune.review.app import load_reasons
from mixtune.review.samples import LEGACY_LOG, import_legacy_log, migrate_message
from mixtune.rules import RuleEngine, RuleSet
from mixtune.rundir import RunDir
from mixtune.train.launch import launch_stage, write_profile
from mixtune.train.loop import first_per_task
from mixtune.train.stage1 import train_stage1
from mixtune.train.stage2 import style_ema_in_use, train_stage2

console = Console(stderr=True)
STEPS = ("data", "base_model", "stage1", "stage2", "eval", "gates", "report")


def review_store(cfg: PipelineConfig) -> str:
    """The review store: a relative SQLite path lives beside the run folders, so ``--fresh`` (which
    deletes the run folder) never deletes verdicts — they belong to the data, not to the run."""
    store = cfg.review.store
    if "://" in store or Path(store).is_absolute():
        return store
    return str(cfg.run_dir().parent / store)


def migrate_review_log(cfg: PipelineConfig) -> None:
    """Move the run's old ``data/review_log.jsonl`` (the review queue before the store) into the
    review store once, before ``--fresh`` could delete it; the log is renamed ``.imported``."""
    log = cfg.run_dir() / "data" / LEGACY_LOG
    if log.is_file():
        store = review_store(cfg)
        rs = ReviewStore(store)
        try:
            console.print(migrate_message(import_legacy_log(rs, log), log, store), highlight=False, soft_wrap=True)
        finally:
            rs.close()


def step_data(cfg: PipelineConfig, rd: RunDir) -> dict:
    """Build the dataset with the review store's sample decisions; undecided samples join its data queue.

    The step reruns when its config or the store's sample-decision state changes (not on output or
    pair verdicts). What later steps depend on is the built dataset's version, so a verdict that
    changes no sample's membership or split does not retrain the models.
    """
    store = ReviewStore(review_store(cfg))
    try:
        decisions = sample_decisions(store, cfg.review.required)
        cfg_fp = rd.fingerprint("data", ("data", "seed"))
        inputs = cfg_fp + "-" + decisions_digest(decisions)
        rec = rd.state["steps"].get("data")
        if rec and rec.get("status") == "done" and rec.get("inputs") == inputs:
            return rec
        res = build_dataset(
            cfg.resolve(cfg.data.ontology), cfg.resolve(cfg.data.rules), rd.sub("data"),
            n_per_task=cfg.data.n_per_task if cfg.data.generate else 0, defect_rate=cfg.data.defect_rate,
            val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
            perturb_fraction=cfg.data.perturb_fraction, seed=cfg.seed,
            sources=[Source(str(cfg.resolve(s.path)), s.field_map, s.default_task,
                            s.task_from and s.task_from.column, s.task_from.map if s.task_from else {})
                     for s in cfg.data.sources],
            require_review=cfg.data.require_review, reviewer=cfg.data.auto_approve_reviewer, progress=True,
            value_pool=cfg.data.value_pool, review_decisions=decisions)
        queued = enqueue_samples(store, res.pending, data_version=res.version)
    finally:
        store.close()
    rd.mark("data", cfg_fp + "-" + res.version, inputs=inputs, version=res.version, counts=res.counts)
    console.print(f"data: version {res.version}: {res.counts}")
    if queued:
        console.print(f"data: {queued} sample(s) joined the data review queue "
                      f"(mixtune review serve --store {review_store(cfg)})")
    return rd.state["steps"]["data"]


def load_samples(rd: RunDir) -> list:
    return read_samples(rd.path / "data" / "samples.parquet")


def step_base_model(cfg: PipelineConfig, rd: RunDir, samples: list) -> str:
    """The model stage 1 starts from: the built-in tiny model (built once), a GGUF file or preset
    (converted once into the model cache), or the configured id/path."""
    name = cfg.model.name_or_path
    if name.startswith("gguf:") or name in PRESETS:
        if name.startswith("gguf:"):  # a relative GGUF path resolves against the YAML's folder
            name = "gguf:" + str(cfg.resolve(name[len("gguf:"):]))
        path = resolve_model(name)
        # recorded so the release step can serve the base model as the first champion
        rd.mark("base_model", rd.fingerprint("base_model", ("model", "seed")), path=path)
        return path
    if name != "builtin:tiny":
        local = cfg.resolve(name)  # a folder relative to the YAML, else a hub id
        return str(local) if local.exists() else name
    out = rd.path / "base_model"
    fp = rd.fingerprint("base_model", ("model", "seed"), ("data",))
    if not rd.done("base_model", fp):
        texts = [m.content for s in samples if s.split == "train" for m in s.messages]
        build_tiny_model(out, texts, seed=cfg.seed, **cfg.model.tiny.model_dump())
        rd.mark("base_model", fp, path=str(out))
    return str(out)


def ontology_maps(cfg: PipelineConfig):
    """The ontology and its task → business value, task → group and task → family maps."""
    onto = load_ontology(cfg.resolve(cfg.data.ontology))
    return onto, {t.id: t.business_value for t in onto.tasks.values()}, \
        {t.id: t.group for t in onto.tasks.values()}, {t.id: t.family for t in onto.tasks.values()}


def rule_engine(cfg: PipelineConfig) -> RuleEngine:
    """The rule engine over the configured rules file."""
    return RuleEngine(RuleSet.load(cfg.resolve(cfg.data.rules)))


def launch_if_distributed(cfg: PipelineConfig, rd: RunDir, stage: int) -> bool:
    """Run the stage under accelerate launch when its launcher profile asks for it; True if it did."""
    st = cfg.stage1 if stage == 1 else cfg.stage2
    if st.launcher.profile == "single" and st.launcher.num_processes == 1:
        return False
    ds = st.launcher.deepspeed_config
    profile = write_profile(rd.path, stage, st.launcher.profile, st.launcher.num_processes, st.precision,
                            grad_accum=st.grad_accum, clip_policy=st.clip.policy, clip_value=st.clip.start,
                            style_ema=style_ema_in_use(cfg) if stage == 2 else 0.0,
                            deepspeed_config=cfg.resolve(ds) if ds else None)
    launch_stage(stage, rd.path / "config.resolved.yaml", profile, st.launcher.num_processes)
    return True


def step_stage1(cfg: PipelineConfig, rd: RunDir, samples: list, base: str) -> str:
    fp = rd.fingerprint("stage1", ("model", "stage1", "seed"), ("data", "base_model"))
    out = rd.path / "stage1"
    if not rd.done("stage1", fp):
        t0 = time.time()
        if not launch_if_distributed(cfg, rd, 1):
            train_stage1(cfg, [s for s in samples if s.stage == 1], base, out)
        rd.mark("stage1", fp, wall_s=round(time.time() - t0, 1))
    return str(out / "model")


def rejection_rates(rd: RunDir) -> dict[str, float]:
    p = rd.path / "data" / "review_stats.json"
    if not p.is_file():
        return {}
    raw = json.loads(p.read_text())
    return {k: float(v["rejection_rate"] if isinstance(v, dict) else v) for k, v in raw.items()}


def live_review(cfg: PipelineConfig, rd: RunDir, onto, engine) -> LiveRejection:
    """Stage 2's live human input: outputs go to the review store, reviewed by people through
    ``mixtune review serve`` and/or the simulated reviewer (over the same HTTP API)."""
    r = cfg.review
    return LiveRejection(review_store(cfg), reasons=load_reasons(cfg.resolve(cfg.data.ontology)),
                         simulate=r.simulate, k=r.k, window=r.window, prior=r.prior, strength=r.strength,
                         noise=r.noise, bias=r.bias, seed=cfg.seed, engine=engine,
                         rule_ids={t.id: list(t.rule_ids) for t in onto.tasks.values()},
                         families={t.id: t.family for t in onto.tasks.values()})


def step_stage2(cfg: PipelineConfig, rd: RunDir, samples: list, stage1_model: str) -> str:
    fp = rd.fingerprint("stage2", ("model", "stage2", "seed"), ("stage1",))
    out = rd.path / "stage2"
    if not rd.done("stage2", fp):
        onto, value, groups, families = ontology_maps(cfg)
        chains = [list(c.steps) for c in onto.chains.values()]
        t0 = time.time()
        if not launch_if_distributed(cfg, rd, 2):
            engine = rule_engine(cfg)
            live = live_review(cfg, rd, onto, engine) if cfg.review.live else None
            try:
                train_stage2(cfg, samples, stage1_model, out, business_value=value, groups=groups,
                             families=families, chains=chains, rejection=rejection_rates(rd), engine=engine,
                             mixing_log=rd.path / "mixing_log.jsonl",
                             review_outputs=live.cycle if live else None, review_k=cfg.review.k,
                             review_max_new_tokens=cfg.review.max_new_tokens)
            finally:
                if live:
                    live.close()
        rd.mark("stage2", fp, wall_s=round(time.time() - t0, 1))
    return str(out / "model")


def eval_backend(cfg: PipelineConfig, name: str, path: str) -> Backend:
    """The backend evaluating model ``name``: its folder loaded on ``eval.device`` / ``eval.dtype``, or,
    with ``eval.backend: openai``, the OpenAI-compatible endpoint configured for it (vLLM, ``mixtune serve``)."""
    e = cfg.eval
    if e.backend == "local":
        return HFBackend(path, device=e.device, dtype=e.dtype, batch_size=e.batch_size)
    ep = e.endpoints[name]
    key = None
    if ep.api_key_env:
        key = os.environ.get(ep.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {ep.api_key_env} is not set",
                              where=f"eval.endpoints.{name}.api_key_env")
    return OpenAIBackend(ep.url, api_key=key, model=ep.model, concurrency=e.concurrency, timeout=e.timeout)


def ifeval_subsets(cfg: PipelineConfig) -> tuple[list[dict], list[dict]]:
    """The English and Chinese IFEval prompts of the base layer: fixed, seeded, stratified by
    instruction type (:func:`~mixtune.eval.ifeval.subset.packaged_subset`), the same for every model."""
    return (packaged_subset("ifeval", cfg.eval.ifeval_prompts, cfg.seed),
            packaged_subset("ifeval_zh", cfg.eval.ifeval_zh_prompts, cfg.seed))


def step_eval(cfg: PipelineConfig, rd: RunDir, samples: list, models: dict[str, str]) -> dict:
    # the seed picks the samples, the dialogue scripts and the IFEval subset
    fp = rd.fingerprint("eval", ("eval", "seed"), ("stage2",))
    out = rd.sub("eval")
    if rd.done("eval", fp):
        return json.loads((out / "summary.json").read_text())
    onto, *_ = ontology_maps(cfg)
    engine = rule_engine(cfg)
    test = [s for s in samples if s.split == "test" and not s.parent_id]
    # Grouped by task in task order (a stable sort keeps each task's own order).
    subset = sorted(first_per_task(test, cfg.eval.samples_per_task), key=lambda s: s.task_id)
    ife_en, ife_zh = ifeval_subsets(cfg)
    if ife_en or ife_zh:
        types = len(instruction_types(ife_en + ife_zh))
        console.print(f"eval: IFEval {len(ife_en)} English + {len(ife_zh)} Chinese prompts, {types} instruction types")
    records = {}
    for name in cfg.eval.models:
        path = out / f"{name}.jsonl"
        backend = eval_backend(cfg, name, models[name])
        try:
            records[name] = evaluate_model(backend, subset, onto, engine, model_name=name,
                                           max_new_tokens=cfg.eval.max_new_tokens, experience=cfg.eval.experience,
                                           experience_per_task=cfg.eval.experience_per_task, seed=cfg.seed,
                                           session_turns=cfg.eval.session_turns,
                                           experience_kinds=tuple(cfg.eval.experience_scripts),
                                           ifeval_prompts=ife_en, ifeval_zh_prompts=ife_zh, ifeval_language="en",
                                           ifeval_max_new_tokens=cfg.eval.ifeval_max_new_tokens, out_path=path)
        finally:
            close = getattr(backend, "close", None)
            if close:
                close()
            del backend  # a local model's weights (GPU memory) go before the next model loads
    write_matrix(records, out)
    rd.mark("eval", fp)
    return json.loads((out / "summary.json").read_text())


def run_pipeline(cfg: PipelineConfig, *, fresh: bool = False, until: str | None = None) -> Path:
    """Run (or resume) every step; returns the run directory."""
    if until is not None and until not in STEPS:
        raise MixtuneError(f"unknown step {until!r}; steps are {', '.join(STEPS)}", where="--until")
    t0 = time.time()
    apply_runtime(cfg)
    migrate_review_log(cfg)  # before RunDir: --fresh deletes the run folder the old log is in
    rd = RunDir(cfg, fresh=fresh)
    console.print(f"run directory: {rd.path}")
    step_data(cfg, rd)
    samples = load_samples(rd)
    if until == "data":
        return rd.path
    base = step_base_model(cfg, rd, samples)
    if until == "base_model":
        return rd.path
    s1 = step_stage1(cfg, rd, samples, base)
    if until == "stage1":
        return rd.path
    s2 = step_stage2(cfg, rd, samples, s1)
    if until == "stage2":
        return rd.path
    summary = step_eval(cfg, rd, samples, {"base": base, "stage1": s1, "stage2": s2})
    if until == "eval":
        return rd.path
    step_gates_and_registry(cfg, rd)
    if until == "gates":
        return rd.path
    report = write_report(rd.path)
    console.print(f"summary (primary score per family): {json.dumps(family_scores(summary), ensure_ascii=False)}")
    for family in IFEVAL_FAMILIES:
        if summary.get(family):
            line = ", ".join(f"{m} {a['prompt_loose']:.3f}" for m, a in summary[family].items())
            console.print(f"{family} (prompt-level loose): {line}")
    console.print(f"report: {report}  ({time.time() - t0:.0f} s)")
    return rd.path
