"""``mixtune bench SUITE|all --tier quick|full``: run benchmark suites, write JSON + BENCHMARKS.md."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mixtune.bench import SUITES, run_benchmarks
from mixtune.bench.harness import EXAMPLES_ENV
from mixtune.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        suite: str = typer.Argument(..., help="suite name or 'all' (see --list)"),
        tier: str = typer.Option("quick", "--tier", help="quick (smoke, ≈2 min for all) or full (the committed numbers)"),
        out: Path = typer.Option(Path("benchmarks/results"), "--out", help="folder for <suite>.json; plots go next to it"),
        seeds: int = typer.Option(None, "--seeds", min=1, help="number of seeds (default: 3 full, 1 quick)"),
        repetitions: int = typer.Option(None, "--repetitions", min=1, help="repetitions of timed runs (default: 3 full, 1 quick)"),
        md: Path = typer.Option(None, "--md", help="BENCHMARKS.md to regenerate (default: two folders above --out)"),
        work: Path = typer.Option(None, "--work", help="scratch folder for models and runs (default: <out>/../work)"),
        examples: Path = typer.Option(
            None, "--examples", envvar=EXAMPLES_ENV,
            help="the repository's examples/ folder (suites train on examples/finance_risk; default: the "
                 "source checkout or ./examples — a pip install ships none)"),
    ) -> None:
        """Run benchmark suites; each writes <out>/<suite>.json and BENCHMARKS.md is regenerated from all of them.

        Suites: validation, trace, evaluation, gateway, reliability, throughput, efficiency, stage1_ablation, mixing, memory, demo, real_model.
        A suite whose component fails is recorded as "not measured: <reason>" and the command exits 1.
        """
        if examples is not None:
            # suites and their child processes (the demo's `mixtune run`) find it through the environment
            os.environ[EXAMPLES_ENV] = str(examples.resolve())
        if tier not in ("quick", "full"):
            raise ConfigError(f"--tier must be quick or full (got {tier!r})")
        names = list(SUITES) if suite == "all" else [s.strip() for s in suite.split(",") if s.strip()]
        unknown = [n for n in names if n not in SUITES]
        if unknown:
            raise ConfigError(f"unknown suite(s) {', '.join(unknown)}; suites are all, {', '.join(SUITES)}")
        n_seeds = seeds or (3 if tier == "full" else 1)
        md_path = md or out.resolve().parent.parent / "BENCHMARKS.md"
        results = run_benchmarks(names, tier=tier, out=out, seeds=list(range(n_seeds)), md_path=md_path,
                                 work=work, repetitions=repetitions)
        failed = [n for n, r in results.items() if r.get("status") != "ok"]
        typer.echo(f"wrote {len(results)} result file(s) to {out} and {md_path}")
        if failed:
            typer.echo(f"not measured: {', '.join(failed)} (see the JSON 'error' field)", err=True)
            raise typer.Exit(1)
