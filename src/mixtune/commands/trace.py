"""``mixtune trace`` — from a task or a failing eval item to the data, people and rules behind it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from mixtune.errors import DataError


def _items(eval_path: Path, threshold: float) -> list[dict]:
    if not eval_path.is_file():
        raise DataError("eval results file not found", where=str(eval_path))
    items = []
    for i, line in enumerate(eval_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg}", where=f"{eval_path}:{i}") from None
        if "sample_id" in rec and float(rec.get("primary", 0.0)) < threshold:
            items.append(rec)
    return items


def _show(result: dict) -> None:
    c = Console()
    for t in result.get("tasks", [result] if "by_level" in result else []):
        lv = f" level {t['level']}" if t.get("level") is not None else ""
        c.print(f"[bold]{t['task_id']}[/]{lv}: {t['n_samples']} samples", highlight=False)
        c.print(f"  levels {t['by_level']}  splits {t['by_split']}  review {t['review_status']}", highlight=False)
        c.print(f"  rule versions {t['rule_versions']}", highlight=False)
        c.print(f"  top annotators {t['annotators']}", highlight=False)
        c.print(f"  samples {t['sample_ids'][:5]}{' …' if len(t['sample_ids']) > 5 else ''}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("trace")
    def trace(
        lineage: Path = typer.Option(..., "--lineage", help="lineage parquet, dataset directory or lineage store"),
        task: str | None = typer.Option(None, "--task", help="trace a task"),
        level: int | None = typer.Option(None, "--level", min=1, max=5, help="restrict to a difficulty level"),
        sample_id: str | None = typer.Option(None, "--sample-id", help="trace one eval item by its sample id"),
        eval_results: Path | None = typer.Option(None, "--eval", help="per-sample eval jsonl: trace its failing items"),
        threshold: float = typer.Option(1.0, "--threshold", help="an eval item fails when primary < threshold"),
        limit: int = typer.Option(20, "--limit", min=1),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a summary"),
    ) -> None:
        """Which samples, annotators, rule versions and difficulty levels stand behind a task or failure."""
        # why: lineage pulls duckdb and pyarrow; imported on use so `mixtune --help` stays fast
        from mixtune.data.lineage import trace_failures, trace_item, trace_task  # why: fast --help (pyarrow)

        if sum(x is not None for x in (sample_id, eval_results)) + (task is not None and sample_id is None) == 0:
            raise DataError("give --task, --sample-id or --eval")
        if eval_results is not None:
            items = _items(eval_results, threshold)
            result = trace_failures(lineage, items, limit=limit)
            result["n_failing"] = len(items)
        elif sample_id is not None:
            result = trace_item(lineage, sample_id, task, limit=limit)
            result["tasks"] = [result.pop("task")]
        else:
            result = trace_task(lineage, task, level=level, limit=limit)
        if as_json:
            typer.echo(json.dumps(result, ensure_ascii=False, indent=1, default=str))
            return
        if "n_failing" in result:
            typer.echo(f"{result['n_failing']} failing item(s)")
        if "rows" in result and result["rows"]:
            r = result["rows"][0]
            typer.echo(f"item {sample_id}: task {r['task_id']} level {r['level']} annotator {r['annotator_id']} "
                       f"reviewer {r['reviewer_id']} rules {r['ruleset_version']} twins {len(result['twins'])}")
        _show(result)
