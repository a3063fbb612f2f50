"""The bundled SmolLM2-135M on 18 questions of the project's Chinese suite: batched,
prefix-cached letter scores equal the direct computation and pick the same letters."""

from __future__ import annotations

import pytest
from eval_helpers import SUITE_ZH, check_against_direct

from llamaforge.config.sections import ModelConfig
from llamaforge.evaluation.multiple_choice import evaluate_suite
from llamaforge.evaluation.suites import read_suite
from llamaforge.models import load_model


@pytest.mark.slow
def test_real_model_scores_equal_direct_computation(smollm2_cache):
    model, tokenizer = load_model(ModelConfig(model="smollm2-135m"))
    suite = read_suite(SUITE_ZH, shots=1, limit=6)
    result = evaluate_suite(model, tokenizer, suite, "cmmlu", batch_size=4, show_progress=False)
    assert check_against_direct(model, tokenizer, suite, "cmmlu", result) == 18
    # a real model is sure of some answers and unsure of others: the letters differ
    assert len({r.pred for r in result.questions}) > 1
