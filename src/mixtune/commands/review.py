"""``mixtune review export|import|status`` — the review store's files and numbers.

Every review decision — training samples, model outputs, shadow A/B pairs — lives in one review
store (``--store``: a SQLite path, by default ``review.db`` here, or any SQLAlchemy URL; a run
keeps its store at ``runs/review.db``). ``export`` writes open items for spreadsheets and labelling
tools, ``import`` appends the verdicts that come back, ``status`` shows queues and agreement.
``serve`` and ``token`` (the web app) join this group from :mod:`mixtune.commands.review_serve`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mixtune.errors import ConfigError

review_app = typer.Typer(help="Expert review over one store (training samples, model outputs, shadow A/B pairs): "
                         "the web app (serve), export to CSV / Label Studio / Argilla, import verdicts, status.",
                         no_args_is_help=True)
STORE_HELP = "review store: SQLite path (WAL) or SQLAlchemy URL; a run's is runs/review.db"
KIND_HELP = "item kinds: sample (training data), output (model outputs), pair (shadow A/B); repeatable"


def _open(store: str, *, create: bool = False):
    """The review store at ``store``; a missing SQLite file is an error unless this command creates one."""
    from mixtune.errors import DataError
    from mixtune.review.store import ReviewStore  # why: fast --help (sqlalchemy)

    if not create and "://" not in store and not Path(store).is_file():
        raise DataError("no review store here (builds, `mixtune shadow sample` and `mixtune review serve` "
                        "create one; a run's is runs/review.db)", where=store)
    return ReviewStore(store)


def _enqueue_dataset(store, dataset: Path) -> int:
    """Put a dataset directory's samples awaiting review in the data queue (builds do this themselves)."""
    from mixtune.data.io import read_samples  # why: fast --help (pyarrow)
    from mixtune.errors import DataError
    from mixtune.review.samples import enqueue_samples

    queue_file, samples_file = dataset / "review_queue.parquet", dataset / "samples.parquet"
    if queue_file.is_file():
        samples = read_samples(queue_file)
    elif samples_file.is_file():
        samples = [s for s in read_samples(samples_file) if s.review_status in ("pending", "in_review")]
    else:
        raise DataError("no review_queue.parquet or samples.parquet here; run `mixtune data build` first",
                        where=str(dataset))
    return enqueue_samples(store, samples)


@review_app.command("export")
def export(
    fmt: str = typer.Option("csv", "--format", help="csv | labelstudio | argilla"),
    out: Path = typer.Option(..., "--out", help="file to write (Label Studio: its labelling config goes beside it)"),
    store: str = typer.Option("review.db", "--store", help=STORE_HELP),
    kind: list[str] = typer.Option(["sample", "output", "pair"], "--kind", help=KIND_HELP),
    task: list[str] = typer.Option([], "--task", help="only these task ids (repeatable)"),
    limit: int = typer.Option(0, "--limit", min=0, help="at most this many items (0 = all)"),
    all_items: bool = typer.Option(False, "--all", help="also items already decided (with their decision)"),
    dataset: Path | None = typer.Option(None, "--dataset", help="first put this dataset directory's samples "
                                        "awaiting review in the data queue"),
) -> None:
    """Export items awaiting review (pending, in review, disputed) from the review store."""
    from mixtune.review.exchange import export_store  # why: fast --help (sqlalchemy)
    from mixtune.review.store import KINDS

    bad = [k for k in kind if k not in KINDS]
    if bad:
        raise ConfigError(f"unknown item kind(s) {bad}; allowed: {list(KINDS)}", where="--kind")
    rs = _open(store, create=dataset is not None)
    if dataset is not None:
        typer.echo(f"queued {_enqueue_dataset(rs, dataset)} new sample(s) from {dataset}")
    n = export_store(rs, fmt, out, kinds=tuple(kind), open_only=not all_items, tasks=set(task), limit=limit)
    typer.echo(f"exported {n} item(s) to {out} ({fmt})")


@review_app.command("import")
def import_(
    path: Path = typer.Argument(..., help="reviewed CSV / Label Studio export / Argilla records, or an old "
                                "data/review_log.jsonl (moved into the store once)"),
    store: str = typer.Option("review.db", "--store", help=STORE_HELP),
    fmt: str | None = typer.Option(None, "--format", help="csv | labelstudio | argilla (default: detect)"),
    reviewers: Path | None = typer.Option(None, "--reviewers", help="accept verdicts only from reviewers in this "
                                          "file who are qualified for the item's family"),
    ontology: Path | None = typer.Option(None, "--ontology", help="reason codes = the tasks' anomaly patterns"),
    required: int = typer.Option(2, "--required", min=1, help="agreeing reviewers that decide an item"),
) -> None:
    """Append verdicts to the store; refused records are listed with file:line (exit 1 when any was refused
    or the file was torn — the accepted ones are kept either way)."""
    from mixtune.review.exchange import import_verdicts  # why: fast --help (sqlalchemy)

    if not path.is_file():
        raise ConfigError("review file not found", where=str(path))
    legacy = path.name.startswith("review_log.jsonl")
    rs = _open(store, create=legacy)  # verdicts need their items: only the old log brings its own
    if legacy:
        from mixtune.review.samples import import_legacy_log, migrate_message

        res = import_legacy_log(rs, path)
        typer.echo(migrate_message(res, path, store))
        return
    from mixtune.review.app import load_reasons
    from mixtune.review.reviewers import Reviewers

    res = import_verdicts(rs, path, fmt, reviewers=Reviewers.load(reviewers) if reviewers else None,
                          reasons=load_reasons(ontology) or None, required=required)
    typer.echo(f"applied {len(res.applied)}  repeated {len(res.duplicate)}  skipped (no verdict) "
               f"{len(res.skipped)}  refused {len(res.refused)}")
    for where, why in res.refused[:20]:
        typer.echo(f"  refused {where}: {why}")
    if len(res.refused) > 20:
        typer.echo(f"  ... and {len(res.refused) - 20} more")
    if res.torn:
        typer.echo(f"  torn: {res.torn} (the complete records before it were imported)")
    if res.refused or res.torn:
        raise typer.Exit(1)


@review_app.command("status")
def status_(store: str = typer.Option("review.db", "--store", help=STORE_HELP),
            required: int = typer.Option(2, "--required", min=1, help="agreeing reviewers that decide an item")
            ) -> None:
    """Queue sizes (data, output, pair, adjudication), agreement per reviewer, live rejection per task."""
    from mixtune.commands.review_serve import print_store_status  # why: import cycle with review_serve

    print_store_status(store, required)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
