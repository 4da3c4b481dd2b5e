"""Versioned dataset build: generate + ingest → validate → review → score → split → perturb → write.

``build_dataset`` writes, under ``out_dir``:

- ``samples.parquet`` — accepted samples (clean, rule-passing, approved) with split (train / val /
  test / traffic: the rollout's held-out live traffic), difficulty and lineage, plus perturbed
  twins (``split='train'``, ``parent_id`` set);
- ``quarantine.jsonl`` — every rejected record with where it came from and why;
- ``rule_report.json`` — rule failures by rule/task, defects injected vs caught;
- ``lineage.parquet`` — one lineage row per accepted sample (DuckDB-queryable);
- ``review_queue.parquet`` — rule-passing samples still awaiting an expert's decision;
- ``review_stats.json`` — per-task rejection rate for the mixing controller;
- ``dataset_version.txt`` — ``ds-<hash>`` of the content, ontology and rule-set versions.

Expert decisions come from the review store (``mixtune.review``), read by the caller and passed in
as ``review_decisions`` (the data layer sits below the review package and does not import it): a
sample approved since the last build enters this one with its reviewers in its lineage, a
rejected one is quarantined with reason ``review:rejected``. Samples still undecided are returned
in :attr:`BuildResult.pending` for the caller to put in the store's data queue.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mixtune.data.difficulty import DifficultyScorer
from mixtune.data.generate import generate_samples, supports
from mixtune.data.ingest import Source, ingest_sources
from mixtune.data.io import write_json, write_jsonl, write_samples
from mixtune.data.lineage import lineage_table, write_lineage
from mixtune.data.ontology import Ontology, load_ontology
from mixtune.data.perturb import perturb_samples
from mixtune.data.schema import ReviewDecision, Sample
from mixtune.data.validate import annotate, blocking, failure_rows, validate_stream
from mixtune.errors import ConfigError
from mixtune.rules import RuleEngine, RuleSet

MAX_REPORTED_FAILURES = 5000
TRAFFIC_FRACTION = 0.05  # held-out rollout traffic per task (the gates' test split stays untouched)


@dataclass
class BuildResult:
    version: str
    counts: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    pending: list[Sample] = field(default_factory=list)  # rule-passing, awaiting an expert decision


def _log(progress: bool, msg: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"[cyan]data build[/] {msg}", highlight=False)


def check_rule_ids(onto: Ontology, ruleset_ids: list[str], source: str) -> None:
    """Every rule id the ontology names must exist in the rule set (a typo must not disable a rule)."""
    known = set(ruleset_ids)
    groups = {r.split(".", 1)[0] for r in ruleset_ids if "." in r}  # "numeric_consistency" names a group
    bad = {t.id: [r for r in t.rule_ids if r not in known and r not in groups] for t in onto.tasks.values()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise ConfigError(f"ontology names rule ids missing from the rule set {source}: {bad}")


def assign_splits(samples: list[Sample], val_fraction: float, test_fraction: float, seed: int,
                  traffic_fraction: float = 0.0) -> None:
    """Stratified per task, deterministic in ``seed``: order by a seeded hash of the id, cut.

    ``traffic`` is a held-out split for the staged rollout's live traffic, cut after ``test`` so it
    never overlaps the evaluation set (the rollout must not replay prompts the gates already saw).
    """
    by_task: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_task[s.task_id].append(s)
    for group in by_task.values():
        group.sort(key=lambda s: hashlib.sha256(f"{seed}|{s.id}".encode()).hexdigest())
        n_val = round(len(group) * val_fraction)
        n_test = round(len(group) * test_fraction)
        n_traffic = round(len(group) * traffic_fraction)
        for i, s in enumerate(group):
            s.split = ("val" if i < n_val else "test" if i < n_val + n_test
                       else "traffic" if i < n_val + n_test + n_traffic else "train")


def dataset_version(samples: list[Sample], onto_version: str, rules_version: str) -> str:
    h = hashlib.sha256(f"{onto_version}|{rules_version}".encode())
    for sid, split in sorted((s.id, s.split) for s in samples):
        h.update(f"{sid}:{split};".encode())
    return "ds-" + h.hexdigest()[:12]


def build_dataset(ontology_path: str | Path, rules_path: str | Path, out_dir: str | Path, *, n_per_task: int,
                  defect_rate: float, val_fraction: float, test_fraction: float, perturb_fraction: float,
                  seed: int, sources: Sequence[str | Source] = (), require_review: bool = False,
                  reviewer: str | None = "generator", progress: bool = True, value_pool: int = 0,
                  traffic_fraction: float = TRAFFIC_FRACTION,
                  review_decisions: Mapping[str, ReviewDecision] | None = None) -> BuildResult:
    """Build a versioned dataset directory; see the module docstring for the files written.

    ``traffic_fraction`` of each task becomes the held-out ``traffic`` split that the staged
    rollout sends through the gateway (disjoint from ``test``, which the evaluation matrix uses).
    ``review_decisions`` maps sample id → the review store's decision on it
    (:func:`mixtune.review.samples.sample_decisions`); it overrides the generator's auto-approval.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onto = load_ontology(ontology_path)
    rs = RuleSet.load(rules_path)
    check_rule_ids(onto, rs.ids, str(rules_path))
    engine = RuleEngine(rs)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")

    samples = generate_samples(onto, n_per_task=n_per_task, seed=seed, defect_rate=defect_rate,
                               value_pool=value_pool)
    _log(progress, f"generated {len(samples)} samples for {sum(supports(t) for t in onto.tasks)} tasks")
    quarantine: list[dict] = []
    n_ingested = 0
    if sources:
        ing = ingest_sources([s if isinstance(s, Source) else Source(str(s)) for s in sources], ontology=onto)
        n_ingested = ing.input_count
        samples.extend(ing.samples)
        quarantine.extend(ing.quarantine)
        _log(progress, f"ingested {len(ing.samples)} of {ing.input_count} records from {len(sources)} source(s)")

    seen: set[str] = set()
    unique: list[Sample] = []
    for s in samples:  # generated and ingested data may overlap: same content → same id
        if s.id in seen:
            quarantine.append({"sample_id": s.id, "task_id": s.task_id, "file": s.source_uri, "line": None,
                               "reason": "duplicate_id", "detail": "same content already accepted"})
            continue
        seen.add(s.id)
        unique.append(s)

    rules_for = {t.id: t.rule_ids for t in onto.tasks.values()}
    accepted: list[Sample] = []
    by_rule: Counter = Counter()
    by_task_failed: Counter = Counter()
    reported: list[dict] = []
    defects = {"injected": Counter(), "caught": Counter()}
    false_positives: list[str] = []
    for s, fails in validate_stream(unique, engine, rules_for):
        annotate(s, fails, rs.version)
        block = blocking(fails)
        if s.defect:
            defects["injected"][s.defect] += 1
            defects["caught"][s.defect] += bool(block)
        elif block:
            false_positives.append(s.id)
        if len(reported) < MAX_REPORTED_FAILURES:
            reported.extend(failure_rows(fails)[: MAX_REPORTED_FAILURES - len(reported)])
        if block:
            by_rule.update({f.rule_id for f in block})
            by_task_failed[s.task_id] += 1
            quarantine.append({"sample_id": s.id, "task_id": s.task_id, "file": s.source_uri, "line": None,
                               "reason": f"rule:{block[0].rule_id}", "detail": block[0].reason,
                               "rules": sorted({f.rule_id for f in block}), "defect": s.defect})
            continue
        accepted.append(s)
    _log(progress, f"validated {len(unique)}: {len(accepted)} pass, {len(unique) - len(accepted)} quarantined")

    decisions = review_decisions or {}
    for s in unique:  # expert decisions first: they override auto-approval and ingested statuses
        d = decisions.get(s.id)
        if d is not None:
            d.apply(s)
    pending: list[Sample] = []
    train_ready: list[Sample] = []
    for s in accepted:
        if s.review_status == "pending" and reviewer is not None and not require_review and s.source_type == "generated":
            s.review_status, s.reviewer_id, s.review_time = "approved", reviewer, now
        if s.review_status in ("rejected", "needs_fix"):
            quarantine.append({"sample_id": s.id, "task_id": s.task_id, "file": s.source_uri, "line": None,
                               "reason": f"review:{s.review_status}", "detail": s.reviewer_id})
            continue
        if s.review_status in ("pending", "in_review"):
            pending.append(s)  # into the store's data queue; without require_review it trains meanwhile
            if require_review:
                continue
        train_ready.append(s)

    scorer = DifficultyScorer()
    for s in train_ready:
        t = onto.tasks.get(s.task_id)
        scorer.apply(s, t.difficulty.model_dump() if t else None, len(t.rule_ids) if t else 0)
    assign_splits(train_ready, val_fraction, test_fraction, seed, traffic_fraction)
    parents = [s for s in train_ready if s.split == "train" and not s.chain_steps]
    twins = perturb_samples(parents, perturb_fraction, seed)
    for tw in twins:
        scorer.apply(tw, None, 0)
    final = train_ready + twins
    version = dataset_version(final, onto.version, rs.version)
    for s in final:
        s.dataset_version = version
    _log(progress, f"{len(train_ready)} accepted + {len(twins)} perturbed twins → {version}")

    paths = {
        "samples": write_samples(final, out / "samples.parquet"),
        "quarantine": write_jsonl(quarantine, out / "quarantine.jsonl"),
        "lineage": write_lineage(lineage_table(final), out / "lineage.parquet"),
    }
    if pending:
        paths["review_queue"] = write_samples(pending, out / "review_queue.parquet")
    elif (out / "review_queue.parquet").exists():  # stale queue from an earlier build
        (out / "review_queue.parquet").unlink()
    rates = rejection_rates(unique, by_task_failed, onto, decided=set(decisions))
    paths["review_stats"] = write_json(rates, out / "review_stats.json")
    counts = {
        "generated": len(samples) - sum(1 for s in samples if s.source_type != "generated"),
        "ingested_records": n_ingested, "validated": len(unique), "accepted": len(train_ready),
        "quarantined": sum(q.get("n_records", 1) for q in quarantine), "pending_review": len(pending),
        "review_decisions": sum(s.id in decisions for s in unique), "perturbed": len(twins),
        "total": len(final), **{f"split_{k}": v for k, v in sorted(Counter(s.split for s in final).items())},
        "by_task": dict(sorted(Counter(s.task_id for s in train_ready).items())),
        "by_level": dict(sorted(Counter(s.level for s in train_ready).items())),
    }
    report = {
        "ruleset_version": rs.version, "ontology_version": onto.version, "dataset_version": version,
        "checked": len(unique), "blocked": len(unique) - len(accepted), "by_rule": dict(by_rule),
        "by_task": dict(by_task_failed), "false_positives": false_positives,
        "defects": {"injected": dict(defects["injected"]), "caught": dict(defects["caught"])},
        "failures": reported,
    }
    paths["rule_report"] = write_json(report, out / "rule_report.json")
    (out / "dataset_version.txt").write_text(version + "\n", encoding="utf-8")
    paths["dataset_version"] = out / "dataset_version.txt"
    write_json(counts, out / "build_summary.json")
    return BuildResult(version=version, counts=counts, paths={k: str(v) for k, v in paths.items()},
                       pending=pending)


def rejection_rates(samples: list[Sample], failed: Counter, onto: Ontology,
                    decided: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
    """Per-task rejection rate from the data itself: expert decisions (the review store's, for the
    ids in ``decided``, or carried by ingested samples), else the validation failure rate as a proxy.

    This is the heat engine's fixed rejection input when stage 2 runs without live review.
    """
    reviewed: dict[str, list[str]] = defaultdict(list)
    total: Counter = Counter()
    for s in samples:
        total[s.task_id] += 1
        expert = s.id in decided or (s.reviewer_id and s.source_type != "generated")
        if s.review_status in ("approved", "rejected", "needs_fix") and expert:
            reviewed[s.task_id].append(s.review_status)
    rates = {}
    for tid in onto.tasks:
        if reviewed.get(tid):
            r = reviewed[tid]
            rates[tid] = round(sum(x != "approved" for x in r) / len(r), 4)
        else:
            rates[tid] = round(failed[tid] / total[tid], 4) if total[tid] else 0.0
    return rates
