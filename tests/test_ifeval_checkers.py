"""Unit behaviour of the IFEval checkers: English (original) and Chinese-aware semantics."""

from __future__ import annotations

import sys

import pytest

from mixtune.errors import DataError
from mixtune.eval.ifeval import (
    INSTRUCTIONS,
    loose_variants,
    resolve_language,
    score_prompt,
    score_responses,
)
from mixtune.eval.ifeval import text as T


def check(iid: str, response: str, lang: str = "en", **kw) -> bool:
    return INSTRUCTIONS[iid].check(response, kw, lang)


CASES = [
    # (instruction, kwargs, response, lang, expected)
    ("keywords:existence", {"keywords": ["risk", "loan"]}, "Credit RISK on a Loan.", "en", True),
    ("keywords:existence", {"keywords": ["risk", "loan"]}, "Credit risk only.", "en", False),
    (
        "keywords:frequency",
        {"keyword": "war", "frequency": 3, "relation": "at least"},
        "war, War, warm",
        "en",
        True,
    ),
    (
        "keywords:frequency",
        {"keyword": "war", "frequency": 3, "relation": "less than"},
        "war, War, warm",
        "en",
        False,
    ),
    ("keywords:forbidden_words", {"forbidden_words": ["rock"]}, "rocky road", "en", True),
    ("keywords:forbidden_words", {"forbidden_words": ["rock"]}, "Rock on.", "en", False),
    (
        "keywords:letter_frequency",
        {"letter": "t", "let_frequency": 3, "let_relation": "less than"},
        "TaTa",
        "en",
        True,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "t", "let_frequency": 2, "let_relation": "less than"},
        "TaTa",
        "en",
        False,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "at least"},
        "Mr. Li called. He left.",
        "en",
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "Mr. Li called. He left.",
        "en",
        False,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "一。二！三？",
        "zh",
        True,
    ),
    (
        "length_constraints:number_words",
        {"num_words": 4, "relation": "at least"},
        "one two-three four",
        "en",
        True,
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "at least"},
        "one two-three four",
        "en",
        False,
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\nb", "en", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\na\n***\nb\n***", "en", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\n***\nb", "en", False),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "summary"},
        'Intro.\n\n"Summary, in short.',
        "en",
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "summary"},
        "Intro.\n\nSummary.",
        "en",
        False,
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [address]", "en", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 3}, "[name] at [address]", "en", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body\nP. P. S. bye", "en", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body without it", "en", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* a\n* b\n- c\n**bold**", "en", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b\n- c", "en", False),
    ("detectable_format:constrained_response", {}, "Thinking... My answer is no.", "en", True),
    ("detectable_format:constrained_response", {}, "No.", "en", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "en", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and ** **", "en", False),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\na\nSECTION 2\nb",
        "en",
        True,
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 3},
        "SECTION 1\na\nSECTION 2\nb",
        "en",
        False,
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "en", True),
    ("detectable_format:json_format", {}, "{a: 1}", "en", False),
    ("detectable_format:title", {}, "<<Risk memo>>\nbody", "en", True),
    ("detectable_format:title", {}, "<< >>\nbody", "en", False),
    ("combination:two_responses", {}, "first\n******\nsecond", "en", True),
    ("combination:two_responses", {}, "same\n******\nsame", "en", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "en", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Hi!", "en", False),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        '"Done. Any other questions?"',
        "en",
        True,
    ),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye", "en", False),
    ("startend:quotation", {}, ' "quoted" ', "en", True),
    ("startend:quotation", {}, "\u201cquoted\u201d", "en", False),
    ("punctuation:no_comma", {}, "no commas here", "en", True),
    ("punctuation:no_comma", {}, "one, two", "en", False),
    ("change_case:english_lowercase", {}, "this is a plain english sentence about loans.", "en", True),
    ("change_case:english_lowercase", {}, "This is a plain english sentence.", "en", False),
    ("change_case:english_capital", {}, "THIS IS A PLAIN ENGLISH SENTENCE ABOUT LOANS.", "en", True),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "The USA and the U.K. agreed.",
        "en",
        True,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "The USA and the U.K. agreed.",
        "en",
        False,
    ),
    (
        "language:response_language",
        {"language": "de"},
        "Das ist eine kurze Antwort auf Deutsch über Kredite.",
        "en",
        True,
    ),
    (
        "language:response_language",
        {"language": "de"},
        "This is a short answer in English about loans.",
        "en",
        False,
    ),
    # Chinese-aware variants
    ("punctuation:no_comma", {}, "风险，控制", "zh", False),
    ("punctuation:no_comma", {}, "风险、控制", "zh", True),
    ("startend:quotation", {}, "\u201c回答\u201d", "zh", True),
    ("keywords:forbidden_words", {"forbidden_words": ["rock"]}, "这是rock音乐", "zh", False),
    ("keywords:forbidden_words", {"forbidden_words": ["rock"]}, "这是rocky音乐", "zh", True),
    ("keywords:forbidden_words", {"forbidden_words": ["问题"]}, "没有问题的", "zh", False),
    ("keywords:existence", {"keywords": ["C++"]}, "用c++写", "zh", True),
    (
        "keywords:letter_frequency",
        {"letter": "！", "let_frequency": 2, "let_relation": "at least"},
        "好!真好！",
        "zh",
        True,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "预", "let_frequency": 2, "let_relation": "at least"},
        "预报预测",
        "zh",
        True,
    ),
    ("detectable_format:constrained_response", {}, "我想了想。我的答案是否定的。", "zh", True),
    (
        "startend:end_checker",
        {"end_phrase": "还有什么我可以帮忙的吗？"},
        "好的。还有什么我可以帮忙的吗?",
        "zh",
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "总统"},
        "第一段。\n\n“总统今天说。",
        "zh",
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "总统"},
        "第一段。\n\n今天总统说。",
        "zh",
        False,
    ),
    ("language:response_language", {"language": "zh-cn"}, "這是一個關於金融風險控制的詳細回答。", "zh", True),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 1, "capital_relation": "less than"},
        "使用人工智能技术",
        "zh",
        True,
    ),
    # langdetect reads this short Chinese reply as Korean; the script says Chinese.
    (
        "language:response_language",
        {"language": "zh-cn"},
        "第一天我们去东京。第二天我们去京都看寺庙！",
        "zh",
        True,
    ),
    (
        "language:response_language",
        {"language": "zh-cn"},
        "今日は東京に行きます。ありがとうございます。",
        "zh",
        False,
    ),
]


@pytest.mark.parametrize("iid,kw,response,lang,expected", CASES)
def test_checker(iid, kw, response, lang, expected):
    assert check(iid, response, lang, **kw) is expected


def test_all_25_types_have_cases():
    assert {c[0] for c in CASES} == set(INSTRUCTIONS) and len(INSTRUCTIONS) == 25


def test_punkt_sentences_respect_abbreviations():
    """English Punkt parameters are read as literals from the wheel, never imported."""
    # A naive split on ". " gives 4; NLTK's English Punkt knows "Dr." and "U.S." abbreviations.
    text = "Dr. Smith met the U.S. team. They agreed. It rained."
    assert T.count_sentences(text, "en") == 3
    assert T.word_tokenize_en("Don't stop.") == ["Do", "n't", "stop", "."]
    assert "punkt" not in sys.modules
    assert "dr" in T.punkt_tokenizer()._params.abbrev_types


def test_chinese_counting():
    text = "信用风险是主要风险。银行需要风控！是吗？\n\n1. 第一点\n2. 第二点 3.5 亿元"
    assert T.count_sentences(text, "zh") == 4
    assert T.count_sentences(text, "en") < 4  # Punkt does not know 。！？
    assert T.count_words("风险控制 uses AI 3.5 亿", "zh") == 8
    assert T.count_words("风险控制 uses AI", "en") == 3


def test_loose_variants_and_loose_scoring():
    resp = "Sure, here it is:\n*hello world*\nHope this helps"
    variants = loose_variants(resp)
    assert len(variants) == 8 and variants[0] == resp and variants[4] == "*hello world*"
    assert variants[7] == "hello world"
    prompt = {
        "key": 7,
        "prompt": "p",
        "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
        "kwargs": [{}, {}],
    }
    v = score_prompt(prompt, 'Sure, here:\n"quoted answer"\nbye', language="en")
    assert v.strict_follow_list == [False, False]
    assert v.loose_follow_list == [True, True]  # dropping first/last lines rescues both
    empty = score_prompt(prompt, "   ", language="en")
    assert empty.strict_follow_list == [False, False] == empty.loose_follow_list


def test_language_resolution():
    zh = {"prompt": "写一篇文章", "kwargs": [{}]}
    assert resolve_language(zh) == "zh"
    # IFEval key 1675: an English prompt quoting Chinese stays English.
    en = 'Can you provide a translation for "今天天气很好" in German? Do not use "heute". Please use another word.'
    assert resolve_language({"prompt": en, "kwargs": [{}]}) == "en"
    assert resolve_language({"prompt": "Answer.", "kwargs": [{"language": "zh-cn"}]}) == "zh"
    assert resolve_language(zh, "en") == "en"
    with pytest.raises(DataError):
        resolve_language(zh, "fr")


def test_random_letter_fallback_is_seeded_per_instruction():
    prompt = {
        "key": 1,
        "prompt": "p",
        "instruction_id_list": ["keywords:letter_frequency"],
        "kwargs": [{"letter": "#", "let_frequency": 1, "let_relation": "at least"}],
    }
    resp = "abcdefghijklm"  # half the alphabet: the verdict depends on the drawn letter
    runs = {seed: score_prompt(prompt, resp, seed=seed).strict_follow_list[0] for seed in range(12)}
    assert set(runs.values()) == {True, False}
    assert all(score_prompt(prompt, resp, seed=s).strict_follow_list[0] == runs[s] for s in runs)
    # Chinese prompts count the requested character itself.
    zh = dict(
        prompt, prompt="写一条推文", kwargs=[{"letter": "#", "let_frequency": 2, "let_relation": "at least"}]
    )
    assert score_prompt(zh, "#风险 #控制").strict_follow_list == [True]


@pytest.mark.parametrize(
    "prompt,match",
    [
        ({"key": 1, "prompt": "p", "instruction_id_list": ["nope:x"], "kwargs": [{}]}, "unknown instruction"),
        (
            {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"x": 1}]},
            "unexpected kwargs",
        ),
        (
            {
                "key": 1,
                "prompt": "p",
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"num_words": 3}],
            },
            "missing kwargs",
        ),
        (
            {
                "key": 1,
                "prompt": "p",
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"num_words": 3, "relation": "more than"}],
            },
            "relation must be",
        ),
        (
            {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []},
            "one object per",
        ),
        ({"key": 1, "instruction_id_list": []}, "lacks 'prompt'"),
    ],
)
def test_invalid_prompts_raise_data_error(prompt, match):
    with pytest.raises(DataError, match=match):
        score_responses([prompt], ["resp"])


def test_none_kwargs_are_ignored_and_mapping_responses():
    prompt = {
        "key": 3,
        "prompt": "P?",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{"num_words": None}],
    }
    res = score_responses([prompt], {"P?": "fine"})
    assert res.verdicts[0].strict_follow_all and res.aggregates["prompt_level_strict"] == 1.0
    with pytest.raises(DataError, match="no response"):
        score_responses([prompt], {"other": "x"})
