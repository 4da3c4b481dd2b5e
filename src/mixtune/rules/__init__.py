"""The rule engine: normalisation, safe expressions, built-in checks, versioned rule sets.

Contract used by data validation, evaluation, training (safety spans) and the gateway::

    rs = RuleSet.load("examples/finance_risk/rules.yaml")
    engine = RuleEngine(rs)
    engine.check(output, rule_ids=[...], input_text=..., sample_id=...) -> list[Failure]
"""

from mixtune.rules.checks import CHECKS
from mixtune.rules.engine import Failure, Rule, RuleEngine, RuleSet
from mixtune.rules.lexicon import uncertainty_grade, uncertainty_marks
from mixtune.rules.normalize import Normalized, normalize, normalize_text
from mixtune.rules.pii import find_pii, mask_pii
from mixtune.rules.safe_eval import SafeEvalError, SafeExpr, compile_expr, safe_eval

__all__ = [
    "CHECKS",
    "Failure",
    "Normalized",
    "Rule",
    "RuleEngine",
    "RuleSet",
    "SafeEvalError",
    "SafeExpr",
    "compile_expr",
    "find_pii",
    "mask_pii",
    "normalize",
    "normalize_text",
    "safe_eval",
    "uncertainty_grade",
    "uncertainty_marks",
]
