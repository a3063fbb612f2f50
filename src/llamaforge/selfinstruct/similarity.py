"""ROUGE-L between an instruction and a pool of tens of thousands, Chinese included.

Contract: :func:`rouge_tokens` is the tokenizer — lowercased runs of letters and digits, and
Chinese runs split into words by jieba (``llamaforge.evaluation.metrics.segment``) — so that
Chinese is compared word by word; rouge-score's default tokenizer keeps only ``[a-z0-9]``
and scores any two Chinese sentences 0.0. :func:`rouge_l` is rouge-score's ROUGE-L F1
(``2·LCS / (len(a) + len(b))``) on those tokens.

:class:`SimilarityIndex` answers "is anything in the pool above the threshold?" without
scoring the whole pool: an inverted index (token id → entries and counts) gives each entry's
bag-of-words overlap with the query in a few vectorised additions, and since
``LCS ≤ overlap``, only entries with ``2·overlap / (len(q) + len(e)) > threshold`` get the
exact LCS, best bound first. Entries can be withdrawn (a pending instruction whose instance
failed) and stop matching.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llamaforge.evaluation.metrics import segment

HAN_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs (a regex class body)
_HAN = re.compile(f"[{HAN_RANGES}]")
_RUNS = re.compile(f"[{HAN_RANGES}]+|[^\\W_{HAN_RANGES}]+")
# The bound is a float; a hair of slack keeps an exact tie from being skipped by rounding.
_BOUND_SLACK = 1e-9


def rouge_tokens(text: str) -> list[str]:
    """Lowercased words of ``text``: runs of letters and digits, Chinese runs segmented by
    jieba. (jieba on Latin text is ~40x slower than a regular expression and splits it the
    same way; on ASCII text these are rouge-score's own default tokens.)"""
    tokens = []
    for run in _RUNS.findall(text.lower()):
        if _HAN.match(run):
            tokens += [t for t in segment(run) if any(c.isalnum() for c in t)]
        else:
            tokens.append(run)
    return tokens


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence of two token-id sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(a: Sequence[object], b: Sequence[object]) -> float:
    """ROUGE-L F1 of two token sequences (0.0 when either is empty), as rouge-score computes it."""
    if not a or not b:
        return 0.0
    vocabulary: dict[object, int] = {}
    ids_a = [vocabulary.setdefault(t, len(vocabulary)) for t in a]
    ids_b = [vocabulary.setdefault(t, len(vocabulary)) for t in b]
    return 2 * lcs_length(ids_a, ids_b) / (len(a) + len(b))


class _Growable:
    """An int32 array that appends in amortised O(1) (numpy arrays cannot grow in place)."""

    def __init__(self) -> None:
        self._data = np.zeros(4, dtype=np.int32)
        self.size = 0

    def append(self, value: int) -> None:
        if self.size == len(self._data):
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        self._data[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self._data[: self.size]


@dataclass(frozen=True)
class Match:
    """The pool entry a query was too similar to."""

    entry: int
    text: str
    score: float


class SimilarityIndex:
    """A pool of texts to test new ones against with ROUGE-L (see the module docstring)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._vocabulary: dict[str, int] = {}
        self._postings: dict[int, tuple[_Growable, _Growable]] = {}  # token → (entries, counts)
        self._tokens: list[list[int]] = []
        self._texts: list[str] = []
        self._lengths = _Growable()
        self._alive = _Growable()

    def __len__(self) -> int:
        return int(self._alive.view().sum())

    def _ids(self, text: str, grow: bool) -> list[int]:
        ids = []
        for token in rouge_tokens(text):
            if token not in self._vocabulary:
                if not grow:
                    ids.append(-1)  # matches nothing in the pool, still counts in the length
                    continue
                self._vocabulary[token] = len(self._vocabulary)
            ids.append(self._vocabulary[token])
        return ids

    def add(self, text: str) -> int:
        """Add ``text`` to the pool; returns its entry number (for :meth:`withdraw`)."""
        entry = len(self._texts)
        ids = self._ids(text, grow=True)
        for token, count in Counter(ids).items():
            entries, counts = self._postings.setdefault(token, (_Growable(), _Growable()))
            entries.append(entry)
            counts.append(count)
        self._tokens.append(ids)
        self._texts.append(text)
        self._lengths.append(len(ids))
        self._alive.append(1)
        return entry

    def withdraw(self, entry: int) -> None:
        """Stop matching against ``entry`` (its postings stay; the bound check skips it)."""
        self._alive.view()[entry] = 0

    def find_similar(self, text: str) -> Match | None:
        """An entry whose ROUGE-L with ``text`` is above the threshold (the most likely one
        first), or None when there is none."""
        query = self._ids(text, grow=False)
        if not query or not self._texts:
            return None
        overlap = np.zeros(len(self._texts), dtype=np.int32)
        for token, count in Counter(query).items():
            posting = self._postings.get(token)
            if posting is not None:
                entries, counts = posting
                overlap[entries.view()] += np.minimum(counts.view(), count)
        bound = 2 * overlap / (len(query) + self._lengths.view())
        possible = np.nonzero((bound > self.threshold - _BOUND_SLACK) & (self._alive.view() > 0))[0]
        for entry in possible[np.argsort(-bound[possible], kind="stable")]:
            tokens = self._tokens[entry]
            score = 2 * lcs_length(query, tokens) / (len(query) + len(tokens))
            if score > self.threshold:
                return Match(int(entry), self._texts[entry], score)
        return None
