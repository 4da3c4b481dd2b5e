"""The mixing study's quick tier end to end (same code path as the full study, tiny sizes)."""

import json

from mixtune.bench import mixing as study_suite
from mixtune.bench.harness import Context, run_suite


def test_quick_tier_writes_the_study_keys(tmp_path):
    out = tmp_path / "benchmarks" / "results"
    ctx = Context(tier="quick", seeds=[0], out=out, plots=out.parent, work=tmp_path / "work",
                  md_path=tmp_path / "BENCHMARKS.md", repetitions=1)
    res = run_suite("mixing", study_suite.run, ctx, "test")
    assert res["status"] == "ok", res.get("error")
    data = json.loads((out / "mixing.json").read_text())
    assert data["default_method"] == study_suite.DEFAULT == "mixtune_heat_only" and data["headline_half"] == "confirmation"
    assert set(data["scenarios"]) == {"S1", "S2"}
    for name, sc in data["scenarios"].items():
        assert set(sc["methods"]) == {"natural", "uniform", study_suite.DEFAULT}
        for m in sc["methods"].values():
            assert {"mean_score", "worst_task_score", "steps_to_target_ratio", "per_seed"} <= set(m)
            seed0 = m["per_seed"][0]
            assert seed0["seed"] == 0 and len(seed0["per_task"]) == 16
            assert 0.0 <= m["worst_task_score"] <= m["mean_score"] <= 1.0
        # ties (S1: natural IS uniform) go to the earlier baseline of BASELINES, i.e. uniform
        best = max((b for b in study_suite.BASELINES if b in sc["methods"]),
                   key=lambda b: sc["methods"][b]["worst_task_score"])
        assert sc["strongest_baseline"] == best
        cmp = sc["default_vs_strongest"]
        assert cmp["ci_low"] <= cmp["delta"] <= cmp["ci_high"] and cmp["n_seeds"] == 1
        assert (out.parent / f"mixing_confirmation_{name}.png").stat().st_size > 1000
    # equal sizes in S1: natural IS uniform, so it reuses uniform's run instead of training
    assert data["scenarios"]["S1"]["methods"]["natural"]["per_seed"][0]["per_task"] == \
        data["scenarios"]["S1"]["methods"]["uniform"]["per_seed"][0]["per_task"]
    # every run's mixing log kept the controller's inputs visible
    runs = list((tmp_path / "work" / "mixing_study" / "runs").glob("*.json"))
    assert len(runs) == 5  # S1: uniform, default; S2: natural, uniform, default
    rec = json.loads(runs[0].read_text())
    assert {"decay", "cv", "rejection", "gap", "heat"} <= set(rec["heat_inputs_logged"])
    assert rec["curve"] and abs(sum(rec["final_weights"].values()) - 1) < 1e-9
    # a second run resumes from the cached runs instead of training again
    again = run_suite("mixing", study_suite.run, ctx, "test")
    assert again["scenarios"]["S1"]["methods"] == res["scenarios"]["S1"]["methods"]
    assert again["wall_s"] < res["wall_s"]
    # --cached-only: a (scenario, seed) with a missing run is dropped and listed, nothing is trained
    next(p for p in runs if p.name.startswith("S2_s0_uniform")).unlink()
    partial = study_suite.run_plan(ctx, study_suite.PLANS["quick"], cached_only=True)
    assert partial["missing_runs"] == ["S2 seed 0"] and set(partial["scenarios"]) == {"S1"}
    assert not any(p.name.startswith("S2_s0_uniform") for p in runs[0].parent.glob("*.json"))
