"""mixtune.bench: the benchmark harness behind ``mixtune bench`` / ``make bench``.

``SUITES`` maps a suite name to ``run(ctx) -> dict``; ``run_benchmarks`` runs a selection into a
results folder and regenerates BENCHMARKS.md. Suite modules (torch, transformers) are imported only
when their suite runs, so `mixtune bench --help` and the harness stay light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from mixtune.bench.harness import Context, command_line, render_markdown, run_suite


def _lazy(module: str, fn: str = "run") -> Callable[[Context], dict]:
    """A suite entry that imports its module (torch, transformers, trl) only when it runs."""

    def call(ctx: Context) -> dict:
        return getattr(importlib.import_module(f"mixtune.bench.{module}"), fn)(ctx)

    return call


# Order of ``all``: cheap, independent suites first; the stage-1 ablation before mixing (mixing
# reuses its per-seed stage-1 models); the end-to-end demo last.
SUITES: dict[str, Callable[[Context], dict]] = {
    "validation": _lazy("data_suites", "run_validation"),
    "trace": _lazy("data_suites", "run_trace"),
    "evaluation": _lazy("serve_suites", "run_evaluation"),
    "gateway": _lazy("serve_suites", "run_gateway"),
    "reliability": _lazy("reliability"),
    "throughput": _lazy("throughput"),
    "efficiency": _lazy("efficiency"),
    "stage1_ablation": _lazy("stage1_ablation"),
    "mixing": _lazy("mixing"),
    "memory": _lazy("memory"),
    "demo": _lazy("demo"),
    "real_model": _lazy("real_model"),
}


def run_benchmarks(names: list[str], *, tier: str, out: Path, seeds: list[int], md_path: Path,
                   work: Path | None = None, repetitions: int | None = None, command: str | None = None) -> dict:
    """Run the named suites, write ``<out>/<suite>.json`` each and regenerate ``md_path``."""
    ctx = Context(tier=tier, seeds=seeds, out=out, plots=out.parent, work=work or out.parent / "work",
                  md_path=md_path, repetitions=repetitions or (3 if tier == "full" else 1))
    ctx.work.mkdir(parents=True, exist_ok=True)
    results = {n: run_suite(n, SUITES[n], ctx, command or command_line()) for n in names}
    render_markdown(out, md_path, list(SUITES))
    return results
