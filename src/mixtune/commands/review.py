"""``mixtune review export|import|status`` — the expert review queue of a dataset directory."""

from __future__ import annotations

from pathlib import Path

import typer

from mixtune.errors import ConfigError, DataError

review_app = typer.Typer(help="Expert review: the review web app (serve), export to CSV / Label Studio / Argilla, "
                         "import decisions, status.",
                         no_args_is_help=True)


def _samples(dataset: Path):
    from mixtune.data.io import read_samples  # why: fast --help (pyarrow)

    queue_file, samples_file = dataset / "review_queue.parquet", dataset / "samples.parquet"
    src = queue_file if queue_file.is_file() else samples_file
    if not src.is_file():
        raise DataError("no review_queue.parquet or samples.parquet here; run `mixtune data build` first",
                        where=str(dataset))
    return read_samples(src)


def _write_stats(dataset: Path, queue) -> dict:
    import json

    from mixtune.data.io import write_json  # why: fast --help (pyarrow)

    path = dataset / "review_stats.json"
    stats = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    stats.update(queue.rejection_rates())  # expert decisions override the validation proxy
    write_json(stats, path)
    return stats


@review_app.command("export")
def export(
    dataset: Path = typer.Option(..., "--dataset", help="dataset directory (from `mixtune data build`)"),
    fmt: str = typer.Option("csv", "--format", help="csv | labelstudio | argilla"),
    out: Path = typer.Option(..., "--out", help="file to write"),
    status: list[str] = typer.Option(["pending"], "--status", help="export samples in these states"),
    task: list[str] = typer.Option([], "--task", help="only these task ids (repeatable)"),
    limit: int = typer.Option(0, "--limit", min=0, help="at most this many samples (0 = all)"),
) -> None:
    """Export samples awaiting review; exported pending samples move to in_review."""
    from mixtune.data.review import ReviewQueue  # why: fast --help (pyarrow)
    from mixtune.data.review_formats import export_review  # why: fast --help (pyarrow)

    queue = ReviewQueue(dataset / "review_log.jsonl")
    chosen = [s for s in _samples(dataset) if (not task or s.task_id in task)
              and (queue.entries[s.id].status if s.id in queue.entries else "pending") in status]
    if limit:
        chosen = chosen[:limit]
    n = export_review(chosen, queue, fmt, out)
    typer.echo(f"exported {n} samples to {out} ({fmt})")


@review_app.command("import")
def import_(
    path: Path = typer.Argument(..., help="reviewed CSV / Label Studio export / Argilla records"),
    dataset: Path = typer.Option(..., "--dataset", help="dataset directory"),
    fmt: str | None = typer.Option(None, "--format", help="csv | labelstudio | argilla (default: detect)"),
    qualification: list[str] = typer.Option([], "--require-qualification",
                                            help="accept decisions only from these qualifications"),
) -> None:
    """Apply decisions; invalid transitions are refused and listed (exit 1 when any was refused)."""
    from mixtune.data.review import ReviewQueue  # why: fast --help (pyarrow)
    from mixtune.data.review_formats import import_review  # why: fast --help (pyarrow)

    queue = ReviewQueue(dataset / "review_log.jsonl", required_qualifications=qualification)
    res = import_review(path, queue, fmt)
    _write_stats(dataset, queue)
    typer.echo(f"applied {len(res.applied)}  skipped (no decision) {len(res.skipped)}  refused {len(res.refused)}")
    for sid, why in res.refused[:20]:
        typer.echo(f"  refused {sid}: {why}")
    if res.refused:
        raise typer.Exit(1)


@review_app.command("status")
def status_(dataset: Path | None = typer.Option(None, "--dataset", help="dataset directory"),
            store: str | None = typer.Option(None, "--store", help="review store (SQLite path or SQLAlchemy URL): "
                                             "queue sizes, agreement per reviewer, live rejection rates")) -> None:
    """Counts per task and state, and per-task rejection rates (also written to review_stats.json)."""
    if store is not None:
        from mixtune.commands.review_serve import print_store_status  # why: import cycle with review_serve

        print_store_status(store)
        if dataset is None:
            return
    if dataset is None:
        raise ConfigError("give --dataset DIR or --store URL", where="mixtune review status")
    from rich.console import Console
    from rich.table import Table

    from mixtune.data.review import STATES, ReviewQueue  # why: fast --help (pyarrow)

    queue = ReviewQueue(dataset / "review_log.jsonl")
    counts = queue.status_counts()
    rates = queue.rejection_rates()
    _write_stats(dataset, queue)
    table = Table("task", *STATES, "rejection rate")
    for tid, c in counts.items():
        rate = rates.get(tid)
        table.add_row(tid, *(str(c.get(s, 0)) for s in STATES), "-" if rate is None else f"{rate:.2%}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
