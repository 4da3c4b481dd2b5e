"""``mixtune ifeval``: score responses with the IFEval-compatible instruction checkers."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mixtune.errors import ConfigError
from mixtune.eval.ifeval import DEFAULT_SEED, score_files, write_verdicts
from mixtune.eval.ifeval.scoring import LANGUAGES


def ifeval(
    input_data: Path = typer.Option(
        ..., "--input-data", help="IFEval prompts JSONL (key, prompt, instruction_id_list, kwargs)."
    ),
    responses: Path = typer.Option(
        ..., "--responses", help="Responses JSONL with 'prompt' and 'response', matched by prompt."
    ),
    output: Path = typer.Option(..., "--output", help="Where to write per-prompt verdicts JSONL."),
    language: str = typer.Option(
        "auto", "--language", help="Counting flavour: auto (Chinese for Chinese prompts), en, zh."
    ),
    seed: int = typer.Option(
        DEFAULT_SEED,
        "--seed",
        help="Seed for IFEval's random-letter fallback, for reproducible runs. The original draws "
        "it unseeded, so no seed reproduces a reference run on those prompts.",
    ),
) -> None:
    """Score RESPONSES against IFEval-format prompts, strict and loose.

    Writes one line per prompt key to --output and prints the four aggregates
    (prompt/instruction level, strict/loose) as one JSON object on the last line.
    """
    if language not in LANGUAGES:
        raise ConfigError(f"must be one of {list(LANGUAGES)}, got {language!r}", where="--language")
    result = score_files(input_data, responses, language, seed)
    write_verdicts(result, output)
    n_inst = sum(len(v.strict_follow_list) for v in result.verdicts)
    n_zh = sum(v.language == "zh" for v in result.verdicts)
    typer.echo(
        f"scored {len(result.verdicts)} prompts ({n_inst} instructions, {n_zh} with Chinese "
        f"counting); verdicts written to {output}"
    )
    typer.echo(json.dumps(result.aggregates))


def register(app: typer.Typer) -> None:
    """Add the ``ifeval`` command to the mixtune CLI."""
    app.command("ifeval")(ifeval)
