"""The quick tier of EVERY suite through the CLI into a tmp dir, so the harness never rots (default tier;
≈20 s on a quiet 2-core machine).

Checks that each suite measured (status ok) and wrote the machine-readable keys the issue asks for.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

REQUIRED = {
    "throughput": ("mixtune_tokens_per_s", "trl_tokens_per_s", "ratio"),
    "mixing": ("scenarios", "default_method"),
    "validation": ("samples_per_s", "peak_rss_mib", "n_samples"),
    "trace": ("rows", "latency_s"),
    "gateway": ("p50_overhead_ms_c1", "p50_overhead_ms_c8", "p99_overhead_ms_c8", "lost_records"),
    "reliability": ("faults", "lost_beyond_guarantee"),
    "demo": ("wall_s",),
    "efficiency": ("achieved_flops", "peak_flops", "share"),
    "stage1_ablation": ("variants",),
    "evaluation": ("samples_per_s",),
    "memory": ("variants", "settings", "model"),
}
COMMON = ("command", "machine", "versions", "seeds", "date", "tier")


@pytest.mark.integration
def test_quick_tier_all_suites(tmp_path):
    out = tmp_path / "benchmarks" / "results"
    p = subprocess.run([sys.executable, "-m", "mixtune", "bench", "all", "--tier", "quick", "--out", str(out),
                        "--md", str(tmp_path / "BENCHMARKS.md")], capture_output=True, text=True, timeout=900)
    failed = {}
    for suite, keys in REQUIRED.items():
        data = json.loads((out / f"{suite}.json").read_text())
        if data["status"] != "ok":
            failed[suite] = data.get("error")
            continue
        for k in keys + COMMON:
            assert k in data, (suite, k)
    assert not failed, failed
    assert p.returncode == 0
    mixing = json.loads((out / "mixing.json").read_text())["scenarios"]  # details: test_mixing_study_quick.py
    for sc in mixing.values():
        assert {"methods", "strongest_baseline", "default_vs_strongest"} <= set(sc)
    assert (tmp_path / "benchmarks" / "mixing_confirmation_S1.png").stat().st_size > 1000
    assert (tmp_path / "benchmarks" / "stage1_ablation.png").stat().st_size > 1000
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "mixing_confirmation_S1.png" in md and "## demo" in md
