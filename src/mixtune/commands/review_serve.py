"""``mixtune review serve`` and ``mixtune review token``: the review web app and reviewer tokens.

These commands join the ``review`` group defined in :mod:`mixtune.commands.review` (registered
before this module, as commands load in name order), so the group stays one ``--help`` page.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mixtune.commands.review import review_app
from mixtune.errors import DataError
from mixtune.release.server import serve_forever


def serve(
    store: str = typer.Option("review.db", "--store", help="SQLite path (WAL) or SQLAlchemy URL of the review store"),
    reviewers: Path = typer.Option(..., "--reviewers", help="reviewers YAML/JSON (ids, token hashes, qualifications)"),
    ontology: Path | None = typer.Option(None, "--ontology", help="ontology.yaml: reason codes = anomaly patterns"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8700, "--port", min=1, max=65535, help="port to listen on"),
    required: int = typer.Option(2, "--required", min=1, help="agreeing reviewers that decide an item"),
) -> None:
    """Serve the expert review web app and its JSON API until Ctrl-C."""
    from mixtune.review.app import create_app, load_reasons  # why: fast --help (fastapi)
    from mixtune.review.reviewers import Reviewers  # why: fast --help (sqlalchemy)
    from mixtune.review.store import ReviewStore  # why: fast --help (sqlalchemy)

    app = create_app(ReviewStore(store), Reviewers.load(reviewers), reasons=load_reasons(ontology),
                     required=required)
    typer.echo(f"review app on http://{host}:{port}  (store {store})")
    serve_forever(app, host, port, log_level="warning")


def token(
    reviewer_id: str = typer.Argument(..., help="reviewer id"),
    qualification: list[str] = typer.Option(["*"], "--qualification", "-q", help="task families (repeatable)"),
    adjudicator: bool = typer.Option(False, "--adjudicator", help="may decide disputed items"),
    simulated: bool = typer.Option(False, "--simulated", help="label this reviewer's verdicts simulated"),
) -> None:
    """Make a new reviewer token; prints it once and the reviewers-file entry (hash only)."""
    import yaml

    from mixtune.review.reviewers import new_token, reviewers_file_entry  # why: fast --help (sqlalchemy)

    tok = new_token()
    entry = reviewers_file_entry(reviewer_id, tok, list(qualification), adjudicator,
                                 "simulated" if simulated else "human")
    typer.echo(f"token for {reviewer_id} (give it to the reviewer; it is not stored): {tok}")
    typer.echo("reviewers file entry:")
    typer.echo(yaml.safe_dump({"reviewers": [entry]}, sort_keys=False, allow_unicode=True))


def print_store_status(store: str, required: int = 2) -> None:
    """Queue sizes, per-reviewer agreement and live rejection rates of a review store."""
    from rich.console import Console
    from rich.table import Table

    from mixtune.review.queue import status_summary  # why: fast --help (sqlalchemy)
    from mixtune.review.store import ReviewStore  # why: fast --help (sqlalchemy)

    if "://" not in store and not Path(store).is_file():
        raise DataError("no review store here (start one with `mixtune review serve --store PATH`)", where=store)
    st = status_summary(ReviewStore(store), required)
    console = Console()
    t = Table("queue", "total", "pending", "in review", "disputed", "decided", title="queues")
    for q, c in st["queues"].items():
        t.add_row(q, *(str(n) for n in (c.get("total", 0), c.get("pending", 0), c.get("in_review", 0),
                                          c.get("disputed", 0) + c.get("waiting", 0),
                                          c.get("decided", 0) + c.get("adjudicated", 0) + c.get("done", 0))))
    console.print(t)
    a = Table("reviewer", "kappa", "agreement", "shared items", title="agreement")
    for r, v in st["agreement"].items():
        a.add_row(r, "-" if v["kappa"] is None else f"{v['kappa']:.2f}", f"{v['agreement']:.0%}", str(v["n"]))
    console.print(a)
    rj = Table("task", "rejection (shrunk)", "verdicts", title="model outputs")
    for task, v in st["rejection"].items():
        rj.add_row(task, f"{v['rate']:.3f}", str(v["n"]))
    console.print(rj)


def register(app: typer.Typer) -> None:
    review_app.command("serve")(serve)
    review_app.command("token")(token)
