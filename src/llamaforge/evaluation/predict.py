"""Generate answers for validation conversations and score them (predictions.jsonl + metrics)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llamaforge.config.sections import RunConfig
from llamaforge.data.formats import Conversation
from llamaforge.evaluation.metrics import score_predictions
from llamaforge.rundir import write_atomic

logger = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.jsonl"
METRICS_NAME = "predict_results.json"


def predict_and_score(
    model: Any, tokenizer: Any, conversations: Sequence[Conversation], cfg: RunConfig, run_dir: Path
) -> dict[str, float]:
    """Greedy answers to each conversation's last user turn, scored against its reference."""
    from llamaforge.inference.engine import GenerationEngine

    usable = [c for c in conversations if c.messages and c.messages[-1].role == "assistant"]
    prompts = [c.messages[:-1] for c in usable]
    references = [c.messages[-1].content for c in usable]
    engine = GenerationEngine(
        model, tokenizer, template=cfg.data.template or "chat", system_prompt=cfg.data.system_prompt
    )
    greedy = dataclasses.replace(cfg.generation, temperature=0.0, do_sample=False, num_beams=1)
    was_training = model.training
    model.eval()
    try:
        results = engine.generate(prompts, greedy)
    finally:
        model.train(was_training)
    predictions = [r.text for r in results]
    lines = [
        json.dumps(
            {"prompt": [m.content for m in p], "label": ref, "predict": pred}, ensure_ascii=False
        )
        for p, ref, pred in zip(prompts, references, predictions, strict=True)
    ]
    write_atomic(run_dir / PREDICTIONS_NAME, "".join(line + "\n" for line in lines))
    metrics = score_predictions(predictions, references)
    write_atomic(run_dir / METRICS_NAME, json.dumps(metrics, indent=2))
    logger.info("predictions on %d validation examples: %s", len(usable), metrics)
    return metrics
