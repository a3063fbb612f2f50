"""Chinese answers are scored with word-segmented ROUGE/BLEU (rouge-score alone gives 0.0),
and `predict_with_generate` writes predictions.jsonl + predict_results.json after training."""

from __future__ import annotations

import json

import pytest
from training_helpers import logged_losses, tiny_config, write_alpaca

from llamaforge.evaluation.metrics import score_predictions, segment
from llamaforge.methods.sft import run_sft


def test_chinese_scores_match_hand_computed_values():
    # jieba: 我/爱/北京/天安门 vs 我/爱/北京.
    assert segment("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    scores = score_predictions(["我爱北京天安门"], ["我爱北京"])
    # ROUGE-1: 3 shared words, P = 3/4, R = 3/3 → F = 2·(3/4)/(3/4 + 1) = 6/7.
    assert scores["rouge-1"] == pytest.approx(100 * 6 / 7, abs=1e-4)
    # ROUGE-2: bigrams 我爱, 爱北京 shared; P = 2/3, R = 2/2 → F = 0.8.
    assert scores["rouge-2"] == pytest.approx(80.0, abs=1e-4)
    # ROUGE-L: longest common subsequence 我 爱 北京 (3 words) → same as ROUGE-1.
    assert scores["rouge-l"] == pytest.approx(100 * 6 / 7, abs=1e-4)
    # BLEU-4 (sacrebleu, exp smoothing): n-gram precisions 3/4, 2/3, 1/2 and, for the one
    # 4-gram that misses, 1/(2·1); no brevity penalty (4 words ≥ 3) → (75·66.7·50·50)^(1/4).
    assert scores["bleu-4"] == pytest.approx((75 * (200 / 3) * 50 * 50) ** 0.25, abs=1e-4)


def test_scores_average_over_examples_and_handle_english():
    scores = score_predictions(
        ["我爱北京天安门", "The cat sat."], ["我爱北京", "The cat sat on the mat."]
    )
    # English: the, cat, sat, . shared; P = 4/4, R = 4/7 → F = 8/11.
    assert scores["rouge-1"] == pytest.approx(100 * (6 / 7 + 8 / 11) / 2, abs=1e-4)
    assert score_predictions(["完全不同"], ["我爱北京"])["rouge-1"] == 0.0
    assert score_predictions(["我爱北京"], ["我爱北京"]) == {
        "bleu-4": 100.0,
        "rouge-1": 100.0,
        "rouge-2": 100.0,
        "rouge-l": 100.0,
    }


@pytest.mark.slow
def test_chinese_record_trains_and_its_prediction_is_scored(tiny_model_dir, tmp_path):
    record = {"instruction": "中国的首都是哪里？", "input": "", "output": "北京是中国的首都。"}
    # Five copies: val_set_size=1 holds one out, the model overfits the other four.
    data = write_alpaca(tmp_path / "zh.json", [record] * 5)
    run_dir = run_sft(
        tiny_config(
            tiny_model_dir,
            data,
            tmp_path / "run",
            finetuning="full",
            max_steps=60,
            save_steps=1000,
            val_set_size=1,
            predict_with_generate=True,
            max_new_tokens=16,
        )
    )
    losses = logged_losses(run_dir)
    assert losses[0] > 10 and losses[-1] < 0.05  # memorised

    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"prompt": [record["instruction"]], "label": record["output"], "predict": record["output"]}
    ]
    metrics = json.loads((run_dir / "predict_results.json").read_text(encoding="utf-8"))
    assert metrics == {"bleu-4": 100.0, "rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0}
