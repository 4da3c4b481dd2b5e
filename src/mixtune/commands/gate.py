"""``mixtune gate``: evaluate a release gate on per-sample evaluation results.

Exit codes are part of the interface so scripts and CI can branch on them: 0 pass, 1 fail,
3 inconclusive (2 stays the CLI's code for user errors such as a bad gates file).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mixtune.errors import ConfigError

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}" if abs(x) < 10 else f"{x:.4g}"


def print_decision(decision) -> None:
    """Render a GateDecision as an evidence table."""
    from rich.console import Console
    from rich.table import Table

    colours = {"pass": "green", "fail": "red", "inconclusive": "yellow"}
    table = Table(title=f"gate {decision.gate!r}: [{colours[decision.status]}]{decision.status}[/]")
    for col in ("metric", "scope", "check", "thr", "value", "interval", "n", "status"):
        table.add_column(col, justify="right" if col in ("thr", "value", "n") else "left", no_wrap=True)
    for c in decision.checks:
        interval = "—" if c.lo is None else f"[{_fmt(c.lo)}, {_fmt(c.hi)}]"
        table.add_row(c.metric, c.scope, c.kind, f"{c.threshold:g}", _fmt(c.value), interval, str(c.n),
                      f"[{colours[c.status]}]{c.status}[/]")
    console = Console()
    console.print(table)
    # Reasons go below the table: long text in a column squeezes the numbers on narrow terminals.
    for c in decision.checks:
        if c.status != "pass":
            console.print(f"  {c.metric} @ {c.scope} ({c.kind}): [{colours[c.status]}]{c.status}[/] — {c.reason}")


def gate(
    name: str = typer.Option(..., "--name", help="gate to evaluate: validate or canary"),
    candidate: Path = typer.Option(..., "--candidate", help="candidate per-sample eval results (jsonl)"),
    spec: Path = typer.Option(..., "--spec", help="gates YAML (or a pipeline YAML with a gates: section)"),
    champion: Path | None = typer.Option(None, "--champion", help="champion per-sample eval results (jsonl)"),
    out: Path = typer.Option(Path("gates.jsonl"), "--out", help="append the decision to this jsonl file"),
    candidate_model: str | None = typer.Option(None, help="model name to select when the file holds several"),
    champion_model: str | None = typer.Option(None, help="model name to select when the file holds several"),
    n_boot: int | None = typer.Option(None, "--n-boot", help="bootstrap replicates (default: from the spec)"),
    confidence: float | None = typer.Option(None, help="interval confidence (default: from the spec)"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    pass_without_champion: bool = typer.Option(
        False, "--pass-without-champion", help="let delta checks pass when there is no champion (first release)"
    ),
    model_id: int | None = typer.Option(
        None, "--model-id", help="registry id of the candidate: the decision is recorded in the registry (--db), "
        "bound to the model's weights hash, and only such decisions let `mixtune registry promote` move it"),
    db: str = typer.Option(os.environ.get("MIXTUNE_REGISTRY_URL", "sqlite:///registry.db"), "--db",
                           help="registry URL or SQLite path used with --model-id (env MIXTUNE_REGISTRY_URL)"),
) -> None:
    """Evaluate gate NAME: exit 0 pass, 1 fail, 3 inconclusive; the decision is appended to --out.

    With --model-id the registry records the decision for that model and the line appended to
    --out carries the registry's binding (model, path, weights hash) and signature."""
    from mixtune.release.gates import (  # why: fast --help (numpy, yaml)
        GATE_NAMES,
        append_decision,
        evaluate_gate,
        load_eval_records,
        load_gate_file,
    )

    if name not in GATE_NAMES:
        raise ConfigError(f"unknown gate {name!r} (gates: {', '.join(GATE_NAMES)})", "--name")
    gate_file = load_gate_file(spec)
    specs = gate_file.gates[name]
    if not specs:
        raise ConfigError(f"no checks configured for gate {name!r}", str(spec))
    cand = load_eval_records(candidate, candidate_model)
    champ = load_eval_records(champion, champion_model) if champion is not None else None
    meta = {"candidate": str(candidate), "champion": str(champion) if champion else None, "spec": str(spec)}
    if model_id is not None:
        meta["model_id"] = model_id
    decision = evaluate_gate(
        name, specs, cand, champ,
        n_boot=n_boot or gate_file.bootstrap_samples,
        confidence=confidence or gate_file.confidence,
        seed=seed,
        pass_without_champion=pass_without_champion,
        meta=meta,
    )
    print_decision(decision)
    if model_id is not None:  # the registry stores it first: a file line alone is never evidence
        from mixtune.release.registry import Registry  # why: fast --help (sqlalchemy)

        reg = Registry(db)
        try:
            recorded = reg.record_gate(model_id, decision.to_dict(), who="mixtune gate")
        finally:
            reg.close()
        append_decision(out, recorded)
    else:
        append_decision(out, decision)
    typer.echo(f"decision appended to {out}")
    raise typer.Exit(EXIT_CODES[decision.status])


def register(app: typer.Typer) -> None:
    """Add ``mixtune gate`` to the CLI."""
    app.command("gate")(gate)
