"""report.html's IFEval section, read from what the evaluation writes (write_matrix's summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

from mixtune.eval.runner import write_jsonl, write_matrix
from mixtune.report import write_report

TYPES = ["punctuation:no_comma", "detectable_format:title", "startend:end_checker"]


def ife(model: str, passes: list[list[bool]]) -> list[dict]:
    """IFEval records shaped as the runner writes them; ``passes``: loose = strict verdicts per prompt."""
    out = []
    for i, verdicts in enumerate(passes):
        ids = TYPES[:len(verdicts)]
        ok = float(all(verdicts))
        out.append({"model": model, "sample_id": f"ifeval:{i}", "task_id": "ifeval", "family": "ifeval",
                    "group": "general", "layer": "base", "prompt": f"prompt {i}", "prediction": "x", "reference": "",
                    "metrics": {"ifeval_prompt_strict": ok, "ifeval_prompt_loose": ok,
                                "ifeval_inst_strict": sum(verdicts) / len(verdicts),
                                "ifeval_inst_loose": sum(verdicts) / len(verdicts)},
                    "primary": ok, "detail": {"kind": "ifeval", "language": "en", "instruction_id_list": ids,
                                              "strict_follow_list": verdicts, "loose_follow_list": verdicts}})
    return out


def domain(model: str, score: float) -> list[dict]:
    head = {"model": model, "sample_id": "s1", "task_id": "calc_lcr", "family": "calculation", "group": "logic",
            "prompt": "请计算", "prediction": "150.00%", "reference": "150.00%"}
    return [{**head, "layer": "base", "metrics": {"format_compliance": score}, "primary": score},
            {**head, "layer": "business", "metrics": {"numeric_accuracy": score}, "primary": score}]


def run_dir(tmp: Path, with_ifeval: bool) -> Path:
    rd = tmp / "run"
    verdicts = {"base": [[True], [True, True], [True, False, True], [False]],
                "stage1": [[True], [True, True], [False, False, True], [False]],
                "stage2": [[True], [False, True], [False, False, False], [False]]}
    by_model = {}
    for m, score in (("base", 0.2), ("stage1", 0.6), ("stage2", 0.9)):
        by_model[m] = domain(m, score) + (ife(m, verdicts[m]) if with_ifeval else [])
        write_jsonl(by_model[m], rd / "eval" / f"{m}.jsonl")
    write_matrix(by_model, rd / "eval")
    return rd


def section(html: str) -> str:
    start = html.index("Instruction following (IFEval")
    return html[start:html.index("<h2>", start)]


def test_report_shows_the_four_aggregates_per_model_and_the_stage2_drop(tmp_path):
    rd = run_dir(tmp_path, with_ifeval=True)
    summary = json.loads((rd / "eval" / "summary.json").read_text())
    assert summary["ifeval"]["base"]["prompt_loose"] == 0.5 and summary["ifeval"]["stage2"]["prompt_loose"] == 0.25
    html = write_report(rd).read_text(encoding="utf-8")
    part = section(html)
    for label in ("prompt-level strict", "prompt-level loose", "instruction-level strict", "instruction-level loose"):
        assert label in part
    # base: 2 of 4 prompts, 5 of 7 instructions; stage 2: 1 of 4 prompts, 2 of 7 instructions
    assert "<td>base</td><td>0.500</td><td>0.500</td><td>0.714</td><td>0.714</td><td>4</td><td>7</td>" in part
    assert "<td>stage2 − base</td><td>-0.250</td><td>-0.250</td><td>-0.429</td><td>-0.429</td>" in part
    assert "3 instruction types covered" in part and "startend:end_checker" in part
    assert "<td>punctuation:no_comma</td><td>0.75 (4)</td><td>0.50 (4)</td><td>0.25 (4)</td>" in part
    # the domain tables are untouched: no 'ifeval' family column, and the base-layer delta is the domain's
    fam = html[html.index("Held-out primary score per task family"):]
    assert "<th>ifeval</th>" not in fam.split("</table>")[0]
    deltas = html[html.index("per layer</h3>"):].split("</table>")[0]
    assert "<td>base</td><td>1</td><td>0.200</td><td>0.900</td>" in deltas  # one paired domain item, not 5


def test_report_has_no_ifeval_section_without_the_block(tmp_path):
    html = write_report(run_dir(tmp_path, with_ifeval=False)).read_text(encoding="utf-8")
    assert "IFEval" not in html and "Held-out primary score per task family" in html
