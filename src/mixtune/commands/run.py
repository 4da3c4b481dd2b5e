"""``mixtune run PIPELINE.yaml [a.b.c=value ...]``: the whole pipeline, resumable."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        config: Path = typer.Argument(..., help="pipeline YAML, e.g. examples/finance_risk/pipeline.yaml"),
        overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. stage1.steps=50 name=try2"),
        fresh: bool = typer.Option(False, "--fresh", help="discard an existing run directory of this name"),
        until: str = typer.Option(None, "--until", help="stop after this step: data, base_model, stage1, stage2, eval, gates, report"),
    ) -> None:
        """Run data build → stage 1 → stage 2 → evaluation → gates → registry → report.

        Writes runs/<name>/ (see README). Finished steps are skipped on a re-run; a run directory
        holding a different config is refused with the changed keys named.
        """
        from mixtune.config import load_config  # why: fast --help (torch)
        from mixtune.pipeline import run_pipeline  # why: fast --help (torch, transformers)

        cfg = load_config(config, overrides or [])
        run_pipeline(cfg, fresh=fresh, until=until)

    @app.command("config")
    def show_config(
        config: Path = typer.Argument(..., help="pipeline YAML"),
        overrides: list[str] = typer.Argument(None, help="dotted overrides"),
    ) -> None:
        """Validate a pipeline YAML and print it fully resolved (defaults filled in)."""
        from mixtune.config import dump_config, load_config  # why: fast --help (torch)

        typer.echo(dump_config(load_config(config, overrides or [])))
