"""The review app in a real browser (headless Debian Chromium via selenium).

Two reviewers review the output queue with clicks and keyboard shortcuts; the test then checks
the store, the adjudicator's queue, the live rejection rate and that hostile output is inert.
The screenshot of a review page goes to docs/img/review.png (used by the README).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from browser.chrome import chromium_driver
from browser.review_env import TOKENS, registry

from mixtune.release.server import ServerThread
from mixtune.review.app import create_app
from mixtune.review.queue import states
from mixtune.review.store import ReviewStore

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "review.png"
REASONS = {"calc_lcr": ["arithmetic error", "wrong decimals", "ratio inverted"]}
HOSTILE = "<script>window.__pwned = 1</script><b id=injected>bold</b><img src=x onerror=\"window.__pwned=2\">"


def _enqueue(store: ReviewStore) -> list[str]:
    store.register_model_version("ckpt-200")
    # English text: the README screenshot must read on machines without CJK fonts (the store and
    # API tests cover Chinese text)
    out0 = ("LCR = HQLA / net cash outflows over 30 days = 1500 / 1200 = 125.00%, above the 100% floor. "
            "The bank's short-term liquidity is absolutely safe and we guarantee no risk will occur.")
    bad = out0.index("we guarantee no risk")
    items = [
        ("o-1", "Compute the liquidity coverage ratio to two decimals: HQLA 150bn, net cash outflows "
         "over the next 30 days 120bn.",
         "LCR = 1500 / 1200 = 125.00%, above the 100% regulatory floor.", out0,
         [{"start": bad, "end": bad + len("we guarantee no risk"), "rule_id": "sensitive_words",
           "severity": "error", "reason": "prohibited promise"},
          {"start": out0.index("absolutely safe"), "end": out0.index("absolutely safe") + 15,
           "rule_id": "uncertainty_attribution", "severity": "warning", "reason": "certainty wording"}]),
        ("o-2", "Compute LCR: HQLA 900, net outflows 1000.", "LCR = 90.00%", HOSTILE + "长" * 20_000, []),
        ("o-3", "Compute LCR: HQLA 800, net outflows 400.", "LCR = 200.00%", "LCR = 2.00%", []),
    ]
    for iid, prompt, ref, out, findings in items:
        store.enqueue(iid, "output", "calc_lcr", prompt=prompt, reference=ref, output=out, family="calc",
                      model_version="ckpt-200", findings=findings)
    return [i[0] for i in items]


def test_two_reviewers_and_an_adjudicator_in_chromium(tmp_path):
    t0 = time.monotonic()
    store = ReviewStore(tmp_path / "review.db")
    ids = _enqueue(store)
    before = store.rejection_rates(tasks=["calc_lcr"])["calc_lcr"]
    driver = chromium_driver(tmp_path / "profile")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,))

    def login(who: str) -> None:
        driver.delete_all_cookies()
        driver.get(srv.url + "/login")
        driver.find_element(By.ID, "token").send_keys(TOKENS[who])
        driver.find_element(By.ID, "login").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "me"), who))

    def current() -> str:
        return wait.until(ec.presence_of_element_located((By.ID, "item"))).get_attribute("data-id")

    def act(*steps) -> None:
        """Run clicks ('#id') and key presses (single characters), then wait for the next page."""
        old = driver.find_element(By.ID, "item").get_attribute("data-idem")  # unique per rendered page
        for s in steps:
            if s.startswith("#"):
                driver.find_element(By.CSS_SELECTOR, s).click()
            else:
                ActionChains(driver).send_keys(s).perform()
        # Poll the new page's marker; while the page is navigating the driver may answer with a
        # transient error, which is retried rather than failing the test.
        wait.until(lambda d: d.execute_script(
            "const e = document.getElementById('item'); return document.readyState === 'complete' && "
            "(e ? e.dataset.idem : 'empty')") not in (old, None, False))

    try:
        with ServerThread(create_app(store, registry(), reasons=REASONS)) as srv:
            login("alice")
            driver.get(srv.url + "/queue/output")
            assert current() == ids[0]
            marks = driver.find_elements(By.CSS_SELECTOR, "#output mark")
            assert [m.text for m in marks] == ["absolutely safe", "we guarantee no risk"]  # rule findings highlighted
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SCREENSHOT))
            act("a")                                 # alice approves o-1 by key
            assert current() == ids[1]
            # hostile output: shown as text, nothing injected, no script ran
            output_text = driver.find_element(By.ID, "output").text
            assert output_text.startswith(HOSTILE) and output_text.count("长") == 20_000
            assert driver.find_elements(By.ID, "injected") == []
            assert driver.execute_script("return window.__pwned === undefined")
            act("#reason-1", "#btn-reject")          # alice rejects o-2 by clicks
            act("r", "2")                            # alice rejects o-3: r arms, 2 picks the reason
            assert driver.find_elements(By.ID, "empty")

            login("bob")
            driver.get(srv.url + "/queue/output")
            assert current() == ids[0]
            act("1", "r")                            # bob rejects o-1: disagrees with alice
            act("n")                                 # bob skips o-2 ...
            assert current() == ids[2]
            act("r", "2")                            # ... rejects o-3 (agrees)
            assert current() == ids[1]               # the skipped item comes back
            act("#reason-1", "#btn-reject")          # and agrees on o-2

            login("judy")
            driver.get(srv.url + "/queue/adjudication")
            assert current() == ids[0]               # the disagreement reached the adjudicator
            earlier = driver.find_element(By.ID, "earlier").text
            assert "alice: approve" in earlier and "bob: reject" in earlier
            act("r", "1")                            # judy's verdict decides
            assert driver.find_elements(By.ID, "empty")
            driver.get(srv.url + "/")
            rate_cell = driver.find_element(By.CSS_SELECTOR, "#rejection tr[data-task=calc_lcr] td.rate").text
    finally:
        driver.quit()

    rows = store.verdicts_of()
    got = {(v.reviewer, v.item_id): (v.verdict, v.reason, v.role) for v in rows}
    assert got == {
        ("alice", "o-1"): ("approve", "", "review"), ("alice", "o-2"): ("reject", "arithmetic error", "review"),
        ("alice", "o-3"): ("reject", "wrong decimals", "review"), ("bob", "o-1"): ("reject", "arithmetic error", "review"),
        ("bob", "o-3"): ("reject", "wrong decimals", "review"), ("bob", "o-2"): ("reject", "arithmetic error", "review"),
        ("judy", "o-1"): ("reject", "arithmetic error", "adjudication"),
    }
    assert all(v.reviewer_kind == "human" and v.version == "ckpt-200" for v in rows)
    st = states(store)
    assert (st["o-1"].state, st["o-1"].decision) == ("adjudicated", "reject")
    assert st["o-2"].decision == st["o-3"].decision == "reject"
    after = store.rejection_rates(tasks=["calc_lcr"])["calc_lcr"]
    assert before == (0.1, 0) and after[1] == 7 and after[0] > before[0]
    assert rate_cell == f"{after[0]:.3f}"    # the status page shows the live rate
    assert SCREENSHOT.stat().st_size > 10_000
    elapsed = time.monotonic() - t0
    assert elapsed < 300, f"browser test took {elapsed:.1f}s (hang guard 300 s; ≈15 s quiet)"
    store.close()


@pytest.mark.parametrize("path", ["/", "/queue/output"])
def test_pages_without_login_redirect_to_login(tmp_path, path):
    from fastapi.testclient import TestClient

    store = ReviewStore(tmp_path / "r.db")
    with TestClient(create_app(store, registry())) as c:
        r = c.get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    store.close()
