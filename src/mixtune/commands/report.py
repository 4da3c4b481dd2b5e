"""``mixtune report RUN_DIR``: (re)build report.html from a run directory's files."""

from __future__ import annotations

from pathlib import Path

import typer

from mixtune.errors import MixtuneError
from mixtune.report import write_report


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(run_dir: Path = typer.Argument(..., help="a run directory, e.g. runs/finance_demo")) -> None:
        """Write RUN_DIR/report.html: decision and deltas, rollout steps, gates, conversations, answers, plots."""
        if not (run_dir / "config.resolved.yaml").is_file():
            raise MixtuneError("not a mixtune run directory (no config.resolved.yaml)", where=str(run_dir))
        typer.echo(str(write_report(run_dir)))
