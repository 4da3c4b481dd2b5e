"""``mixtune ifeval``: verdict file, aggregates on the last line, clear user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtune.cli import main
from mixtune.eval.ifeval.subset import DATA

ZH = DATA / "zh_mt.jsonl"  # the Chinese prompts ship with the package


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def zh_prompts(keys):
    rows = {}
    for line in ZH.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["key"] in keys:
            rows[rec["key"]] = rec
    return [rows[k] for k in keys]


def test_cli_scores_chinese_prompts(tmp_path, capsys):
    # Real Marco-Bench-MIF prompts: 1001 = no comma + Chinese; 1005 = >=12 placeholders + Chinese.
    prompts = zh_prompts([1001, 1005])
    responses = [
        {"prompt": prompts[0]["prompt"], "response": "第一天我们去东京。第二天我们去京都看寺庙！"},
        {"prompt": prompts[1]["prompt"], "response": "姓名：[姓名]，地址：[地址]。"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", prompts)
    resp = write_jsonl(tmp_path / "resp.jsonl", responses)
    out = tmp_path / "out" / "verdicts.jsonl"
    code, stdout, _ = run(
        ["ifeval", "--input-data", str(inp), "--responses", str(resp), "--output", str(out)], capsys
    )
    assert code == 0
    agg = json.loads(stdout.strip().splitlines()[-1])
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["key"] for x in lines] == [1001, 1005]
    assert set(lines[0]) >= {
        "key",
        "strict_follow_all",
        "strict_follow_list",
        "loose_follow_all",
        "loose_follow_list",
    }
    assert lines[0]["language"] == "zh" and lines[0]["strict_follow_list"] == [True, True]
    # Full-width comma present and only 2 placeholders: both fail, Chinese detected.
    assert lines[1]["strict_follow_list"] == [False, True]
    assert agg == {
        "prompt_level_strict": 0.5,
        "instruction_level_strict": 0.75,
        "prompt_level_loose": 0.5,
        "instruction_level_loose": 0.75,
    }


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    good = write_jsonl(tmp_path / "in.jsonl", zh_prompts([1001]))
    code, _, err = run(
        [
            "ifeval",
            "--input-data",
            str(tmp_path / "missing.jsonl"),
            "--responses",
            str(good),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capsys,
    )
    assert code == 2 and "missing.jsonl" in err and "not found" in err and "Traceback" not in err

    bad = tmp_path / "resp.jsonl"
    bad.write_text('{"prompt": "x", "response": "y"}\n{"prompt": \n', encoding="utf-8")
    code, _, err = run(
        ["ifeval", "--input-data", str(good), "--responses", str(bad), "--output", str(tmp_path / "o.jsonl")],
        capsys,
    )
    assert code == 2 and f"{bad}:2" in err and "malformed JSON" in err

    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "unrelated", "response": "r"}])
    code, _, err = run(
        [
            "ifeval",
            "--input-data",
            str(good),
            "--responses",
            str(other),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capsys,
    )
    assert code == 2 and "no response" in err and f"{good}:1" in err

    code, _, err = run(
        [
            "ifeval",
            "--input-data",
            str(good),
            "--responses",
            str(other),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--language",
            "fr",
        ],
        capsys,
    )
    assert code == 2 and "--language" in err
