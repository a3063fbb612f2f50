"""Final answers of free-text completions: the number or option letter a text ends with.

Contract: :func:`final_answer` returns the answer a text gives, normalised, or None.

- An explicit answer statement wins, the last one in the text: ``The answer is 42``,
  ``answer: (B)``, ``#### 42`` (GSM8K), ``\\boxed{42}``, ``答案是 42`` / ``答案：B`` /
  ``答案为42``. After it comes a number or an option letter (A-J, with or without
  brackets), whichever the reference is.
- Without one, a number answer is the last number in the text, and an option answer the
  last bracketed letter ``(C)`` or a text that is only a letter (``C``, ``C.``).
- Numbers are compared as values: ``1,200`` = ``1200``, ``42.0`` = ``42``, ``-3``,
  full-width digits (``４２``) as their ASCII forms; letters case-insensitively.

:func:`answers_match` compares a completion's final answer with a reference text's
(``The answer is 7.`` or plain ``7``), extracting the reference the same way; it decides
by the reference's kind (number or letter).
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

_NUMBER = r"[-−]?\d[\d,]*(?:\.\d+)?"
_LETTER = r"\(?([A-J])\)?(?![A-Za-z])"  # capitals only: "the answer is a dog" is no option
# What introduces an explicit final answer; the answer follows it.
_MARKERS = (
    r"answer\s*(?:is|=|:)?\s*[:：]?\s*",
    r"####\s*",
    r"\\boxed\{\s*",
    r"答案\s*(?:是|为|：|:)?\s*[:：]?\s*",
)
_NUMBER_AFTER_MARKER = re.compile(rf"(?i:{'|'.join(_MARKERS)})\$?\s*({_NUMBER})")
_LETTER_AFTER_MARKER = re.compile(rf"(?i:{'|'.join(_MARKERS)}){_LETTER}")
_ANY_NUMBER = re.compile(_NUMBER)
_BRACKETED_LETTER = re.compile(r"\(([A-J])\)")
_ONLY_LETTER = re.compile(r"^\s*\(?([A-Ja-j])\)?\s*[.:。]?\s*$")


def normalise_number(text: str) -> str | None:
    """``1,200.50`` → ``1200.5``; None when it is not a number."""
    cleaned = text.replace(",", "").replace("−", "-").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.to_integral_value())
    return str(value.normalize())


def _plain(text: str) -> str:
    # NFKC turns full-width digits, letters and punctuation (４２, ：) into ASCII ones.
    return unicodedata.normalize("NFKC", text)


def final_number(text: str) -> str | None:
    """The number a text gives as its answer (see the module docstring), normalised."""
    text = _plain(text)
    explicit = _NUMBER_AFTER_MARKER.findall(text)
    candidates = explicit or _ANY_NUMBER.findall(text)
    for candidate in reversed(candidates):
        number = normalise_number(candidate)
        if number is not None:
            return number
    return None


def final_letter(text: str) -> str | None:
    """The option letter a text gives as its answer, upper case."""
    text = _plain(text)
    for pattern in (_LETTER_AFTER_MARKER, _BRACKETED_LETTER):
        found = pattern.findall(text)
        if found:
            return str(found[-1]).upper()
    alone = _ONLY_LETTER.match(text)
    return alone.group(1).upper() if alone else None


def reference_answer(reference: str) -> tuple[str, str] | None:
    """(kind, answer) of a reference text: ``("letter", "B")`` for an option answer (a
    letter alone, or after an answer statement), else ``("number", "42")``; None when it
    holds neither."""
    letter = final_letter(reference)
    number = final_number(reference)
    if letter is not None and (number is None or _ONLY_LETTER.match(_plain(reference))):
        return "letter", letter
    if number is not None:
        return "number", number
    return None


def final_answer(text: str, kind: str) -> str | None:
    """The final answer of ``text`` of ``kind`` (number | letter)."""
    return final_letter(text) if kind == "letter" else final_number(text)


def answers_match(completion: str, reference: str) -> bool:
    """Whether ``completion`` ends with the answer ``reference`` gives."""
    expected = reference_answer(reference)
    if expected is None:
        return False
    kind, answer = expected
    return final_answer(completion, kind) == answer
