"""report.html read as a person would: decision on top, rollout tables, answers side by side,
escaped model text; rendered in headless Chromium with a screenshot kept."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mixtune.report import write_report

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "<script>window.__xss=1</script>保证收益"


def _run_dir(tmp: Path, canary_status: str = "fail") -> Path:
    rd = tmp / "run"
    (rd / "eval").mkdir(parents=True)
    recs = {}
    for m, q in (("base", 0.2), ("stage1", 0.5), ("stage2", 0.8)):
        rows = []
        for i in range(6):
            fam = "calculation" if i < 3 else "prohibited_promise"
            pred = f"流动性覆盖率=1{i}.00%" if fam == "calculation" else HOSTILE
            head = {"model": m, "sample_id": f"s{i}", "task_id": f"t{i % 2}", "family": fam, "group": "logic",
                    "prompt": f"问题{i}", "prediction": pred, "reference": "参考答案"}
            find = [{"rule_id": "sensitive_words", "severity": "error", "reason": "禁用词", "span": [
                len(HOSTILE) - 4, len(HOSTILE)]}] if fam != "calculation" else []
            rows.append({**head, "layer": "base", "metrics": {"format_compliance": q}, "primary": q, "findings": find})
            rows.append({**head, "layer": "business", "metrics": {"numeric_accuracy": q}, "primary": q + i * 0.01})
        recs[m] = rows
        (rd / "eval" / f"{m}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    conv = {m: {"_conversations": {"sessions": 4, "score_by_turn": [0.8, 0.6, 0.4 + d], "n_by_turn": [4, 4, 4],
                                   "success_rate": 0.25 + d, "abandon_rate": 0.0, "thumbs_down_rate": 0.3}}
            for m, d in (("base", 0.0), ("stage1", 0.1), ("stage2", 0.3))}
    (rd / "eval" / "matrix.json").write_text(json.dumps(conv))
    step = {"gate": "rollout_step", "status": "pass", "checks": [], "meta": {
        "step": 1, "share_pct": 5.0, "reason": "mean delta +0.010 >= -0.050", "records_missing": 0,
        "traffic": {"requests": 30, "champion": 28, "candidate": 2, "canary_fallbacks": 0},
        "latency_ms": {"champion": {"n": 30, "p50": 41.0, "p95": 80.0}, "candidate": {"n": 30, "p50": 45.0, "p95": 90.0}},
        "feedback": {"champion": {"n": 5, "thumbs_down_rate": 0.2}, "candidate": {"n": 1, "thumbs_down_rate": 0.0}},
        "analysis": {"quality": {"status": "pass", "reason": "ok", "delta": 0.01, "lo": -0.02, "hi": 0.05},
                     "availability": {"status": "pass", "reason": "candidate error rate 0%"}}}}
    step2 = json.loads(json.dumps(step))
    step2["status"] = "fail"
    step2["meta"].update(step=2, share_pct=25.0, reason="candidate server exited (code -9) during step 2")
    gates = [{"gate": "validate", "status": "pass", "meta": {"champion": "base"}, "checks": [
        {"metric": "primary", "scope": "overall", "kind": "min", "threshold": 0.3, "status": "pass", "value": 0.8}]},
        step, step2,
        {"gate": "canary", "status": canary_status, "checks": [], "meta": {
            "reason": "step 2 (25%): candidate server exited (code -9) during step 2", "rollback": True,
            "traffic_source": "traffic split"}}]
    (rd / "gates.jsonl").write_text("\n".join(json.dumps(g, ensure_ascii=False) for g in gates))
    state = "rejected" if canary_status == "fail" else "released"
    (rd / "registry.json").write_text(json.dumps({"url": "sqlite:///r.db", "model": {
        "id": 2, "name": "finance-risk", "version": 2, "state": state, "path": "/x"}}))
    return rd


def test_report_puts_the_decision_first_and_shows_tables_not_json(tmp_path):
    html = write_report(_run_dir(tmp_path)).read_text(encoding="utf-8")
    body = html.split("<body>", 1)[1]
    assert body.index("Decision: rolled back") < body.index("Staged rollout") < body.index("Answers side by side")
    assert "candidate server exited (code -9)" in body and "no traffic goes to the candidate" in body
    assert "<script>window" not in html and "&lt;script&gt;" in html  # model text is escaped
    assert "<mark title='sensitive_words'>" in html  # the rule finding is highlighted
    assert '{"' not in body  # no raw JSON dumps
    assert "41 / 80" in body and "turn 3" in body  # latency percentiles, score by turn
    assert "stage2" in body and "delta [95% interval]" in body


def test_report_says_released_when_the_registry_released_it(tmp_path):
    html = write_report(_run_dir(tmp_path, canary_status="pass")).read_text(encoding="utf-8")
    assert "Decision: released" in html


def _chromium() -> tuple[str, str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.mark.skipif(_chromium() is None, reason="Chromium and chromedriver are not installed on this machine")
def test_report_renders_in_headless_chromium(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    binary, driver = _chromium()
    page = write_report(_run_dir(tmp_path))
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1800",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.get(page.as_uri())
        head = browser.find_element(By.CSS_SELECTOR, ".decision .head")
        assert head.text == "Decision: rolled back" and head.is_displayed()
        assert browser.execute_script("return window.__xss === undefined")  # the hostile answer did not run
        marks = browser.find_elements(By.TAG_NAME, "mark")
        assert marks and marks[0].get_attribute("title") == "sensitive_words"
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("MIXTUNE_UPDATE_SCREENSHOT"):  # refresh docs/img/report.png from a real run instead
            shutil.copy(shot, ROOT / "docs" / "img" / "report.png")
    finally:
        browser.quit()
