"""Benchmark harness: statistics, provenance, failure recording, BENCHMARKS.md regeneration, and the
cheap suites' quick tier through the real CLI (into a tmp dir, never the committed results)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mixtune.bench.harness import NOTES_END, NOTES_START, Context, render_markdown, row, run_suite, summarize


def _ctx(tmp_path: Path) -> Context:
    out = tmp_path / "benchmarks" / "results"
    return Context(tier="quick", seeds=[0], out=out, plots=out.parent, work=tmp_path / "work",
                   md_path=tmp_path / "BENCHMARKS.md", repetitions=1, log=lambda msg: None)


def test_summarize_median_and_spread():
    s = summarize([10.0, 30.0, 20.0])
    assert s["median"] == 20.0 and s["min"] == 10.0 and s["max"] == 30.0
    assert s["spread_pct"] == 50.0 and s["n"] == 3
    assert summarize([])["median"] is None


def test_run_suite_stamps_provenance_and_records_failures(tmp_path):
    ctx = _ctx(tmp_path)
    ok = run_suite("good", lambda c: {"x": 1.5, "table": [row("x", 1.5, baseline=3.0, ratio=0.5)]}, ctx, "mixtune bench good")
    assert ok["status"] == "ok"
    data = json.loads((ctx.out / "good.json").read_text())
    for key in ("command", "machine", "versions", "seeds", "date", "tier", "repetitions"):
        assert key in data
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]
    assert data["versions"]["torch"] and data["command"] == "mixtune bench good"

    def broken(c):
        raise ValueError("component missing")

    bad = run_suite("bad", broken, ctx, "mixtune bench bad")
    assert bad["status"] == "error"
    assert "not measured: ValueError: component missing" in bad["table"][0]["note"]


def test_markdown_regenerates_tables_and_keeps_notes(tmp_path):
    ctx = _ctx(tmp_path)
    run_suite("alpha", lambda c: {"table": [row("speed", summarize([1.0, 2.0, 3.0]), unit="tok/s",
                                                baseline=4.0, baseline_name="TRL", ratio=0.5)]}, ctx, "cmd-a")
    md = render_markdown(ctx.out, ctx.md_path, ["alpha"])
    text = md.read_text()
    assert "| speed | 2 [1–3] tok/s | TRL: 4 | 0.50× |" in text
    # A hand-written note survives regeneration; stale tables do not.
    edited = text.replace("_No notes yet._", "mixtune loses to TRL here because X.")
    ctx.md_path.write_text(edited + "\nstale line\n")
    run_suite("beta", lambda c: {"table": [row("latency", 0.25, unit="s")]}, ctx, "cmd-b")
    text2 = render_markdown(ctx.out, ctx.md_path, ["alpha", "beta"]).read_text()
    assert "mixtune loses to TRL here because X." in text2
    assert text2.count(NOTES_START) == 1 and text2.count(NOTES_END) == 1
    assert "stale line" not in text2
    assert text2.index("## alpha") < text2.index("## beta") and "`cmd-b`" in text2


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixtune", "bench", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_rejects_unknown_suite_and_tier(tmp_path):
    p = _cli("nosuch", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert p.returncode != 0 and "unknown suite" in p.stderr and "Traceback" not in p.stderr
    p = _cli("trace", "--tier", "huge", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert p.returncode != 0 and "--tier" in p.stderr


def test_cli_quick_tier_of_data_and_eval_suites(tmp_path):
    out = tmp_path / "benchmarks" / "results"
    p = _cli("validation,trace,evaluation", "--tier", "quick", "--out", str(out), "--md",
             str(tmp_path / "BENCHMARKS.md"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    v = json.loads((out / "validation.json").read_text())
    assert v["status"] == "ok" and v["n_samples"] == 20_000
    assert v["samples_per_s"] > 0 and 10 < v["peak_rss_mib"] < 2048
    assert v["failing_samples"] > 0  # the 5% injected defects are caught, so validation really ran
    t = json.loads((out / "trace.json").read_text())
    assert t["rows"] == 200_000 and 0 < t["latency_s"] < 30
    e = json.loads((out / "evaluation.json").read_text())
    assert e["samples_per_s"] > 0 and e["rule_engine_samples_per_s"] > 0
    md = (tmp_path / "BENCHMARKS.md").read_text()
    for name in ("## validation", "## trace", "## evaluation"):
        assert name in md
    assert "tier quick" in md


def test_examples_are_found_in_a_checkout_or_named_explicitly(tmp_path, monkeypatch):
    from mixtune.bench import fixtures
    from mixtune.errors import ConfigError

    repo_examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.delenv(fixtures.EXAMPLES_ENV, raising=False)
    assert fixtures.examples_dir() == repo_examples  # the source checkout this package runs from
    # A pip install: the package lives in site-packages with no examples beside it.
    monkeypatch.setattr(fixtures, "__file__", str(tmp_path / "site-packages" / "mixtune" / "bench" / "fixtures.py"))
    monkeypatch.chdir(tmp_path)
    try:
        fixtures.finance_dir()
    except ConfigError as e:
        assert "--examples" in str(e) and fixtures.EXAMPLES_ENV in str(e) and str(tmp_path) in str(e)
    else:
        raise AssertionError("a package without examples must fail with a clear error")
    monkeypatch.setenv(fixtures.EXAMPLES_ENV, str(repo_examples))
    assert fixtures.demo_config_path() == repo_examples / "finance_risk" / "pipeline.yaml"
    # Named explicitly but wrong: no silent fallback to the checkout; the suite is "not measured".
    out = tmp_path / "r"
    p = _cli("evaluation", "--examples", str(tmp_path / "nowhere"), "--out", str(out), "--md",
             str(tmp_path / "B.md"), cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    err = json.loads((out / "evaluation.json").read_text())["error"]
    assert "examples/finance_risk" in err and "--examples" in err
