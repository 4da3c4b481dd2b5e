"""`mixtune eval` end to end on the tiny model with the real rule engine, KPIs and generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixtune.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finance_risk" / "ontology.yaml"
RULES = {"version": "test-1", "rules": [
    {"id": "terminology", "kind": "terminology",
     "params": {"terms": [{"canonical": "流动性覆盖率", "forbidden": ["流动覆盖率"]}]}},
    {"id": "length_stage1", "kind": "length", "params": {"min": 2, "max": 80}},
]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import pyarrow.parquet as pq

    from mixtune.data.generate import generate_samples
    from mixtune.data.ontology import load_ontology
    from mixtune.data.schema import samples_to_table
    from mixtune.model.tiny import make_test_model

    d = tmp_path_factory.mktemp("evalcmd")
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    raw["tasks"] = [dict(t, rule_ids=["terminology", "length_stage1"]) for t in raw["tasks"]
                    if t["id"] in ("calc_lcr", "concept_term")]
    raw["chains"] = []
    (d / "ontology.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    (d / "rules.yaml").write_text(yaml.safe_dump(RULES, allow_unicode=True), encoding="utf-8")
    samples = generate_samples(load_ontology(d / "ontology.yaml"), n_per_task=3, seed=0)
    pq.write_table(samples_to_table(samples), d / "samples.parquet")
    make_test_model(d / "model")
    return d


def args(d: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(d / "model"), "--data", str(d / "samples.parquet"), "--ontology",
            str(d / "ontology.yaml"), "--rules", str(d / "rules.yaml"), "--out", str(d / "out"), "--split", "all",
            "--max-new-tokens", "6", "--no-progress", "--experience-per-task", "1", *extra]


def run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_eval_command_builds_matrix_across_models(workspace, capsys):
    d = workspace
    assert run(args(d, "--model-name", "base", "--session-turns", "3")) == 0
    assert run(args(d, "--model-name", "stage1", "--no-experience")) == 0
    recs = [json.loads(line) for line in (d / "out" / "base.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["layer"] for r in recs} == {"base", "business", "experience"}
    assert len([r for r in recs if r["layer"] == "business"]) == 6
    assert all(0.0 <= r["primary"] <= 1.0 for r in recs)
    base = next(r for r in recs if r["layer"] == "base")
    assert set(base["metrics"]) == {"format_compliance", "terminology_accuracy"}
    summary = json.loads((d / "out" / "summary.json").read_text(encoding="utf-8"))
    assert set(summary) == {"base", "stage1"}
    assert set(summary["base"]) == {"calculation", "concept"}
    matrix = json.loads((d / "out" / "matrix.json").read_text(encoding="utf-8"))
    assert "experience" in matrix["base"]["calc_lcr"] and "experience" not in matrix["stage1"]["calc_lcr"]
    conv = matrix["base"]["_conversations"]  # simulated-user sessions: score by turn, session success
    assert conv["sessions"] == 2 and len(conv["score_by_turn"]) == 3 and 0.0 <= conv["success_rate"] <= 1.0
    assert "_conversations" not in matrix["stage1"]
    assert "│ calculation" in capsys.readouterr().out


def test_eval_command_user_errors_are_one_line(workspace, capsys):
    d = workspace
    bad = args(d)
    bad[bad.index("--model") + 1] = str(d / "missing-model")
    assert run(bad) == 2
    err = capsys.readouterr().err
    assert "model path does not exist" in err and "Traceback" not in err
    assert run(args(d, "--user-url", "http://127.0.0.1:9")) == 2
    assert "--user-url needs --user-model" in capsys.readouterr().err
    bad = args(d, "--split", "val")
    assert run(bad) == 2
    assert "no samples in split 'val'" in capsys.readouterr().err


def test_eval_command_evaluates_the_shipped_ifeval_subset(workspace, capsys):
    d = workspace
    out = d / "ife"
    argv = args(d, "--model-name", "stage2", "--no-experience", "--ifeval-prompts", "3", "--ifeval-zh-prompts", "2",
                "--ifeval-max-new-tokens", "5", "--seed", "4")
    argv[argv.index("--out") + 1] = str(out)
    assert run(argv) == 0
    recs = [json.loads(line) for line in (out / "stage2.jsonl").read_text(encoding="utf-8").splitlines()]
    ife = [r for r in recs if r["family"] in ("ifeval", "ifeval_zh")]
    from mixtune.eval.ifeval.subset import packaged_subset

    want = [f"ifeval:{p['key']}" for p in packaged_subset("ifeval", 3, 4)]
    want += [f"ifeval_zh:{p['key']}" for p in packaged_subset("ifeval_zh", 2, 4)]
    assert sorted(r["sample_id"] for r in ife) == sorted(want)  # the pipeline's subset for the same seed
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["ifeval"]["stage2"]["n"] == 3 and summary["ifeval_zh"]["stage2"]["n"] == 2
    assert set(summary["stage2"]) == {"calculation", "concept"}
    printed = capsys.readouterr().out
    assert "ifeval: instruction following" in printed and "ifeval_zh: instruction following" in printed
    prompts = d / "p.jsonl"
    prompts.write_text(json.dumps(packaged_subset("ifeval", 1, 0)[0]) + "\n", encoding="utf-8")
    assert run(args(d, "--ifeval", str(prompts), "--ifeval-prompts", "2")) == 2
    assert "not both" in capsys.readouterr().err
    assert run(args(d, "--model-name", "ifeval")) == 2
    assert "unusable model name 'ifeval'" in capsys.readouterr().err
