"""``mixtune data ingest|build|validate|export``."""

from __future__ import annotations

from pathlib import Path

import typer

from mixtune.errors import DataError

data_app = typer.Typer(help="Ingest, build, validate and export datasets.", no_args_is_help=True)


@data_app.command("ingest")
def ingest(
    paths: list[Path] = typer.Argument(..., help="jsonl / json / parquet / csv files (Alpaca, ShareGPT, messages)"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    ontology: Path | None = typer.Option(None, "--ontology", help="quarantine task ids not in this ontology"),
    field_map: list[str] = typer.Option([], "--field-map", help="target=source, e.g. output=response (repeatable)"),
    default_task: str | None = typer.Option(None, "--default-task", help="task id for records without one"),
    task_from: str | None = typer.Option(None, "--task-from", help="take the task id from this column"),
    task_map: list[str] = typer.Option([], "--task-map",
                                       help="value=task_id for --task-from values (repeatable; others quarantined)"),
) -> None:
    """Every record ends accepted (samples.parquet) or quarantined (quarantine.jsonl) with its reason."""
    from rich.console import Console

    from mixtune.data.ingest import (  # why: fast --help (torch, via config)
        Source,
        ingest_sources,
        parse_field_map,
    )
    from mixtune.data.io import write_json, write_jsonl, write_samples  # why: fast --help (pyarrow)
    from mixtune.data.ontology import load_ontology  # why: fast --help (torch, via config)

    mapping = {}
    for item in task_map:
        value, sep, tid = item.partition("=")
        if not sep or not tid.strip():
            raise DataError(f"--task-map {item!r} must look like value=task_id")
        mapping[value.strip()] = tid.strip()
    if mapping and not task_from:
        raise DataError("--task-map needs --task-from COLUMN")
    onto = load_ontology(ontology) if ontology else None
    fmap = parse_field_map(field_map)
    if default_task and onto is not None and default_task not in onto.tasks:
        raise DataError(f"--default-task {default_task!r} is not in the ontology; known: {sorted(onto.tasks)}")
    res = ingest_sources([Source(str(p), fmap, default_task, task_from, mapping) for p in paths], ontology=onto)
    out.mkdir(parents=True, exist_ok=True)
    write_samples(res.samples, out / "samples.parquet")
    write_jsonl(res.quarantine, out / "quarantine.jsonl")
    summary = res.summary()
    write_json(summary, out / "ingest_summary.json")
    c = Console()
    c.print(f"input {summary['input']}  accepted {summary['accepted']}  quarantined {summary['quarantined']}",
            highlight=False)
    for reason, n in summary["by_reason"].items():
        c.print(f"  {reason}: {n}", highlight=False)
    c.print(f"wrote {out / 'samples.parquet'}, {out / 'quarantine.jsonl'}, {out / 'ingest_summary.json'}",
            highlight=False)


@data_app.command("build")
def build(
    ontology: Path = typer.Option(..., "--ontology", help="ontology YAML"),
    rules: Path = typer.Option(..., "--rules", help="rule set YAML"),
    out: Path = typer.Option(..., "--out", help="output dataset directory"),
    n_per_task: int = typer.Option(300, "--n-per-task", min=1),
    defect_rate: float = typer.Option(0.05, "--defect-rate", min=0.0, max=0.5),
    val_fraction: float = typer.Option(0.1, "--val", min=0.0, max=0.5),
    test_fraction: float = typer.Option(0.1, "--test", min=0.0, max=0.5),
    perturb_fraction: float = typer.Option(0.3, "--perturb", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    source: list[str] = typer.Option([], "--source", help="extra data files to ingest (repeatable)"),
    require_review: bool = typer.Option(False, "--require-review", help="train only on expert-approved samples"),
    reviewer: str | None = typer.Option("generator", "--reviewer", help="auto-approving reviewer id for generated data"),
    review_store: str | None = typer.Option(None, "--review-store", help="review store (SQLite path or SQLAlchemy "
                                            "URL; default: review.db beside --out): its sample decisions apply, "
                                            "undecided samples join its data queue"),
    required: int = typer.Option(2, "--required", min=1, help="agreeing reviewers that decide a sample"),
) -> None:
    """Generate + ingest, validate, review, score, split, perturb; write a versioned dataset."""
    from rich.console import Console

    from mixtune.data.build import build_dataset  # why: fast --help (torch, via config)
    from mixtune.review.samples import (
        LEGACY_LOG,
        enqueue_samples,
        import_legacy_log,
        migrate_message,
        sample_decisions,
    )
    from mixtune.review.store import ReviewStore

    c = Console()
    review_store = review_store or str(out.resolve().parent / "review.db")
    store = ReviewStore(review_store)
    if (out / LEGACY_LOG).is_file():  # decisions of the old review queue move into the store once
        c.print(migrate_message(import_legacy_log(store, out / LEGACY_LOG), out / LEGACY_LOG, review_store),
                highlight=False, soft_wrap=True)
    res = build_dataset(ontology, rules, out, n_per_task=n_per_task, defect_rate=defect_rate,
                        val_fraction=val_fraction, test_fraction=test_fraction, perturb_fraction=perturb_fraction,
                        seed=seed, sources=source, require_review=require_review, reviewer=reviewer or None,
                        review_decisions=sample_decisions(store, required))
    queued = enqueue_samples(store, res.pending, data_version=res.version)
    c.print(f"dataset {res.version}", highlight=False)
    for k, v in res.counts.items():
        if not isinstance(v, dict):
            c.print(f"  {k}: {v}", highlight=False)
    c.print(f"wrote {out}; {queued} new sample(s) in the data queue of {review_store}", highlight=False,
            soft_wrap=True)


@data_app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="samples parquet or jsonl"),
    rules: Path = typer.Option(..., "--rules", help="rule set YAML"),
    ontology: Path | None = typer.Option(None, "--ontology", help="take each task's rule ids from here"),
    report: Path | None = typer.Option(None, "--report", help="write failure rows as jsonl"),
    batch_size: int = typer.Option(2048, "--batch-size", min=1),
) -> None:
    """Stream a samples file through the rule engine; exit 1 when any sample has a blocking failure."""
    import time
    from collections import Counter

    from rich.console import Console

    from mixtune.data.io import iter_samples, write_jsonl  # why: fast --help (pyarrow)
    from mixtune.data.ontology import load_ontology  # why: fast --help (torch, via config)
    from mixtune.data.validate import (  # why: fast --help (pyarrow)
        blocking,
        failure_rows,
        validate_file,
        validate_stream,
    )
    from mixtune.rules import RuleEngine, RuleSet  # why: fast --help (jsonschema, yaml)

    engine = RuleEngine(RuleSet.load(rules))
    rules_for = {t.id: t.rule_ids for t in load_ontology(ontology).tasks.values()} if ontology else {}
    n = bad = 0
    by_rule: Counter = Counter()
    rows: list[dict] = []
    t0 = time.perf_counter()
    if path.suffix == ".jsonl":
        stream = ((s.id, s.task_id, f) for s, f in validate_stream(iter_samples(path, batch_size), engine,
                                                                   rules_for, batch_size))
    else:  # column-wise fast path for parquet
        stream = validate_file(path, engine, rules_for, batch_size)
    for _sid, _task, fails in stream:
        n += 1
        block = blocking(fails)
        bad += bool(block)
        by_rule.update({f.rule_id for f in block})
        if report is not None:
            rows.extend(failure_rows(fails))
    dt = time.perf_counter() - t0
    if report is not None:
        write_jsonl(rows, report)
    c = Console()
    c.print(f"checked {n} samples in {dt:.2f}s ({n / max(dt, 1e-9):.0f}/s): {n - bad} pass, {bad} fail",
            highlight=False)
    for rid, k in by_rule.most_common():
        c.print(f"  {rid}: {k}", highlight=False)
    if bad:
        raise typer.Exit(1)


@data_app.command("export")
def export(
    data: Path = typer.Option(..., "--data", help="samples.parquet, a dataset directory or a run directory"),
    fmt: str = typer.Option(..., "--format", help="llamafactory | axolotl | sharegpt | alpaca"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    split: str = typer.Option("train", "--split", help="train | val | test"),
    include_pending: bool = typer.Option(False, "--include-pending",
                                         help="also export rule-passing samples nobody has reviewed yet"),
    review_store: str | None = typer.Option(None, "--review-store", help="review store whose current sample "
                                            "decisions apply (decisions made after the build count)"),
    required: int = typer.Option(2, "--required", min=1, help="agreeing reviewers that decide a sample"),
) -> None:
    """Write the rule-passing, approved split for another trainer, keeping sample ids for `mixtune trace`."""
    from mixtune.data.export import export_dataset  # why: fast --help (pyarrow)

    decisions = None
    if review_store is not None:
        from mixtune.review.samples import sample_decisions
        from mixtune.review.store import ReviewStore

        if "://" not in review_store and not Path(review_store).is_file():
            raise DataError("no review store here", where=review_store)
        decisions = sample_decisions(ReviewStore(review_store), required)
    res = export_dataset(data, fmt, out, split=split, include_pending=include_pending, review_decisions=decisions)
    typer.echo(f"exported {res.exported} {split} samples ({fmt}) to {res.path}")
    for reason, n in res.excluded.items():
        typer.echo(f"  left out {n}: {reason}")
    for f in res.files:
        typer.echo(f"  wrote {f}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
