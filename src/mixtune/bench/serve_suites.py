"""Evaluation throughput of the rule-based layers and the gateway's latency overhead.

Evaluation: ``score_predictions`` (base + business layers: format compliance, terminology, KPIs)
over held-out samples with their reference answers as predictions, so the number is the
scorer's own cost without generation; the raw ``RuleEngine.check_batch`` over the same outputs
is the reference. Gateway: ``measure_gateway_overhead`` — client, fake upstreams and gateway in
separate processes on loopback; the direct call to the champion is the same-run baseline.
"""

from __future__ import annotations

import itertools
import time

from mixtune.bench import fixtures
from mixtune.bench.gateway_overhead import measure_gateway_overhead
from mixtune.bench.harness import Context, row, summarize
from mixtune.data.ontology import load_ontology
from mixtune.eval.runner import score_predictions
from mixtune.rules import RuleEngine, RuleSet


def run_evaluation(ctx: Context) -> dict:
    cfg = fixtures.demo_config()
    onto = load_ontology(cfg.resolve(cfg.data.ontology))
    engine = RuleEngine(RuleSet.load(cfg.resolve(cfg.data.rules)))
    samples, _ = fixtures.load_dataset(ctx.work, n_per_task=40 if ctx.full else 12, seed=ctx.seeds[0], cfg=cfg)
    pool = [s for s in samples if not s.parent_id]
    n = 20_000 if ctx.full else 1_000
    batch = list(itertools.islice(itertools.cycle(pool), n))
    preds = [s.output or s.messages[-1].content for s in batch]
    rules_for = {t.id: list(t.rule_ids) for t in onto.tasks.values()}
    items = [(s.id, s.input, p, rules_for.get(s.task_id)) for s, p in zip(batch, preds)]
    full, raw = [], []
    for _ in range(ctx.repetitions):
        t0 = time.perf_counter()
        recs = score_predictions(batch, preds, onto, engine, model_name="reference")
        full.append(len(recs) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        engine.check_batch(items)
        raw.append(len(items) / (time.perf_counter() - t0))
    f, r = summarize(full), summarize(raw)
    return {"samples_per_s": f["median"], "rule_engine_samples_per_s": r["median"], "n_samples": n,
            "table": [row(f"evaluation, rule-based layers ({n:,} predictions)", f, unit="samples/s",
                          baseline=r, baseline_name="bare check_batch", ratio=f["median"] / r["median"],
                          note="score_predictions: format, terminology, business KPIs per sample")],
            "setup": f"reference answers of {len(pool)} distinct held-out/train samples cycled to {n:,}; "
                     "no generation (the model's cost is not part of this row)"}


def run_gateway(ctx: Context) -> dict:
    """Gateway overhead at concurrency 1 and 8 (batch durability), and what sync durability costs at 8."""
    reps = ctx.repetitions if ctx.full else 1
    plan = [("c1", 1, 400 if ctx.full else 60, "batch"), ("c8", 8, 1000 if ctx.full else 100, "batch")]
    if ctx.full:
        plan.append(("c8_sync", 8, 1000, "sync"))
    runs: dict[str, list[dict]] = {k: [] for k, *_ in plan}
    for _ in range(reps):
        for key, conc, n, durability in plan:
            runs[key].append(measure_gateway_overhead(n_requests=n, concurrency=conc, durability=durability))

    def s(key: str, field: str) -> dict:
        return summarize([m[field] for m in runs[key]])

    lost = int(sum(m["lost_records"] for ms in runs.values() for m in ms))
    total = sum(m["n_requests"] for ms in runs.values() for m in ms)
    out = {"p50_overhead_ms_c1": s("c1", "p50_overhead_ms")["median"],
           "p50_overhead_ms_c8": s("c8", "p50_overhead_ms")["median"],
           "p99_overhead_ms_c8": s("c8", "p99_overhead_ms")["median"],
           "p50_overhead_ms": s("c8", "p50_overhead_ms")["median"],  # the pre-issue-14 keys (c8)
           "p99_overhead_ms": s("c8", "p99_overhead_ms")["median"],
           "gateway_cpu_ms_per_request": s("c8", "gateway_cpu_ms_per_request")["median"],
           "lost_records": lost, "repetitions": reps,
           "concurrency": 8, "n_requests": {k: n for k, _, n, _ in plan}}
    table = [row("gateway p50 overhead, concurrency 1", s("c1", "p50_overhead_ms"), unit="ms", target="≤ 2",
                 baseline=s("c1", "direct_p50_ms"), baseline_name="direct p50 ms", note="loopback, fake upstream"),
             row("gateway p50 overhead, concurrency 8", s("c8", "p50_overhead_ms"), unit="ms", target="≤ 5",
                 baseline=s("c8", "direct_p50_ms"), baseline_name="direct p50 ms"),
             row("gateway p99 overhead, concurrency 8", s("c8", "p99_overhead_ms"), unit="ms", target="≤ 15"),
             row("gateway CPU per request (answer + mirror + log), concurrency 8",
                 s("c8", "gateway_cpu_ms_per_request"), unit="ms", note="user+system time of the gateway process")]
    if "c8_sync" in runs:
        out["p50_overhead_ms_c8_sync"] = s("c8_sync", "p50_overhead_ms")["median"]
        out["p99_overhead_ms_c8_sync"] = s("c8_sync", "p99_overhead_ms")["median"]
        table += [row("durability sync: p50 overhead, concurrency 8", s("c8_sync", "p50_overhead_ms"), unit="ms",
                      note="the answer waits for its commit (group commit, SQLite WAL synchronous=FULL)"),
                  row("durability sync: p99 overhead, concurrency 8", s("c8_sync", "p99_overhead_ms"), unit="ms")]
    table.append(row("lost shadow records", lost, target="0", note=f"over {total:,} requests"))
    out["table"] = table
    out["setup"] = ("client, fake upstreams and `mixtune gateway` in three processes on loopback; each client worker "
                    "alternates a direct call to the champion with the same call through the gateway; overhead = "
                    "gateway percentile − direct percentile; durability batch (window 100 ms) unless a row says sync")
    return out
