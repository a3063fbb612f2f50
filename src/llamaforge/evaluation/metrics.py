"""BLEU-4 and ROUGE-1/2/L for generated answers, Chinese included.

rouge-score's default tokenizer drops non-ASCII characters (Chinese scores 0.0), so
every text is segmented into words with jieba first (works offline), as LLaMA-Factory
does; English text splits on whitespace and punctuation the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def segment(text: str) -> list[str]:
    """Words of `text`: jieba for CJK, whitespace/punctuation-separated tokens otherwise."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [token for token in jieba.lcut(text.strip()) if token.strip()]


class _JiebaTokenizer:
    """The tokenizer interface rouge-score expects."""

    def tokenize(self, text: str) -> list[str]:
        return [t.lower() for t in segment(text)]


def score_predictions(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean sentence-level BLEU-4 and ROUGE-1/2/L F1, each in 0–100."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize="none", effective_order=True)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_JiebaTokenizer())
    totals = {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        hyp, ref = " ".join(segment(prediction)), " ".join(segment(reference))
        totals["bleu-4"] += bleu.sentence_score(hyp, [ref]).score if hyp and ref else 0.0
        rouge = scorer.score(reference, prediction)
        totals["rouge-1"] += 100 * rouge["rouge1"].fmeasure
        totals["rouge-2"] += 100 * rouge["rouge2"].fmeasure
        totals["rouge-l"] += 100 * rouge["rougeL"].fmeasure
    return {k: round(v / len(predictions), 4) for k, v in totals.items()}
