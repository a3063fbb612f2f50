"""Batched, prefix-cached letter scoring equals a direct, unbatched computation of each
choice's log-likelihood (context + continuation, as lm-evaluation-harness scores it)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from eval_helpers import SUITE_EN, SUITE_ZH, check_against_direct, direct_loglikelihoods

from llamaforge.cli import main
from llamaforge.errors import DataError
from llamaforge.evaluation.multiple_choice import (
    evaluate_subject,
    evaluate_suite,
    shared_prefix_length,
    subject_rows,
)
from llamaforge.evaluation.prompts import PROMPT_STYLES, question_text, subject_prefix
from llamaforge.evaluation.suites import LETTERS, read_suite


@pytest.fixture(scope="module")
def varied_llama(make_tiny_llama):
    """Large random weights: the four letters get clearly different log-likelihoods."""
    return make_tiny_llama(initializer_range=0.5)


@pytest.mark.parametrize(
    ("path", "style", "shots", "limit"), [(SUITE_ZH, "cmmlu", 2, 7), (SUITE_EN, "mmlu", 1, 3)]
)
def test_batched_cached_scores_equal_direct_ones(
    varied_llama, smollm2_tokenizer, path, style, shots, limit
):
    suite = read_suite(path, shots=shots, limit=limit)  # 3 subjects: 21 and 9 questions
    result = evaluate_suite(
        varied_llama, smollm2_tokenizer, suite, style, batch_size=3, show_progress=False
    )
    count = 3 * limit
    assert check_against_direct(varied_llama, smollm2_tokenizer, suite, style, result) == count
    # not all alike: a constant prediction would hide a mixed-up row order
    assert len({r.pred for r in result.questions}) > 1
    metrics = result.metrics()
    assert metrics["questions"] == count
    assert metrics["acc"] == sum(r.pred == r.gold for r in result.questions) / count


def test_the_subject_prefix_is_shared_and_one_row_scores_four_letters(smollm2_tokenizer):
    suite = read_suite(SUITE_ZH, shots=3)
    subject = suite.subjects[0]
    rows = subject_rows(smollm2_tokenizer, subject, PROMPT_STYLES["cmmlu"], suite.subject_names)
    assert len(rows) == len(subject.questions)
    assert all(len(r.targets) == 4 and all(len(t) == 1 for t in r.targets) for r in rows)
    prefix = subject_prefix(subject, PROMPT_STYLES["cmmlu"], suite.subject_names)
    prefix_tokens = len(smollm2_tokenizer(prefix)["input_ids"])
    # the description and 3 examples (less a token merged across the boundary, at most)
    assert shared_prefix_length(rows) >= prefix_tokens - 1


def test_multi_token_continuations_fall_back_to_one_row_per_choice(varied_llama, smollm2_tokenizer):
    # A cue ending in a space: lm-eval moves it into the continuation ("  A"), which is
    # two tokens here, so each choice needs its own row.
    style = dataclasses.replace(PROMPT_STYLES["mmlu"], cue="Answer: ")
    suite = read_suite(SUITE_EN, shots=1, limit=3)
    subject = suite.subjects[0]
    rows = subject_rows(smollm2_tokenizer, subject, style, {})
    assert len(rows) == 4 * len(subject.questions)
    assert all(len(r.targets) == 1 and len(r.targets[0]) == 2 for r in rows)
    results = evaluate_subject(varied_llama, smollm2_tokenizer, subject, style, {}, batch_size=5)
    prefix = subject_prefix(subject, style, {})
    for question, got in zip(subject.questions, results, strict=True):
        context = (prefix + question_text(question, style)).rstrip()
        expected = direct_loglikelihoods(varied_llama, smollm2_tokenizer, context, "  ")
        assert got.loglikelihoods == pytest.approx(expected, abs=1e-4)


def test_eval_command_writes_results_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["--suite", str(SUITE_EN), "--shots", "1", "--limit", "2", "--batch-size", "4"]
    code = main(["eval", "--model", str(tiny_model_dir), *args, "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["kind"] == "multiple_choice" and results["shots"] == 1
    assert results["prompt_style"] == "mmlu" and results["split"] == "test"
    assert results["model"]["model"] == str(tiny_model_dir)
    questions = results["questions"]
    assert [(q["subject"], q["id"]) for q in questions] == [
        (s, i) for s in ("basic_science", "elementary_mathematics", "world_geography") for i in "01"
    ]
    assert [q["gold"] for q in questions] == ["B", "C", "B", "C", "A", "C"]
    for q in questions:
        lls = q["loglikelihoods"]
        assert len(lls) == 4 and q["pred"] == LETTERS[lls.index(max(lls))]
    correct = sum(q["pred"] == q["gold"] for q in questions)
    assert results["metrics"]["acc"] == pytest.approx(correct / 6)
    assert results["metrics"]["questions"] == 6 and results["metrics"]["subjects"] == 3
    assert set(results["subjects"]) == {
        "basic_science",
        "elementary_mathematics",
        "world_geography",
    }
    assert f"acc {correct / 6:.4f}" in printed


def test_prompts_longer_than_the_model_are_refused(make_tiny_llama, smollm2_tokenizer):
    model = make_tiny_llama(max_positions=64)
    suite = read_suite(SUITE_EN, shots=3, subjects=["world_geography"])
    with pytest.raises(DataError, match=r"world_geography_test\.csv:\d+: the prompt is \d+ tok"):
        evaluate_suite(model, smollm2_tokenizer, suite, "mmlu", show_progress=False)
