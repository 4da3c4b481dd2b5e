"""Data suites: streaming validation throughput + peak memory, and lineage trace latency.

Validation runs in a child process (``python -m mixtune.bench.data_suites N``) so its peak RSS is
its own: the child streams ``N`` samples (cycled from a pool of distinct generated samples, 5%
with injected defects; the engine keeps no per-text cache, so a repeat costs what a new text
costs) through ``validate_stream`` and reports wall time and VmHWM from /proc/self/status; the
parent cross-checks with ``getrusage(RUSAGE_CHILDREN)``. Trace latency is ``trace_task`` over a
synthetic lineage parquet of realistic cardinalities, median of repeated queries on different tasks.
"""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from mixtune.bench.fixtures import finance_dir
from mixtune.bench.harness import Context, row, summarize
from mixtune.data.generate import generate_samples
from mixtune.data.lineage import synthetic_lineage, trace_task
from mixtune.data.ontology import load_ontology
from mixtune.data.validate import validate_stream
from mixtune.rules import RuleEngine, RuleSet


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def validate_child(n: int, pool: int = 4000, seed: int = 0) -> dict:
    """Stream ``n`` samples through ``validate_stream``; runs inside the child process."""
    finance = finance_dir()
    onto = load_ontology(finance / "ontology.yaml")
    engine = RuleEngine(RuleSet.load(finance / "rules.yaml"))
    rules_for = {t.id: list(t.rule_ids) for t in onto.tasks.values()}
    distinct = generate_samples(onto, n_per_task=max(1, pool // len(onto.tasks)), seed=seed, defect_rate=0.05)
    rss_before = _peak_rss_mib()
    t0 = time.perf_counter()
    done = failing = 0
    for _sample, failures in validate_stream(itertools.islice(itertools.cycle(distinct), n), engine, rules_for):
        done += 1
        failing += bool(failures)
    wall = time.perf_counter() - t0
    return {"n_samples": done, "wall_s": wall, "samples_per_s": done / wall, "failing_samples": failing,
            "distinct_samples": len(distinct), "peak_rss_mib": _peak_rss_mib(), "rss_before_stream_mib": rss_before}


def run_validation(ctx: Context) -> dict:
    n = 1_000_000 if ctx.full else 20_000
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    proc = subprocess.run([sys.executable, "-m", "mixtune.bench.data_suites", str(n)], capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"validation child failed: {proc.stderr.strip().splitlines()[-1:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # RUSAGE_CHILDREN is a max over all children so far; it only confirms the child's own number
    # when no earlier child was bigger.
    res["rusage_children_peak_mib"] = after if after > before else None
    rows = [row(f"validate_stream throughput ({n:,} samples)", res["samples_per_s"], unit="samples/s",
                target="≥ 20,000", note=f"{res['failing_samples']:,} samples with failures (5% injected defects)"),
            row("validation peak RSS (child process, VmHWM)", res["peak_rss_mib"], unit="MiB", target="≤ 2,048",
                note=f"RSS before streaming {res['rss_before_stream_mib']:.0f} MiB")]
    return {**res, "table": rows, "repetitions": 1,
            "setup": f"{n:,} samples cycled from {res['distinct_samples']} distinct generated samples, "
                     "examples/finance_risk rules, batch 2048, one process"}


def run_trace(ctx: Context) -> dict:
    n = 10_000_000 if ctx.full else 200_000
    path = ctx.work / f"lineage_{n}.parquet"
    t0 = time.perf_counter()
    if not path.is_file():
        synthetic_lineage(n, path, seed=ctx.seeds[0])
    build_s = time.perf_counter() - t0
    reps = max(3, ctx.repetitions)
    lat = []
    for i in range(reps):
        t = time.perf_counter()
        out = trace_task(path, f"task_{i % 16:02d}", level=(i % 5) + 1)
        lat.append(time.perf_counter() - t)
        if out["n_samples"] <= 0:
            raise RuntimeError("trace returned no samples for a populated task")
    s = summarize(lat)
    return {"rows": n, "latency_s": s["median"], "latency": s, "repetitions": reps,
            "table": [row(f"trace_task latency at {n:,} lineage rows", s, unit="s", target="≤ 1 s",
                               note=f"DuckDB over one zstd parquet ({path.stat().st_size / 2**20:.0f} MiB); "
                                    f"synthetic table built in {build_s:.0f} s")],
            "setup": "synthetic_lineage (16 tasks, 200 annotators, 5 rule versions), one query per task+level"}


if __name__ == "__main__":
    print(json.dumps(validate_child(int(sys.argv[1]))))
