"""Evaluation runner: generate with a backend, score every sample on the three layers, write jsonl.

One record per (sample, layer), one json line each::

    {"model", "sample_id", "task_id", "family", "group", "layer", "prompt", "prediction",
     "reference", "metrics": {name: float}, "primary": float}

- ``base``: format compliance (the rule engine over the task's rule ids) and terminology accuracy
  (the glossary rules alone); IFEval prompts, when given, add one record each, of family and task
  ``ifeval`` (English) or ``ifeval_zh`` (Chinese), sample id ``<family>:<key>``, with the
  per-instruction verdicts in ``detail``. They are a benchmark beside the domain, not a domain
  family: :mod:`mixtune.eval.matrix` reports them in their own summary block and the gates'
  ``overall`` scope leaves them out.
- ``business``: the task's declared KPIs (:func:`mixtune.data.kpis.score`); ``primary`` is the
  task's primary metric.
- ``experience``: scripted stress dialogues (:mod:`mixtune.eval.experience`) on a subset.

Generation is separated from scoring (:func:`score_predictions`) so the cheap rule-based layers
can be re-scored or benchmarked without a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixtune.data.kpis import score as score_kpi
from mixtune.data.schema import Sample
from mixtune.errors import DataError
from mixtune.eval.backends import Backend
from mixtune.eval.conversation import generate_all, prompt_text, reference_text, turn_prompts
from mixtune.eval.experience import KINDS, ExperienceAgent
from mixtune.eval.ifeval import score_responses
from mixtune.eval.matrix import aggregate
from mixtune.eval.simulated_user import SimulatedUser, session_record
from mixtune.jsonl import read_jsonl_objects

KpiFn = Callable[[str, str, Sample, Any], float]


#: Rule kinds whose rules make up the terminology-accuracy metric.
GLOSSARY_KINDS = ("terminology",)


def score_predictions(samples: list[Sample], predictions: list[str], ontology: Any, engine: Any, *,
                      model_name: str, kpi_fn: KpiFn | None = None) -> list[dict]:
    """Base + business records for already generated predictions (no model needed)."""
    kpi = kpi_fn or score_kpi
    glossary = engine.rule_ids(kinds=GLOSSARY_KINDS)
    records: list[dict] = []
    for s, pred in zip(samples, predictions, strict=True):
        task = ontology.task(s.task_id)
        text = prompt_text(turn_prompts(s)[-1])
        ref = reference_text(s)
        head = {"model": model_name, "sample_id": s.id, "task_id": s.task_id, "family": task.family,
                "group": task.group, "prompt": text, "prediction": pred, "reference": ref}
        base: dict[str, float] = {}
        if task.rule_ids:
            base["format_compliance"] = float(engine.compliance(pred, rule_ids=task.rule_ids, input_text=text))
        if glossary:
            base["terminology_accuracy"] = float(engine.compliance(pred, rule_ids=glossary, input_text=text))
        if base:
            primary = base.get("format_compliance", base.get("terminology_accuracy", 0.0))
            rec = {**head, "layer": "base", "metrics": base, "primary": _unit(primary)}
            if task.rule_ids and hasattr(engine, "check"):  # the report highlights these spans
                rec["findings"] = [{"rule_id": f.rule_id, "severity": f.severity, "reason": f.reason,
                                    "span": list(f.span) if f.span else None}
                                   for f in engine.check(pred, rule_ids=task.rule_ids, input_text=text)]
            records.append(rec)
        business = {m: float(kpi(m, pred, s, engine)) for m in task.kpis}
        records.append({**head, "layer": "business", "metrics": business,
                        "primary": _unit(business[task.primary_metric])})
    return records


def _unit(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


def evaluate_ifeval(backend: Backend, prompts: list[dict], *, model_name: str, max_new_tokens: int,
                    family: str = "ifeval", language: str = "auto", progress: bool = True,
                    seed: int | None = 0) -> list[dict]:
    """Run IFEval-format prompts (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``).

    One ``base``-layer record per prompt, of family and task ``family``; ``language`` is the
    scorer's counting flavour (``auto``: Chinese-aware for Chinese prompts). ``primary`` is the
    prompt-level strict verdict; ``detail`` keeps the instruction ids and their strict and loose
    verdicts, so the summary can compute IFEval's instruction-level accuracies (all instructions
    pooled, not a mean of per-prompt shares) and the instruction types covered.
    """
    for i, p in enumerate(prompts):
        if not isinstance(p, dict) or "prompt" not in p or "instruction_id_list" not in p:
            raise DataError("IFEval prompt needs 'prompt' and 'instruction_id_list'", where=f"ifeval prompt {i}")
    keys = [f"{family}:{p.get('key', i)}" for i, p in enumerate(prompts)]
    if len(set(keys)) != len(keys):  # gates pair records on the sample id
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"IFEval prompt key {dup.split(':', 1)[1]!r} occurs twice", where=f"{family} prompts")
    convs = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
    responses = generate_all(backend, convs, max_new_tokens=max_new_tokens, desc=f"{model_name}: {family}",
                             progress=progress, seed=seed)
    result = score_responses(prompts, responses, language)
    records = []
    for key, p, resp, v in zip(keys, prompts, responses, result.verdicts, strict=True):
        strict_list, loose_list = list(v.strict_follow_list), list(v.loose_follow_list)
        metrics = {
            "ifeval_prompt_strict": float(all(strict_list)),
            "ifeval_prompt_loose": float(all(loose_list)),
            "ifeval_inst_strict": sum(strict_list) / max(1, len(strict_list)),
            "ifeval_inst_loose": sum(loose_list) / max(1, len(loose_list)),
        }
        records.append({"model": model_name, "sample_id": key, "task_id": family, "family": family,
                        "group": "general", "layer": "base", "prompt": p["prompt"], "prediction": resp,
                        "reference": "", "metrics": metrics, "primary": metrics["ifeval_prompt_strict"],
                        "detail": {"kind": "ifeval", "language": v.language,
                                   "instruction_id_list": list(v.instruction_id_list),
                                   "strict_follow_list": strict_list, "loose_follow_list": loose_list}})
    return records


def evaluate_model(backend: Backend, samples: list[Sample], ontology: Any, engine: Any, *, model_name: str,
                   max_new_tokens: int, experience: bool = True, ifeval_prompts: list[dict] | None = None,
                   ifeval_zh_prompts: list[dict] | None = None, ifeval_language: str = "auto",
                   ifeval_max_new_tokens: int | None = None,
                   out_path: Path, progress: bool = True, kpi_fn: KpiFn | None = None,
                   experience_per_task: int = 2, judge: Any = None, seed: int = 0,
                   session_turns: int = 6, user_voice: Any = None,
                   experience_kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """Evaluate one model on all layers; writes the per-sample jsonl to ``out_path`` and returns it.

    The experience layer runs the scripted stress dialogues (``experience_kinds``, by default all
    four of :data:`~mixtune.eval.experience.KINDS`) and, with ``session_turns`` > 0,
    adaptive simulated-user sessions of up to that many turns on the same samples
    (:mod:`mixtune.eval.simulated_user`; ``user_voice``: a backend that phrases the user's turns).

    ``ifeval_prompts`` (family ``ifeval``, counted with ``ifeval_language``) and
    ``ifeval_zh_prompts`` (family ``ifeval_zh``, Chinese counting) add the IFEval records of
    :func:`evaluate_ifeval`, generated with ``ifeval_max_new_tokens`` (default ``max_new_tokens``):
    IFEval asks for 300-word essays and several paragraphs, far longer than a domain answer.

    Unknown task ids fail before any generation. The file is written to a temporary name and
    renamed, so an interrupted run never leaves a half file that looks complete.
    """
    unknown = sorted({s.task_id for s in samples} - set(ontology.tasks))
    if unknown:
        raise DataError(f"samples use task ids missing from the ontology: {unknown}")
    per_sample = [turn_prompts(s) for s in samples]
    flat = [c for convs in per_sample for c in convs]
    outs = generate_all(backend, flat, max_new_tokens=max_new_tokens, desc=f"{model_name}: generate",
                        progress=progress, seed=seed)
    preds, last_turn, k = [], {}, 0
    for s, convs in zip(samples, per_sample, strict=True):
        turns = outs[k:k + len(convs)]
        k += len(convs)
        preds.append("\n".join(turns))
        last_turn[s.id] = turns[-1]
    records = score_predictions(samples, preds, ontology, engine, model_name=model_name, kpi_fn=kpi_fn)
    for family, prompts, language in (("ifeval", ifeval_prompts, ifeval_language),
                                      ("ifeval_zh", ifeval_zh_prompts, "zh")):
        if prompts:
            records += evaluate_ifeval(backend, prompts, model_name=model_name, family=family, language=language,
                                       max_new_tokens=ifeval_max_new_tokens or max_new_tokens, progress=progress,
                                       seed=seed)
    if experience and samples:
        agent = ExperienceAgent(backend, ontology, engine, kpi_fn=kpi_fn or score_kpi,
                                max_new_tokens=max_new_tokens, judge=judge, seed=seed,
                                kinds=tuple(experience_kinds))
        chosen = agent.select(samples, per_task=experience_per_task)
        records += agent.run(chosen, model_name=model_name, first_answers=last_turn, progress=progress)
        if session_turns > 0:
            records += run_sessions(backend, chosen, ontology, engine, kpi_fn=kpi_fn or score_kpi,
                                    model_name=model_name, max_new_tokens=max_new_tokens, max_turns=session_turns,
                                    first_answers=last_turn, seed=seed, voice=user_voice, progress=progress)
    write_jsonl(records, Path(out_path))
    return records


def run_sessions(backend: Backend, samples: list[Sample], ontology: Any, engine: Any, *, kpi_fn: KpiFn,
                 model_name: str, max_new_tokens: int, max_turns: int = 6, first_answers: dict[str, str] | None = None,
                 seed: int = 0, voice: Any = None, progress: bool = True) -> list[dict]:
    """Adaptive simulated-user sessions against ``backend``; one ``experience`` record per session.

    ``first_answers`` (sample id → the model's answer to the sample's question, already generated
    by the business layer) saves the first generation pass.
    """
    # No abandonment here: the matrix wants every turn's score, so degradation over turns shows.
    user = SimulatedUser(ontology, engine, kpi_fn=kpi_fn, max_turns=max_turns, seed=seed, voice=voice,
                         abandon_after=0)
    first = dict(first_answers or {})
    rounds = [0]

    def respond(convs, sessions):
        rounds[0] += 1
        if rounds[0] == 1 and all(s.sample.id in first for s in sessions):
            return [first[s.sample.id] for s in sessions]
        return generate_all(backend, convs, max_new_tokens=max_new_tokens, progress=progress, seed=seed,
                            desc=f"{model_name}: simulated users, turn {len(sessions[0].turns)}")

    return [session_record(s, model_name) for s in user.run(samples, respond)]


def write_jsonl(records: list[dict], path: Path) -> None:
    """Atomically write records as json lines (UTF-8, Chinese kept readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """Read records written by :func:`write_jsonl`; a broken line is a DataError naming it."""
    return [obj for _, obj in read_jsonl_objects(path, "evaluation records")]


def write_matrix(records_by_model: dict[str, list[dict]], out_dir: Path) -> dict:
    """Aggregate records into ``matrix.json`` and ``summary.json`` under ``out_dir``.

    matrix: model → task → layer → metric → mean (``primary`` included as a metric).
    summary: model → task family → mean primary score in [0, 1] (business layer, else base layer),
    plus one block per IFEval set evaluated (``ifeval``, ``ifeval_zh``): model → the four IFEval
    aggregates, ``n``, ``instructions`` and ``instruction_types`` (:func:`~mixtune.eval.matrix.aggregate`).
    """
    matrix, summary = aggregate(records_by_model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("matrix.json", matrix), ("summary.json", summary)):
        tmp = out / (name + ".tmp")
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, out / name)
    return matrix
