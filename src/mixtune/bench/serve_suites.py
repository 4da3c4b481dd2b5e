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
    n, conc = (1000, 8) if ctx.full else (100, 4)
    p50, p99, lost, direct50, via_rps = [], [], [], [], []
    for _ in range(ctx.repetitions if ctx.full else 1):
        t0 = time.perf_counter()
        m = measure_gateway_overhead(n_requests=n, concurrency=conc)
        wall = time.perf_counter() - t0
        p50.append(m["p50_overhead_ms"])
        p99.append(m["p99_overhead_ms"])
        lost.append(m["lost_records"])
        direct50.append(m["direct_p50_ms"])
        via_rps.append(2 * m["n_requests"] / wall)  # both paths, including process start-up: a lower bound
    a, b = summarize(p50), summarize(p99)
    return {"p50_overhead_ms": a["median"], "p99_overhead_ms": b["median"], "lost_records": int(sum(lost)),
            "n_requests": n, "concurrency": conc, "repetitions": len(p50),
            "table": [row("gateway p50 overhead (gateway − direct)", a, unit="ms",
                          baseline=summarize(direct50), baseline_name="direct p50 ms", note="loopback, fake upstream"),
                      row("gateway p99 overhead", b, unit="ms"),
                      row("lost shadow records", int(sum(lost)), target="0", note=f"over {len(p50) * n:,} requests"),
                      row("load held", summarize(via_rps), unit="req/s",
                          note=f"{n} requests per run at concurrency {conc}, all completed; rate counts both paths "
                               "and process start-up, so it is a lower bound")]}
