"""Held-out accuracy: greedy answers to problems with reference answers, scored like the
``exact_answer`` reward.

Contract: :func:`score_held_out` answers each conversation's last user turn greedily with
the generation engine (batched, the model in eval mode: no dropout), at most
``max_new_tokens`` tokens, and returns a :class:`HeldOutScore`: the share of answers whose
final number or option letter equals the reference's, and every answer. The online RL
stages score the same records before and after training (summary.json ``held_out``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamaforge.config.sections import GenerationConfig
from llamaforge.data import Conversation, Message
from llamaforge.errors import DataError
from llamaforge.inference.engine import GenerationEngine
from llamaforge.rewards.answers import answers_match, reference_answer

BATCH_SIZE = 32


@dataclass(frozen=True)
class HeldOutScore:
    accuracy: float
    answers: list[str]
    correct: list[bool]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "correct": sum(self.correct),
            "records": len(self.correct),
        }


def problems(records: Sequence[Any]) -> tuple[list[list[Message]], list[str]]:
    """(prompts, reference answers) of held-out records: conversations that end with the
    reference answer, which must hold a number or an option letter."""
    prompts, references = [], []
    for record in records:
        if not (isinstance(record, Conversation) and record.messages[-1].role == "assistant"):
            raise DataError(
                f"{getattr(record, 'source', record)}: a held-out record is a problem and its "
                "reference answer (e.g. alpaca instruction + output)"
            )
        reference = record.messages[-1].content
        if reference_answer(reference) is None:
            raise DataError(
                f"{record.source}: the reference answer {reference[:60]!r} holds no number "
                "or option letter to compare answers with"
            )
        prompts.append(list(record.messages[:-1]))
        references.append(reference)
    return prompts, references


def score_held_out(
    engine: GenerationEngine,
    prompts: Sequence[Sequence[Message]],
    references: Sequence[str],
    max_new_tokens: int,
) -> HeldOutScore:
    """Greedy answers to ``prompts`` scored against ``references`` (module docstring)."""
    model = engine.model
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, do_sample=False)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), BATCH_SIZE):
            batch = prompts[start : start + BATCH_SIZE]
            answers.extend(r.text for r in engine.generate(batch, greedy))
    finally:
        model.train(was_training)
    correct = [answers_match(a, r) for a, r in zip(answers, references, strict=True)]
    return HeldOutScore(sum(correct) / max(len(correct), 1), answers, correct)
