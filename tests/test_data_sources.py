"""``data.sources`` entries with field_map, default_task and task_from (issue 16 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtune.config import PipelineConfig, load_config
from mixtune.data.ingest import Source, ingest_sources
from mixtune.data.ontology import load_ontology
from mixtune.errors import ConfigError, DataError

EX = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"
ROWS = [
    {"q": "什么是流动性覆盖率？", "response": "流动性覆盖率是优质流动性资产与未来30天净现金流出之比。", "kind": "term"},
    {"q": "LCR怎么算？", "response": "LCR = 优质流动性资产 / 未来30天净现金流出。", "kind": "ratio"},
    {"q": "这是什么？", "response": "不知道。", "kind": "gossip"},          # value not in the map
    {"q": "空类别", "response": "答案。"},                                   # no kind: default_task applies
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sources_accept_a_path_or_a_mapping_and_keep_strings_as_written():
    cfg = PipelineConfig.model_validate({"data": {"sources": [
        "a.jsonl", {"path": "b.csv", "field_map": {"output": "response"}, "default_task": "concept_term",
                    "task_from": {"column": "kind", "map": {"term": "concept_term"}}},
        {"path": "c.parquet", "task_from": "category"}]}})
    a, b, c = cfg.data.sources
    assert a.path == "a.jsonl" and not a.field_map and a.task_from is None
    assert b.task_from.map == {"term": "concept_term"} and b.field_map == {"output": "response"}
    assert c.task_from.column == "category" and c.task_from.map == {}
    dumped = cfg.model_dump(mode="json")["data"]["sources"]
    assert dumped[0] == "a.jsonl" and dumped[2]["task_from"] == "category"  # plain entries dump unchanged
    assert PipelineConfig.model_validate({"data": {"sources": dumped}}).data.sources == cfg.data.sources


def test_unknown_source_keys_are_errors_with_their_key_path(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text("data:\n  sources:\n    - a.jsonl\n    - {path: b.csv, feld_map: {output: response}}\n"
                 "    - {path: c.csv, task_from: {column: k, mapping: {}}}\n    - {default_task: x}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(y)
    msg = e.value.message
    assert "data.sources.1.feld_map: unknown key" in msg
    assert "data.sources.2.task_from.mapping: unknown key" in msg
    assert "data.sources.3.path: Field required" in msg


def test_field_map_task_from_map_and_default_task(tmp_path):
    src = _jsonl(tmp_path / "faq.jsonl", [{**r, "instruction": r.pop("q")} for r in (dict(x) for x in ROWS)])
    s = Source(str(src), {"output": "response"}, "concept_term", "kind", {"term": "concept_term", "ratio": "calc_lcr"})
    res = ingest_sources([s], ontology=load_ontology(EX / "ontology.yaml"))
    assert [(x.task_id, x.output[:3]) for x in res.samples] == [
        ("concept_term", "流动性"), ("calc_lcr", "LCR"), ("concept_term", "答案。")]
    [q] = res.quarantine
    assert (q["file"], q["line"], q["reason"]) == (str(src), 3, "unmapped_task") and "'gossip'" in q["detail"]


def test_task_from_without_map_uses_the_column_and_quarantines_empty_values(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [{"instruction": "q1", "output": "a1", "cat": "t_one"},
                                        {"instruction": "q2", "output": "a2", "cat": ""}])
    res = ingest_sources([Source(str(src), task_column="cat")])
    assert [x.task_id for x in res.samples] == ["t_one"]
    assert [(q["line"], q["reason"]) for q in res.quarantine] == [(2, "missing_task_id")]
    assert "'cat' is empty" in res.quarantine[0]["detail"]


def test_source_mistakes_are_clear_errors_before_reading(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    onto = load_ontology(EX / "ontology.yaml")
    with pytest.raises(DataError, match="not in the ontology.*'x': 'nope'"):
        ingest_sources([Source(str(src), task_column="k", task_map={"x": "nope"})], ontology=onto)
    with pytest.raises(DataError, match="field_map target 'outpt'"):
        ingest_sources([Source(str(src), {"outpt": "response"})])
    with pytest.raises(DataError, match="not found"):
        ingest_sources([Source(str(tmp_path / "missing.jsonl"))])


def test_pipeline_resolves_source_paths_against_the_yaml_folder(tmp_path):
    from mixtune.pipeline import step_data
    from mixtune.rundir import RunDir

    cfg_dir = tmp_path / "project"
    (cfg_dir / "data").mkdir(parents=True)
    _jsonl(cfg_dir / "data" / "faq.jsonl", [{**r, "instruction": r.pop("q")} for r in (dict(x) for x in ROWS)])
    y = cfg_dir / "pipeline.yaml"
    y.write_text(f"""name: src_test
output_dir: runs
data:
  ontology: {EX / 'ontology.yaml'}
  rules: {EX / 'rules.yaml'}
  generate: false
  sources:
    - path: data/faq.jsonl
      field_map: {{output: response}}
      default_task: concept_term
      task_from: {{column: kind, map: {{term: concept_term, ratio: calc_lcr}}}}
""", encoding="utf-8")
    cfg = load_config(y)
    step_data(cfg, RunDir(cfg))
    out = cfg_dir / "runs" / "src_test" / "data"
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    unmapped = [q for q in quarantine if q["reason"] == "unmapped_task"]
    assert len(unmapped) == 1 and unmapped[0]["file"] == str(cfg_dir / "data" / "faq.jsonl")
    assert unmapped[0]["line"] == 3
    summary = json.loads((out / "build_summary.json").read_text())
    assert summary["ingested_records"] == 4


def test_cli_ingest_takes_task_from_and_task_map(tmp_path):
    from mixtune.cli import main

    src = _jsonl(tmp_path / "faq.jsonl", [{**r, "instruction": r.pop("q")} for r in (dict(x) for x in ROWS)])
    with pytest.raises(SystemExit) as e:
        main(["data", "ingest", str(src), "--out", str(tmp_path / "o"), "--field-map", "output=response",
              "--task-from", "kind", "--task-map", "term=concept_term", "--task-map", "ratio=calc_lcr",
              "--ontology", str(EX / "ontology.yaml")])
    assert (e.value.code or 0) == 0
    summary = json.loads((tmp_path / "o" / "ingest_summary.json").read_text())
    assert summary["by_reason"] == {"missing_task_id": 1, "unmapped_task": 1} and summary["accepted"] == 2
    with pytest.raises(SystemExit) as e:
        main(["data", "ingest", str(src), "--out", str(tmp_path / "o"), "--task-map", "a=b"])
    assert e.value.code == 2
