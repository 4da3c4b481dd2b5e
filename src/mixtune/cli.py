"""The ``mixtune`` command line.

Sub-commands live in :mod:`mixtune.commands`, one module each exposing ``register(app)``; they
are discovered here so that adding a command never edits this file. Heavy imports (torch,
transformers) happen inside the command bodies so ``mixtune --help`` stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer
from rich.console import Console

import mixtune.commands
from mixtune.errors import MixtuneError

app = typer.Typer(
    name="mixtune",
    help="Two-stage domain instruction tuning with closed-loop task mixing, evaluation gates and "
    "shadow traffic. Start with: mixtune run examples/finance_risk/pipeline.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(mixtune.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mixtune.commands.{info.name}")
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: turns user errors into one clear message and a non-zero exit."""
    try:
        app(args=argv, standalone_mode=True)
    except MixtuneError as e:
        err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; finished steps are kept and a re-run resumes")
        sys.exit(130)
