"""IFEval-compatible instruction-following scorer with Chinese-aware counting.

``score_responses(prompts, responses, language="auto")`` scores IFEval-format prompt dicts
(``key``, ``prompt``, ``instruction_id_list``, ``kwargs``) and returns per-prompt strict/loose
verdicts plus the four IFEval aggregates. On English prompts it reproduces the original
checker's verdicts exactly, except those the original itself decides at random
(``random_in_reference``; ``deterministic_part`` drops them); on Chinese prompts (``auto``) it
counts CJK characters as words and splits sentences on 。！？.
"""

from mixtune.eval.ifeval.checkers import (
    INSTRUCTIONS,
    LANGDETECT_INSTRUCTIONS,
    InstructionSpec,
    random_in_reference,
    validate_kwargs,
)
from mixtune.eval.ifeval.scoring import (
    AGGREGATE_KEYS,
    DEFAULT_SEED,
    IFEvalResult,
    PromptVerdict,
    aggregate,
    deterministic_part,
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
    "LANGDETECT_INSTRUCTIONS",
    "IFEvalResult",
    "InstructionSpec",
    "PromptVerdict",
    "aggregate",
    "deterministic_part",
    "load_prompts",
    "load_responses",
    "loose_variants",
    "random_in_reference",
    "resolve_language",
    "score_files",
    "score_prompt",
    "score_responses",
    "validate_kwargs",
    "write_verdicts",
]
