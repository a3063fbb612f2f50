"""Score multiple-choice suites by the log-likelihood of each choice's letter.

Contract: a choice's log-likelihood is lm-evaluation-harness's: the context is encoded as
the tokenizer encodes text by default, the continuation ``" A"`` is what encoding
context + continuation adds after the context's tokens, and the model reads context +
continuation tokens. ``acc`` counts questions whose highest log-likelihood is the gold
letter's (the first on ties); ``acc_norm`` divides each by the choice's length in
characters first (lm-eval's definition; for one-letter choices it picks the same letter).
Overall figures weigh every question alike (lm-eval's ``weight_by_size``).

Cost: when each letter continuation is a single token (checked per question), the four
share the context, so one forward row per question scores them all from the logits at its
last position; otherwise each choice is a row of its own. Rows are batched (right padding:
with causal attention no scored position sees a pad, so no mask is needed), sorted by
length, and the subject's shared prefix (description + few-shot examples: the longest
common token prefix of its rows) is computed once and its KV cache reused by every batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from llamaforge.errors import ConfigError, DataError
from llamaforge.evaluation.prompts import (
    PROMPT_STYLES,
    PromptStyle,
    continuation,
    question_text,
    subject_prefix,
)
from llamaforge.evaluation.suites import LETTERS, Subject, Suite

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Row:
    """One forward row: ``tokens`` are read; target ``k`` is scored from the logits at
    positions ``start``, ``start + 1``, ... (so ``tokens`` go on with all but its last
    token)."""

    tokens: tuple[int, ...]
    start: int
    targets: tuple[tuple[int, ...], ...]
    question: int
    """Index of the question the row scores."""
    choices: tuple[int, ...]
    """Which choices of that question ``targets`` are."""


@dataclass(frozen=True)
class QuestionResult:
    subject: str
    id: str
    gold: str
    loglikelihoods: tuple[float, ...]
    """One per letter A-D."""
    pred: str
    pred_norm: str


@dataclass(frozen=True)
class SuiteResult:
    style: str
    shots: int
    split: str
    questions: tuple[QuestionResult, ...]
    seconds: float

    def subject_metrics(self) -> dict[str, dict[str, float]]:
        """acc, acc_norm and the count of questions per subject (in suite order)."""
        by_subject: dict[str, list[QuestionResult]] = {}
        for q in self.questions:
            by_subject.setdefault(q.subject, []).append(q)
        return {name: _metrics(results) for name, results in by_subject.items()}

    def metrics(self) -> dict[str, float]:
        """Overall acc / acc_norm (every question weighs the same), and ``acc_macro``: the
        mean of the subjects' acc."""
        subjects = self.subject_metrics()
        overall = _metrics(self.questions)
        overall["acc_macro"] = sum(s["acc"] for s in subjects.values()) / max(len(subjects), 1)
        overall["subjects"] = len(subjects)
        return overall


def _metrics(results: Sequence[QuestionResult]) -> dict[str, float]:
    n = len(results)
    return {
        "acc": sum(r.pred == r.gold for r in results) / n if n else 0.0,
        "acc_norm": sum(r.pred_norm == r.gold for r in results) / n if n else 0.0,
        "questions": n,
    }


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids as ``tokenizer.encode`` gives them by default (its own special tokens)."""
    return [list(ids) for ids in tokenizer(texts)["input_ids"]]


def _split_pair(context: str, tail: str) -> tuple[str, str]:
    """lm-eval moves the context's trailing whitespace into the continuation."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + tail


def subject_rows(
    tokenizer: Any, subject: Subject, style: PromptStyle, names: dict[str, str]
) -> list[Row]:
    """The forward rows scoring every question of ``subject`` (see the module docstring)."""
    prefix = subject_prefix(subject, style, names)
    contexts = [prefix + question_text(q, style) for q in subject.questions]
    pairs = [_split_pair(c, continuation(letter)) for c in contexts for letter in LETTERS]
    context_ids = _encode(tokenizer, [c for c, _ in pairs[:: len(LETTERS)]])
    whole_ids = _encode(tokenizer, [c + t for c, t in pairs])
    rows = []
    for index, ids in enumerate(context_ids):
        wholes = whole_ids[index * len(LETTERS) : (index + 1) * len(LETTERS)]
        targets = tuple(tuple(whole[len(ids) :]) for whole in wholes)
        if any(not t for t in targets):
            raise DataError(
                f"{subject.questions[index].source}: a choice adds no token after the "
                "prompt; the tokenizer cannot score it"
            )
        if all(len(t) == 1 for t in targets):
            rows.append(Row(tuple(ids), len(ids) - 1, targets, index, tuple(range(len(LETTERS)))))
            continue
        for choice, target in enumerate(targets):  # lm-eval reads context + continuation
            rows.append(Row((*ids, *target[:-1]), len(ids) - 1, (target,), index, (choice,)))
    return rows


def shared_prefix_length(rows: Sequence[Row]) -> int:
    """Tokens every row starts with, leaving each row at least its first scored position."""
    if not rows:
        return 0
    first = rows[0].tokens
    length = min(r.start for r in rows)
    for row in rows[1:]:
        n = 0
        limit = min(length, len(row.tokens))
        while n < limit and row.tokens[n] == first[n]:
            n += 1
        length = n
    return length


def _check_model(model: Any) -> None:
    config = getattr(model, "peft_config", None)
    if config and any(c.is_prompt_learning for c in config.values()):
        raise ConfigError(
            "eval scores LoRA-style adapters; a prefix/prompt-tuning adapter changes the "
            "sequence the model reads: evaluate a LoRA adapter or a merged model"
        )


def _prefix_cache(model: Any, prefix: Sequence[int]) -> Any:
    """The KV cache after reading ``prefix`` (batch of one), or None for an empty prefix."""
    if not prefix:
        return None
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([list(prefix)], device=model.device)
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def _expanded(model: Any, cache: Any, batch: int) -> Any:
    """A fresh cache holding ``cache``'s prefix for ``batch`` rows (views until written)."""
    if cache is None:
        return None
    from transformers import DynamicCache

    layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v, *_ in cache]
    return DynamicCache(layers, config=model.config)


@torch.no_grad()
def score_rows(
    model: Any,
    rows: Sequence[Row],
    *,
    prefix_length: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pad_token_id: int = 0,
    on_batch: Callable[[Sequence[Row]], None] | None = None,
) -> list[list[float]]:
    """Log-likelihood of every target of every row, reading the first ``prefix_length``
    tokens (shared by all rows) once."""
    _check_model(model)
    if not rows:
        return []
    prefix = rows[0].tokens[:prefix_length]
    cache = _prefix_cache(model, prefix)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    scores: list[list[float]] = [[] for _ in rows]
    for begin in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[begin : begin + batch_size]]
        tails = [r.tokens[prefix_length:] for r in batch]
        width = max(len(t) for t in tails)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        for n, tail in enumerate(tails):
            ids[n, : len(tail)] = torch.tensor(tail)
        # The positions whose logits are scored, per row (the same count for all rows).
        span = max(len(t) for r in batch for t in r.targets)
        keep = torch.tensor(
            [
                [min(r.start - prefix_length + j, len(tail) - 1) for j in range(span)]
                for r, tail in zip(batch, tails, strict=True)
            ]
        )
        out = model(
            input_ids=ids.to(model.device),  # [B, T]
            cache=_expanded(model, cache, len(batch)),
            use_cache=cache is not None,
            logits_to_keep=keep.to(model.device),  # [B, span]
        )
        logprobs = out.logits.float().log_softmax(-1)  # [B, span, V]
        for n, (index, row) in enumerate(
            zip(order[begin : begin + batch_size], batch, strict=True)
        ):
            scores[index] = [
                sum(logprobs[n, j, token].item() for j, token in enumerate(target))
                for target in row.targets
            ]
        if on_batch is not None:
            on_batch(batch)
    return scores


def _check_length(model: Any, rows: Sequence[Row], subject: Subject) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(rows, key=lambda r: len(r.tokens))
    if limit is not None and len(longest.tokens) > limit:
        raise DataError(
            f"{subject.questions[longest.question].source}: the prompt is "
            f"{len(longest.tokens)} tokens, more than the model's {limit} positions; "
            "evaluate with fewer --shots"
        )


def evaluate_subject(
    model: Any,
    tokenizer: Any,
    subject: Subject,
    style: PromptStyle,
    names: dict[str, str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
) -> list[QuestionResult]:
    """Every question of ``subject`` scored: log-likelihoods and predicted letters."""
    if not subject.questions:
        return []
    rows = subject_rows(tokenizer, subject, style, names)
    _check_length(model, rows, subject)
    rows_left = [0] * len(subject.questions)
    for row in rows:
        rows_left[row.question] += 1

    def advance(batch: Sequence[Row]) -> None:
        done = 0
        for row in batch:
            rows_left[row.question] -= 1
            done += rows_left[row.question] == 0
        if progress is not None:
            progress.update(done)

    scores = score_rows(
        model,
        rows,
        prefix_length=shared_prefix_length(rows),
        batch_size=batch_size,
        pad_token_id=tokenizer.pad_token_id or 0,
        on_batch=advance,
    )
    lls = [[math.nan] * len(LETTERS) for _ in subject.questions]
    for row, values in zip(rows, scores, strict=True):
        for choice, value in zip(row.choices, values, strict=True):
            lls[row.question][choice] = value
    lengths = [len(letter) for letter in LETTERS]  # lm-eval's acc_norm: the choice's characters
    return [
        QuestionResult(
            subject.name,
            q.id,
            q.answer,
            tuple(ll),
            LETTERS[_argmax(ll)],
            LETTERS[_argmax([v / n for v, n in zip(ll, lengths, strict=True)])],
        )
        for q, ll in zip(subject.questions, lls, strict=True)
    ]


def evaluate_suite(
    model: Any,
    tokenizer: Any,
    suite: Suite,
    style: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = True,
) -> SuiteResult:
    """Score every subject of ``suite`` prompted in ``style`` (a key of PROMPT_STYLES)."""
    prompt = PROMPT_STYLES[style]
    total = sum(len(s.questions) for s in suite.subjects)
    shots = len(suite.subjects[0].shots) if suite.subjects else 0
    started = time.perf_counter()
    results: list[QuestionResult] = []
    with tqdm(total=total, desc="eval", unit="q", disable=not show_progress) as bar:
        for subject in suite.subjects:
            bar.set_postfix_str(subject.name)
            results += evaluate_subject(
                model,
                tokenizer,
                subject,
                prompt,
                suite.subject_names,
                batch_size=batch_size,
                progress=bar,
            )
    return SuiteResult(style, shots, suite.split, tuple(results), time.perf_counter() - started)
