"""The release end of ``mixtune run``: validate gate → registry → offline canary → release.

The champion is the registry's ``champion`` alias when one exists (its evaluation records are
stored with it), otherwise the untrained base model — the honest "what we would serve without
this run" reference. Each gate decision goes to ``gates.jsonl`` with its evidence; the registry
only moves the candidate when the gate that guards the transition passed.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from mixtune.config import PipelineConfig
from mixtune.rundir import RunDir

console = Console(stderr=True)


def registry_url(cfg: PipelineConfig, run_dir: Path) -> str:
    """Relative SQLite paths live in the run's output folder (shared by runs of that folder)."""
    url = cfg.registry.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix):].startswith("/"):
        return prefix + str((run_dir.parent / url[len(prefix):]).resolve())
    return url


def _records(path: Path) -> list[dict]:
    from mixtune.release.gates import load_eval_records

    return load_eval_records(path)


def _gate(name: str, specs_cfg, cand, champ, cfg: PipelineConfig, model_id: int, gates_path: Path,
          champion_name: str):
    from mixtune.release.gates import append_decision, evaluate_gate, parse_specs

    specs = parse_specs([s.model_dump(exclude_none=True) for s in specs_cfg], where=f"gates.{name}")
    decision = evaluate_gate(name, specs, cand, champ, n_boot=cfg.gates.bootstrap_samples,
                             confidence=cfg.gates.confidence, seed=cfg.seed,
                             meta={"model_id": model_id, "champion": champion_name})
    append_decision(gates_path, decision)
    console.print(f"gate {name}: {decision.status}")
    return decision


def canary_decision(cfg: PipelineConfig, rd: RunDir, model_id: int, champion_path: str):
    """The canary A/B decision: a staged rollout through real serve + gateway processes
    (``gates.rollout``, see :mod:`mixtune.release.rollout`), or with ``gates.rollout.enabled: false``
    the offline replay of held-out prompts against champion and candidate."""
    from mixtune.data.io import read_samples

    if cfg.gates.rollout.enabled:
        from mixtune.data.kpis import score as score_kpi
        from mixtune.data.ontology import load_ontology
        from mixtune.release.gates import append_decision
        from mixtune.release.rollout import gate_decisions, run_rollout
        from mixtune.release.rollout_analysis import StepThresholds
        from mixtune.rules import RuleEngine, RuleSet

        ro = cfg.gates.rollout
        samples = [s for s in read_samples(rd.path / "data" / "samples.parquet") if not s.parent_id]
        traffic = [s for s in samples if s.split == "traffic"]
        source = "traffic split"
        if not traffic:  # a dataset built before the traffic split existed: val is also held out from eval
            traffic, source = [s for s in samples if s.split == "val"], "val split (no traffic split in this dataset)"
        db = rd.path / "shadow.db"
        if db.exists():
            db.unlink()  # the canary of an earlier attempt compared another candidate
        res = run_rollout(
            champion_path, str(rd.path / "stage2" / "model"), traffic=traffic, session_samples=traffic,
            ontology=load_ontology(cfg.resolve(cfg.data.ontology)),
            engine=RuleEngine(RuleSet.load(cfg.resolve(cfg.data.rules))), kpi_fn=score_kpi,
            out_dir=rd.path / "rollout", db_path=db, steps=list(ro.steps), requests_per_step=ro.requests_per_step,
            sessions_per_step=ro.sessions_per_step, session_turns=ro.session_turns, feedback_noise=ro.feedback_noise,
            max_new_tokens=ro.max_new_tokens, concurrency=ro.concurrency,
            thresholds=StepThresholds(**ro.analysis.model_dump(), n_boot=cfg.gates.bootstrap_samples,
                                      confidence=cfg.gates.confidence, seed=cfg.seed),
            startup_timeout=ro.startup_timeout, shutdown_timeout=ro.shutdown_timeout,
            canary_timeout=ro.canary_timeout, dtype=cfg.eval.dtype, device=cfg.eval.device, seed=cfg.seed, on_progress=console.print)
        steps, decision = gate_decisions(res, {"model_id": model_id, "traffic_source": source})
        for d in [*steps, decision]:
            append_decision(rd.path / "gates.jsonl", d)
        console.print(f"gate canary (staged rollout): {decision.status} — {res.reason}")
        return decision

    from mixtune.eval.backends import HFBackend
    from mixtune.release.gates import append_decision
    from mixtune.release.shadow import canary_report, replay_traffic
    from mixtune.release.store import ShadowStore
    from mixtune.rules import RuleEngine, RuleSet, mask_pii

    c = cfg.gates.shadow
    seen: dict[str, int] = {}
    traffic = []
    for s in read_samples(rd.path / "data" / "samples.parquet"):
        if s.split != "test" or s.parent_id or seen.get(s.task_id, 0) >= c.traffic_per_task:
            continue
        seen[s.task_id] = seen.get(s.task_id, 0) + 1
        first_user = next(m for m in s.messages if m.role == "user")
        traffic.append({"request_id": f"heldout-{s.id}", "user": f"user-{len(traffic) % 17}", "task_id": s.task_id,
                        "messages": [{"role": "user", "content": first_user.content}]})
    db = rd.path / "shadow.db"
    if db.exists():
        db.unlink()  # the canary of an earlier attempt compared another candidate
    store = ShadowStore(f"sqlite:///{db}")
    dtype, device = cfg.eval.dtype, cfg.eval.device  # "auto" follows the accelerator, as the eval does
    replay_traffic(traffic, HFBackend(champion_path, device=device, dtype=dtype, batch_size=cfg.eval.batch_size),
                   HFBackend(str(rd.path / "stage2" / "model"), device=device, dtype=dtype,
                             batch_size=cfg.eval.batch_size),
                   store, mask=mask_pii, max_new_tokens=c.max_new_tokens, batch_size=cfg.eval.batch_size)
    engine = RuleEngine(RuleSet.load(cfg.resolve(cfg.data.rules)))
    decision = canary_report(store, rule_score=lambda prompt, answer: engine.compliance(answer, input_text=prompt),
                             min_delta=c.min_delta, alpha=c.alpha, n_boot=cfg.gates.bootstrap_samples,
                             confidence=cfg.gates.confidence, seed=cfg.seed, min_pairs=c.min_pairs)
    decision.meta["model_id"] = model_id
    append_decision(rd.path / "gates.jsonl", decision)
    console.print(f"gate canary: {decision.status}")
    return decision


def step_gates_and_registry(cfg: PipelineConfig, rd: RunDir) -> dict:
    """Evaluate gates and move the stage-2 model through the registry; returns a summary."""
    from mixtune.release.registry import Registry

    fp = rd.fingerprint("gates", ("gates", "registry"), ("eval",))
    if rd.done("gates", fp):
        return rd.state["steps"]["gates"]
    gates_path = rd.path / "gates.jsonl"
    if gates_path.exists():
        gates_path.unlink()  # decisions of an interrupted attempt are superseded by this one
    cand = _records(rd.path / "eval" / "stage2.jsonl")
    reg = Registry(registry_url(cfg, rd.path))
    try:
        champion = reg.get_alias(cfg.registry.model_name, "champion")
        if champion is not None and Path(champion.metrics.get("eval_records", "")).is_file():
            champ, champ_name = _records(Path(champion.metrics["eval_records"])), f"registry:{champion.id}"
            champion_path = champion.path
        else:
            champ, champ_name = _records(rd.path / "eval" / "base.jsonl"), "base"
            champion_path = str(rd.state["steps"].get("base_model", {}).get("path") or cfg.model.name_or_path)
        summary = json.loads((rd.path / "eval" / "summary.json").read_text())
        model = reg.register(cfg.registry.model_name, str(rd.path / "stage2" / "model"), metrics={
            "eval_records": str(rd.path / "eval" / "stage2.jsonl"), "summary": summary.get("stage2", {}),
            "run": str(rd.path)}, who="mixtune run")
        out = {"model_id": model.id, "champion": champ_name, "gates": {}}

        def recorded(d):  # only decisions the registry stored, bound to these weights, count as evidence
            return reg.record_gate(model.id, d.to_dict(), who="mixtune run")

        # validate: offline evaluation matrix vs the champion → validated (or rejected)
        decision = _gate("validate", cfg.gates.validate_, cand, champ, cfg, model.id, gates_path, champ_name) \
            if cfg.gates.validate_ else None
        out["gates"]["validate"] = decision.status if decision else "not configured"
        if decision and decision.status == "pass":
            model = reg.transition(model.id, "validated", who="mixtune run", why="validate gate passed",
                                   evidence=recorded(decision))
            if cfg.gates.shadow.enabled or cfg.gates.canary:
                model = reg.transition(model.id, "canary", who="mixtune run",
                                       why="canary: held-out prompts replayed as shadow traffic")
                decisions = []
                if cfg.gates.canary:
                    decisions.append(_gate("canary", cfg.gates.canary, cand, champ, cfg, model.id, gates_path,
                                           champ_name))
                if cfg.gates.shadow.enabled:
                    decisions.append(canary_decision(cfg, rd, model.id, champion_path))
                # Release needs every canary check to pass: the least favourable decision rules.
                decision = max(decisions, key=lambda d: ("pass", "inconclusive", "fail").index(d.status))
                out["gates"]["canary"] = decision.status
                if decision.status == "pass":
                    model = reg.transition(model.id, "released", who="mixtune run", why="canary gate passed",
                                           evidence=recorded(decision))
        if decision and decision.status == "fail":
            model = reg.transition(model.id, "rejected", who="mixtune run",
                                   why=f"{decision.gate} gate failed", evidence=recorded(decision))
        shown = reg.show(model.id)
        out["state"] = shown.state
        (rd.path / "registry.json").write_text(json.dumps({
            "url": registry_url(cfg, rd.path), "model": shown.__dict__}, ensure_ascii=False, indent=1, default=str))
    finally:
        reg.close()
    rd.mark("gates", fp, **out)
    console.print(f"registry: model {out['model_id']} is {out['state']}")
    return out
