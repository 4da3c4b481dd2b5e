"""Catastrophic regexes in rules.yaml are refused at load time (issue 14), safe ones still load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixtune.errors import ConfigError
from mixtune.rules import RuleEngine, RuleSet
from mixtune.rules.checks import NUM
from mixtune.rules.regex_safety import UnsafeRegex, check_regex_safety

FINANCE = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"


def _rules(tmp_path: Path, rules: list[dict]) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump({"version": "v", "rules": rules}, allow_unicode=True), encoding="utf-8")
    return p


def test_nested_quantifier_rule_is_refused_fast_naming_rule_and_file(tmp_path):
    # Unchecked, this rule made every output check on "a" * 27 + "b" take ~4 s (x4 per 2 more chars).
    path = _rules(tmp_path, [{"id": "evil", "kind": "regex", "params": {"pattern": "(a+)+$"}}])
    # Refused by static analysis: the pattern is never run (no timing needed to show it).
    with pytest.raises(ConfigError, match=r"rule 'evil': param 'pattern' regex '\(a\+\)\+\$' can take "
                                          r"exponential time: nested quantifiers") as exc:
        RuleSet.load(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("where", ["applies_when", "numeric_precision", "numeric_consistency"])
def test_every_user_regex_site_is_checked(tmp_path, where):
    rule = {
        "applies_when": {"id": "w", "kind": "length", "applies_when": {"output_regex": "(.*)*x"}},
        "numeric_precision": {"id": "w", "kind": "numeric_precision",
                              "params": {"patterns": [{"regex": "(a|a)*{num}", "decimals": 2}]}},
        "numeric_consistency": {"id": "w", "kind": "numeric_consistency",
                                "params": {"outputs": {"x": r"(\d{1,3})+%"}, "expr": "x > 0"}},
    }[where]
    with pytest.raises(ConfigError, match="rule 'w'.*exponential time"):
        RuleSet.load(_rules(tmp_path, [rule]))


@pytest.mark.parametrize("pattern", [
    r"(a+)+$", r"(a|a)*", r"(.*)*", r"(a*)*", r"(a+a)*b", r"(\s*\S+)*$", r"(a|ab)+c", r"(?:x+)+y",
    r"((a+)b?)+", r"(a{1,100}){1,100}", r"(.*,)*x", r"(a*b?)*", r"(\d{1,3})+$", r"(?:" + NUM + r"\s?)+",
])
def test_unsafe_patterns(pattern):
    with pytest.raises(UnsafeRegex):
        check_regex_safety(pattern)


@pytest.mark.parametrize("pattern", [
    r"(\d+,)*$", r"(a+b)*", r"(?:,\d{3})+", r"(a|b)*c", r"(?:ab)+", r"\w+@\w+\.com", r"a++", r"(?:a+)++",
    r"^.+是指.+。$", r"风险等级为[低中高]", NUM, r"[=为]\s*(?P<v>" + NUM + r")\s*%",
])
def test_safe_patterns_are_accepted_and_really_are_fast(pattern):
    check_regex_safety(pattern)
    # A hang guard, not a speed assertion: each search takes milliseconds, while a catastrophic
    # pattern on these 2,000-character texts would run for longer than the universe has existed.
    # A child process can be killed mid-search (the re engine ignores signals), so a loaded
    # machine cannot make this flaky: only a real blow-up reaches the 120 s limit.
    code = ("import re, sys\nrx = re.compile(sys.argv[1])\n"
            "for text in ('a' * 2000 + '!', '1,' * 1000 + 'x', 'ab' * 1000 + 'c'):\n    rx.search(text)\n")
    subprocess.run([sys.executable, "-c", code, pattern], check=True, timeout=120)


def test_shipped_finance_rules_still_load():
    assert RuleEngine(RuleSet.load(FINANCE / "rules.yaml")).check("风险等级为高。") is not None
