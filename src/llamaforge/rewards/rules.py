"""The rule rewards the project ships: exact answer, format, length.

Each is a function in TRL's reward calling convention, ``f(prompts=, completions=,
completion_ids=, **columns) -> list[float]``, one value per completion; ``columns`` are
the dataset's columns per completion (``answer``: the reference answer text).

- ``exact_answer``: 1.0 when the completion's final answer equals the reference's
  (:mod:`llamaforge.rewards.answers`: the last number, or option letter, after an explicit
  "The answer is" / "答案是" / "####" when there is one), else 0.0.
- ``format``: 1.0 when a regular expression occurs in the completion (``re.search``),
  else 0.0; by default an explicit final-answer statement.
- ``length``: 1.0 for a completion of ``min``..``max`` tokens; below, ``n / min``; above,
  falling linearly to 0.0 at ``2 × max``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from llamaforge.rewards.answers import answers_match

DEFAULT_FORMAT = r"(?i:answer\s*(?:is|:)|答案\s*(?:是|为|：|:)|####)\s*\(?[-−\w]"
"""An explicit final answer: "The answer is 42", "Answer: (B)", "答案是 42", "#### 42"."""


def exact_answer(completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """1.0 per completion whose final answer equals its reference ``answer``'s, else 0.0."""
    return [float(answers_match(c, a)) for c, a in zip(completions, answer, strict=True)]


class FormatReward:
    """1.0 per completion in which ``pattern`` occurs, else 0.0."""

    __name__ = "format"

    def __init__(self, pattern: str | None = None) -> None:
        self.pattern = re.compile(pattern if pattern is not None else DEFAULT_FORMAT)

    def __call__(self, completions: Sequence[str], **_: Any) -> list[float]:
        return [float(self.pattern.search(c) is not None) for c in completions]


def band_score(tokens: int, low: int, high: int) -> float:
    """1.0 inside [low, high]; ``tokens / low`` below it; 1 → 0 from ``high`` to ``2 × high``."""
    if tokens < low:
        return tokens / low
    if tokens <= high:
        return 1.0
    return max(0.0, 1.0 - (tokens - high) / high)


class LengthReward:
    """:func:`band_score` of each completion's token count (its end-of-turn token included)."""

    __name__ = "length"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __call__(self, completion_ids: Sequence[Sequence[int]], **_: Any) -> list[float]:
        return [band_score(len(ids), self.low, self.high) for ids in completion_ids]
