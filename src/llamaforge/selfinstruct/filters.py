"""The filters a generated task must pass, each with the reason it is counted under.

Contract: :func:`instruction_problem` and :func:`instance_problem` return the first reason
(one of :data:`REASONS`) a text fails, or None; they need nothing but the text, so a test can
re-check every kept record with them. The pool checks (exact duplicate, near duplicate,
ROUGE-L above the threshold) need the pool: :class:`Pool` holds the seed and kept
instructions plus the pending ones, so two similar candidates in flight at the same time
cannot both be kept.

The keyword blacklist is the original self-instruct one (tasks a text model cannot do:
images, files, maps, audio, ...), with the Chinese words for the same things.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from llamaforge.selfinstruct.similarity import HAN_RANGES, Match, SimilarityIndex, rouge_tokens

REASONS = {
    "too_short": "instruction has fewer words than --min-words",
    "too_long": "instruction has more words than --max-words",
    "blacklisted": "instruction names something a text model cannot do (image, file, map, ...)",
    "starts_with_punctuation": "instruction starts with a punctuation mark",
    "write_a_program": 'instruction starts with "Write a program"',
    "wrong_language": "instruction is not in the run's language",
    "exact_duplicate": "instruction equals one already in the pool",
    "near_duplicate": "instruction equals one in the pool up to case, spacing and punctuation",
    "similar": "ROUGE-L with an instruction in the pool above the threshold",
    "request_failed": "the instance request failed after its retries (or was refused)",
    "no_instance": "no input/output could be read from the model's answer",
    "empty_output": "the instance's output is empty",
    "input_equals_output": "the instance's input equals its output",
    "output_wrong_language": "the instance's output is not in the run's language",
}

# fmt: off
BLACKLIST = {
    "en": (
        "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
        "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
    ),
    "zh": (
        "图片", "图像", "照片", "图表", "画", "绘制", "文件", "地图", "视频", "音频", "音乐", "流程图", "示意图",
    ),
}
# fmt: on
PROGRAM_STARTS = {"en": ("write a program",), "zh": ("编写一个程序", "写一个程序", "编写程序")}

_LATIN = "A-Za-z\u00c0-\u024f"
_LATIN_WORD = re.compile(f"[{_LATIN}]+")
_HAN_CHAR = re.compile(f"[{HAN_RANGES}]")
_OTHER_WORD = re.compile(f"[^\\W\\d_{_LATIN}{HAN_RANGES}]+")
# Share of the text's words (a Han character counts as one) that must be in the language.
MIN_LANGUAGE_SHARE = {"en": 0.6, "zh": 0.5}
# An English instruction of this many words or more has one of these words; Spanish, French
# or Italian in Latin script (which small models drift into) has none. Words shared with
# those languages (a, no, me, la, ...) are left out.
ENGLISH_CHECK_WORDS = 6
# fmt: off
ENGLISH_WORDS = frozenset({
    "the", "an", "of", "to", "in", "on", "for", "and", "or", "is", "are", "be", "it", "this",
    "that", "these", "those", "with", "from", "by", "as", "at", "what", "how", "why", "which",
    "who", "you", "your", "i", "my", "we", "each", "into", "about", "can", "do", "does", "if",
    "than", "they", "their", "will", "should", "would", "one", "two", "three", "give", "write",
    "make", "list", "name", "explain", "describe", "tell", "find", "use", "not",
})
# fmt: on


@dataclass(frozen=True)
class Limits:
    """Length bounds of an instruction, in ROUGE tokens (words; jieba words for Chinese)."""

    min_words: int = 3
    max_words: int = 150


def in_language(text: str, lang: str) -> bool:
    """Whether ``text`` is mostly ``lang`` (en: Latin-script words, zh: Han characters);
    text without any letters (numbers, symbols) passes."""
    latin = len(_LATIN_WORD.findall(text))
    han = len(_HAN_CHAR.findall(text))
    other = len(_OTHER_WORD.findall(text))
    total = latin + han + other
    if total == 0:
        return True
    return (han if lang == "zh" else latin) / total >= MIN_LANGUAGE_SHARE[lang]


def looks_english(instruction: str) -> bool:
    """False for a longer instruction in Latin script without a single common English word."""
    words = [w.lower() for w in _LATIN_WORD.findall(instruction)]
    return len(words) < ENGLISH_CHECK_WORDS or not ENGLISH_WORDS.isdisjoint(words)


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith(("P", "S"))


def blacklisted_word(instruction: str, lang: str) -> str | None:
    lowered = instruction.lower()
    for word in BLACKLIST[lang]:
        if lang == "zh" and word in lowered:
            return word
        if lang == "en" and re.search(rf"\b{re.escape(word)}\b", lowered):
            return word
    return None


def instruction_problem(instruction: str, lang: str, limits: Limits) -> str | None:
    """The first text-only filter ``instruction`` fails, or None."""
    text = instruction.strip()
    words = len(rouge_tokens(text))
    if words < limits.min_words:
        return "too_short"
    if words > limits.max_words:
        return "too_long"
    if blacklisted_word(text, lang) is not None:
        return "blacklisted"
    if _is_punctuation(text[0]):
        return "starts_with_punctuation"
    if text.lower().startswith(PROGRAM_STARTS[lang]):
        return "write_a_program"
    if not in_language(text, lang) or (lang == "en" and not looks_english(text)):
        return "wrong_language"
    return None


def instance_problem(input_text: str, output_text: str, lang: str) -> str | None:
    """The first filter an instance (input, output) fails, or None."""
    if not output_text.strip():
        return "empty_output"
    if input_text.strip() == output_text.strip():
        return "input_equals_output"
    if not in_language(output_text, lang):
        return "output_wrong_language"
    return None


def normalized(text: str) -> str:
    """``text`` without case, spacing or punctuation (NFKC first: full-width forms fold)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if c.isalnum())


class Pool:
    """Instructions new ones must not duplicate: seeds, kept and pending ones."""

    def __init__(self, threshold: float) -> None:
        self.index = SimilarityIndex(threshold)
        self._exact: set[str] = set()
        self._near: set[str] = set()
        self._entries: dict[str, int] = {}

    def problem(self, instruction: str) -> tuple[str, Match | None] | None:
        """``("exact_duplicate" | "near_duplicate" | "similar", match)`` or None."""
        text = instruction.strip()
        if text in self._exact:
            return "exact_duplicate", None
        if normalized(text) in self._near:
            return "near_duplicate", None
        match = self.index.find_similar(text)
        return ("similar", match) if match is not None else None

    def add(self, instruction: str) -> None:
        text = instruction.strip()
        self._exact.add(text)
        self._near.add(normalized(text))
        self._entries[text] = self.index.add(text)

    def withdraw(self, instruction: str) -> None:
        """Remove a pending instruction that was not kept after all (pending instructions
        passed :meth:`problem`, so nothing else in the pool shares their text)."""
        text = instruction.strip()
        self._exact.discard(text)
        self._near.discard(normalized(text))
        self.index.withdraw(self._entries.pop(text))
