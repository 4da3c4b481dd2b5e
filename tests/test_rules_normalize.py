"""Normalisation (NFKC, width folding, zero-width removal) with spans in original coordinates,
and PII detection/masking built on it."""

from __future__ import annotations

import random
import unicodedata

import pytest

from mixtune.rules import find_pii, mask_pii, normalize, normalize_text


def test_fast_paths_leave_text_untouched():
    for text in ["plain ascii = 1.5%", "流动性覆盖率=150.00%。", ""]:
        nt = normalize(text)
        assert nt.text == text and nt.identity
        assert nt.span_to_orig(1, 3) == (1, 3)


def test_folds_full_width_and_removes_zero_width():
    text = "流动性覆盖率＝１５０.００％，\u200b手机\ufeff号\u2060"
    assert normalize_text(text) == "流动性覆盖率=150.00%,手机号"


def test_spans_map_back_to_original_coordinates():
    text = "前缀\u200b\u200b结果＝１５０.００％，后缀"
    nt = normalize(text)
    i = nt.text.index("150.00%")
    s, e = nt.span_to_orig(i, i + len("150.00%"))
    assert text[s:e] == "１５０.００％"
    j = nt.text.index("50")  # a span starting inside a run of changed characters
    assert text[slice(*nt.span_to_orig(j, j + 2))] == "５０"
    k = nt.text.index("结果")  # unchanged text after deleted zero-width characters
    assert text[slice(*nt.span_to_orig(k, k + 2))] == "结果"
    assert nt.span_to_orig(0, 2) == (0, 2)


def test_combining_marks_and_astral_characters():
    text = "e\u0301 𝐀𝐁 ｃ"
    nt = normalize(text)
    assert nt.text == unicodedata.normalize("NFKC", text) == "é AB c"
    assert text[slice(*nt.span_to_orig(0, 1))] == "e\u0301"
    assert text[slice(*nt.span_to_orig(2, 4))] == "𝐀𝐁"


def test_random_texts_match_whole_string_nfkc_and_spans_cover_same_content():
    rng = random.Random(7)
    alphabet = list("abc12 ，：％（）＝流动性率\u200b\u200c\ufeff\u2060１２ＡＢ\u3000。") + ["e\u0301"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        nt = normalize(text)
        expected = unicodedata.normalize("NFKC", text)
        for zw in "\u200b\u200c\u200d\ufeff\u2060":
            expected = expected.replace(zw, "")
        assert nt.text == expected
        for _ in range(5):
            if not nt.text:
                break
            a = rng.randrange(len(nt.text))
            b = rng.randint(a + 1, len(nt.text))
            s, e = nt.span_to_orig(a, b)
            assert 0 <= s <= e <= len(text)
            # the original span, normalised, contains exactly the normalised span's content
            assert nt.text[a:b] in normalize_text(text[s:e])


def test_find_pii_kinds_and_original_spans():
    text = "身份证１１０１０１１９９００３０７１２３４，手机138\u200b0013\u20608000，卡号6222 0212 3456 7890"
    hits = find_pii(text)
    assert [k for *_, k in hits] == ["id_card", "mobile", "bank_card"]
    assert [text[s:e] for s, e, _ in hits] == [
        "１１０１０１１９９００３０７１２３４", "138\u200b0013\u20608000", "6222 0212 3456 7890"]


@pytest.mark.parametrize(
    "text",
    [
        "金额为1234567890123456.78元",  # a decimal amount, not a card
        "编号A13800138000",  # glued to a letter
        "138****8000 与 110***********1234",  # already masked
        "流动性覆盖率=150.00%",
        "电话021-12345678",
    ],
)
def test_find_pii_ignores_non_identifiers(text):
    assert find_pii(text) == []


def test_mask_pii_keeps_first3_last4_and_everything_else():
    text = "客户张先生，身份证号11010119900307123X，手机１３８００１３８０００，卡号6222021234567890123。"
    masked = mask_pii(text)
    assert masked == "客户张先生，身份证号110***********123X，手机138****8000，卡号622************0123。"
    assert find_pii(masked) == []
    assert mask_pii("没有个人信息。") == "没有个人信息。"


def test_exhaustive_short_texts_over_tricky_alphabet():
    """Every text of ≤3 symbols mixing marks, zero-width, expansions, astral and full-width."""
    import itertools

    alphabet = ["9", "=", "（", "\u200b", "\u0301", "𝐀", "１", "，", "㎡", "e", "X"]
    for n in (1, 2, 3):
        for combo in itertools.product(alphabet, repeat=n):
            text = "".join(combo)
            nt = normalize(text)
            assert nt.text == unicodedata.normalize("NFKC", text).replace("\u200b", ""), repr(text)
            for a in range(len(nt.text)):
                for b in range(a + 1, len(nt.text) + 1):
                    s, e = nt.span_to_orig(a, b)
                    assert 0 <= s <= e <= len(text) and nt.text[a:b] in normalize_text(text[s:e])
