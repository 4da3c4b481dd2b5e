"""Rule-engine throughput benchmark: ``python -m mixtune.bench.rules_throughput [--n N] [--workers W]``.

Builds a realistic workload from the finance example — every generated task and chain step
(with 5% injected defects), each checked with its task's rule ids and its real input — then
validates ``N`` items with :meth:`RuleEngine.check_batch`, optionally split over ``W`` worker
processes (data validation parallelises per shard the same way). Prints one JSON line with
samples/s and µs/sample. Items are cycled from a pool of distinct samples; the engine keeps no
per-text cache, so repeats cost the same as new texts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

from mixtune.bench.fixtures import finance_dir
from mixtune.data.generate import generate_samples
from mixtune.data.ontology import load_ontology
from mixtune.rules import RuleEngine, RuleSet

Item = tuple[str, str, str, "list[str] | None"]
_ENGINE = None


def build_items(pool: int, seed: int = 0) -> list[Item]:
    """Distinct (sample_id, input, output, rule_ids) items from the finance generator."""
    onto = load_ontology(finance_dir() / "ontology.yaml")
    per_task = max(1, pool // max(1, len(onto.tasks)))
    items: list[Item] = []
    for s in generate_samples(onto, n_per_task=per_task, seed=seed, defect_rate=0.05):
        steps = s.chain_steps or [s.task_id]
        for k, t in enumerate(steps):
            items.append((s.id, s.messages[2 * k].content, s.messages[2 * k + 1].content,
                          list(onto.tasks[t].rule_ids)))
    return items


def _init(rules_path: str) -> None:
    global _ENGINE
    _ENGINE = RuleEngine(RuleSet.load(rules_path))


def _run(chunk: list[Item]) -> tuple[int, float]:
    t0 = time.perf_counter()
    rows = _ENGINE.check_batch(chunk)
    return sum(len(r) for r in rows), time.perf_counter() - t0


def run(n: int, workers: int, pool: int = 3000, rules_path: str | None = None) -> dict:
    """Validate ``n`` items on ``workers`` processes; returns the measurement as a dict."""
    rules_path = rules_path or str(finance_dir() / "rules.yaml")
    items = build_items(pool)
    work = [items[i % len(items)] for i in range(n)]
    if workers <= 1:
        _init(rules_path)
        t0 = time.perf_counter()
        failures, _ = _run(work)
        wall = time.perf_counter() - t0
    else:
        size = -(-n // (workers * 4))  # a few chunks per worker to balance the tail
        chunks = [work[i:i + size] for i in range(0, n, size)]
        with ProcessPoolExecutor(workers, initializer=_init, initargs=(rules_path,)) as ex:
            list(ex.map(_run, [c[:10] for c in chunks[:workers]]))  # warm up every worker
            t0 = time.perf_counter()
            results = list(ex.map(_run, chunks))
            wall = time.perf_counter() - t0
        failures = sum(r[0] for r in results)
    return {"bench": "rules.check_batch", "samples": n, "workers": workers, "wall_s": round(wall, 3),
            "samples_per_s": round(n / wall), "us_per_sample": round(wall / n * 1e6, 2),
            "failures": failures, "distinct_items": len(items), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "command": f"python -m mixtune.bench.rules_throughput --n {n} --workers {workers}"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="items to validate")
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--rules", default=None, help="rules YAML (default: the finance example)")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.n, args.workers, rules_path=args.rules), ensure_ascii=False))


if __name__ == "__main__":
    main()
