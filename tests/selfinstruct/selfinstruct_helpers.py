"""Checks shared by the self-instruct tests (imported by name)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from llamaforge.selfinstruct.filters import (
    REASONS,
    Limits,
    instance_problem,
    instruction_problem,
    normalized,
)
from llamaforge.selfinstruct.seeds import read_seed_tasks, shipped_seed_path
from llamaforge.selfinstruct.similarity import rouge_tokens


class SegmentedTokenizer:
    """rouge-score's tokenizer interface over the self-instruct tokenizer (cached: the
    pairwise check tokenizes each text many times)."""

    @staticmethod
    @functools.cache
    def tokenize(text: str) -> list[str]:
        return rouge_tokens(text)


def recheck_records(records: list[Any], lang: str = "en", threshold: float = 0.7) -> None:
    """Every record is a clean Alpaca record that passes every filter again, on its own and
    against the seeds and every other record (ROUGE-L by rouge-score itself)."""
    seeds = [task.instruction for task in read_seed_tasks(shipped_seed_path(lang))]
    for record in records:
        assert set(record) == {"instruction", "input", "output"}, record
        assert all(isinstance(value, str) for value in record.values()), record
        assert instruction_problem(record["instruction"], lang, Limits()) is None, record
        assert instance_problem(record["input"], record["output"], lang) is None, record
    texts = seeds + [record["instruction"] for record in records]
    assert len(set(texts)) == len(texts), "exact duplicate instruction"
    assert len({normalized(t) for t in texts}) == len(texts), "near-duplicate instruction"
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=SegmentedTokenizer())
    for i in range(len(seeds), len(texts)):
        for j in range(i):
            score = scorer.score(texts[j], texts[i])["rougeL"].fmeasure
            assert score <= threshold, (texts[i], texts[j], score)


def check_statistics(stats: dict[str, Any], records: list[Any]) -> None:
    """The statistics add up and match the data file."""
    assert stats["kept"] == len(records)
    assert set(stats["dropped_by_reason"]) == set(REASONS)
    assert stats["dropped"] == sum(stats["dropped_by_reason"].values())
    assert stats["generated"] == stats["kept"] + stats["dropped"]
    assert stats["tokens"]["total"] == stats["tokens"]["prompt"] + stats["tokens"]["completion"]


def journal_kept(journal: Path) -> list[dict[str, str]]:
    """The records a journal holds as kept (read independently of the code under test)."""
    kept: list[dict[str, str]] = []
    if not journal.exists():
        return kept
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if event.get("type") == "kept":
            kept.append(event["record"])
    return kept
