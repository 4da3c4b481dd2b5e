"""IFEval-compatible instruction-following scorer with Chinese-aware counting.

``score_responses(prompts, responses, language="auto")`` scores IFEval-format prompt dicts
(``key``, ``prompt``, ``instruction_id_list``, ``kwargs``) and returns per-prompt strict/loose
verdicts plus the four IFEval aggregates. On English prompts it reproduces the original
checker's verdicts exactly; on Chinese prompts (``auto``) it counts CJK characters as words and
splits sentences on 。！？.
"""

from mixtune.eval.ifeval.checkers import INSTRUCTIONS, InstructionSpec, validate_kwargs
from mixtune.eval.ifeval.scoring import (
    AGGREGATE_KEYS,
    DEFAULT_SEED,
    IFEvalResult,
    PromptVerdict,
    aggregate,
    load_prompts,
    load_responses,
    loose_variants,
    resolve_language,
    score_files,
    score_prompt,
    score_responses,
    write_verdicts,
)

__all__ = [
    "AGGREGATE_KEYS",
    "DEFAULT_SEED",
    "INSTRUCTIONS",
    "IFEvalResult",
    "InstructionSpec",
    "PromptVerdict",
    "aggregate",
    "load_prompts",
    "load_responses",
    "loose_variants",
    "resolve_language",
    "score_files",
    "score_prompt",
    "score_responses",
    "validate_kwargs",
    "write_verdicts",
]
