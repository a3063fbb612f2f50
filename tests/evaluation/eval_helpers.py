"""The direct reference the evaluation tests compare against: each choice scored alone, one
unpadded forward over context + continuation, no cache, no batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llamaforge.evaluation.prompts import PROMPT_STYLES, question_text, subject_prefix
from llamaforge.evaluation.suites import LETTERS, Suite

ROOT = Path(__file__).resolve().parents[2]
SUITE_EN = ROOT / "examples" / "mc_suite" / "en"
SUITE_ZH = ROOT / "examples" / "mc_suite" / "zh"


@torch.no_grad()
def choice_loglikelihood(model, context_ids: list[int], target: list[int]) -> float:
    """log p(target | context); the LM head applied only where target tokens are predicted."""
    hidden = model.model(torch.tensor([context_ids + target])).last_hidden_state[0]
    start = len(context_ids) - 1
    logprobs = model.lm_head(hidden[start : start + len(target)]).float().log_softmax(-1)
    return sum(logprobs[j, t].item() for j, t in enumerate(target))


def direct_loglikelihoods(model, tokenizer, context: str, delimiter: str = " ") -> list[float]:
    """Each letter's log-likelihood, tokenized as lm-eval does (context + continuation)."""
    context_ids = tokenizer(context)["input_ids"]
    values = []
    for letter in LETTERS:
        whole = tokenizer(context + delimiter + letter)["input_ids"]
        values.append(choice_loglikelihood(model, context_ids, whole[len(context_ids) :]))
    return values


def check_against_direct(model, tokenizer, suite: Suite, style: str, result) -> int:
    """Assert every question's four log-likelihoods (1e-4) and its letter; the count."""
    prompt = PROMPT_STYLES[style]
    by_key = {(r.subject, r.id): r for r in result.questions}
    checked = 0
    for subject in suite.subjects:
        prefix = subject_prefix(subject, prompt, suite.subject_names)
        for question in subject.questions:
            context = prefix + question_text(question, prompt)
            expected = direct_loglikelihoods(model, tokenizer, context)
            got = by_key[(subject.name, question.id)]
            assert got.loglikelihoods == pytest.approx(expected, abs=1e-4)
            assert got.pred == LETTERS[expected.index(max(expected))]
            checked += 1
    return checked
