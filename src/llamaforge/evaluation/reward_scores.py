"""``llamaforge score``: a reward model's scores for a file of pairs or of responses.

Contract: the file is any dataset llamaforge reads (a path or a registry name). Preference
pairs (prompt/chosen/rejected, LLaMA-Factory ``ranking`` entries) are scored per side and
summarised as pairwise ``accuracy`` (share with score(chosen) > score(rejected)) and mean
``margin``; conversations ending with an answer (alpaca, sharegpt, openai, KTO feedback)
get one score each. Every sequence is built exactly as the reward stage built its
training pairs (data/preference.py: the template, the answer up to its end-of-turn
marker, ``cutoff_len``) and the score is read at its last token. Lines written to
``--output`` (JSONL, input order): ``{"source", "chosen_score", "rejected_score"}`` per
pair, ``{"source", "score"}`` per response.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamaforge.config.sections import RunConfig
from llamaforge.data import Conversation, Preference, get_template
from llamaforge.data.formats import Feedback, Record
from llamaforge.data.preference import check_free_of, cut_pair, encode_pairs
from llamaforge.data.registry import read_dataset, resolve_dataset
from llamaforge.errors import DataError
from llamaforge.models import load_model, run_dir_template

logger = logging.getLogger(__name__)

BATCH_SIZE = 8


@dataclass(frozen=True)
class PairScores:
    chosen: list[float]
    rejected: list[float]

    @property
    def accuracy(self) -> float:
        return sum(c > r for c, r in zip(self.chosen, self.rejected, strict=True)) / len(
            self.chosen
        )

    @property
    def margin(self) -> float:
        return sum(c - r for c, r in zip(self.chosen, self.rejected, strict=True)) / len(
            self.chosen
        )


def as_pair(record: Record) -> Preference:
    """A record to score: a pair as it is, a response as a pair of itself (chosen side)."""
    if isinstance(record, Preference):
        return record
    if isinstance(record, Feedback):
        return Preference(record.prompt, record.completion, record.completion, record.source)
    if isinstance(record, Conversation) and record.messages[-1].role == "assistant":
        answer = record.messages[-1].content
        return Preference(record.messages[:-1], answer, answer, record.source)
    raise DataError(
        f"{record.source}: nothing to score; give preference pairs or conversations that end "
        "with the answer"
    )


@torch.no_grad()
def score_sequences(model: Any, sequences: Sequence[list[int]], pad_token_id: int) -> list[float]:
    """One score per sequence, read at its last token; batches padded on the right."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = [0.0] * len(sequences)
    for start in range(0, len(order), BATCH_SIZE):
        batch = [sequences[i] for i in order[start : start + BATCH_SIZE]]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for i, value in zip(
            order[start : start + BATCH_SIZE], logits[:, 0].float().tolist(), strict=True
        ):
            scores[i] = value
    return scores


def score_pairs(
    model: Any, tokenizer: Any, records: Sequence[Preference], cfg: RunConfig
) -> PairScores:
    """Scores of each pair's chosen and rejected answers (see the module docstring)."""
    template = get_template(
        cfg.data.template or run_dir_template(cfg.model.model), cfg.data.templates_dir
    )
    pairs = encode_pairs(records, tokenizer, template, cfg.data.add_eos_token)
    cut = [cut_pair(p, cfg.data.cutoff_len) for p in pairs]
    chosen, rejected = [c for c, _ in cut], [r for _, r in cut]
    sources = [p.source for p in pairs]
    check_free_of(tokenizer.pad_token_id, chosen + rejected, sources + sources)
    return PairScores(
        score_sequences(model, chosen, tokenizer.pad_token_id),
        score_sequences(model, rejected, tokenizer.pad_token_id),
    )


def run_score(cfg: RunConfig, data: str, output: str | None) -> int:
    """Score ``data`` with the reward model ``cfg.model``; print the summary."""
    spec = resolve_dataset(data, cfg.data, Path.cwd())
    records = read_dataset(spec)
    if not records:
        raise DataError(f"{data}: no records to score")
    pairs = [as_pair(r) for r in records]
    is_pairs = isinstance(records[0], Preference)
    model, tokenizer = load_model(cfg.model, head="score")
    scores = score_pairs(model, tokenizer, pairs, cfg)
    lines: list[dict[str, Any]]
    if is_pairs:
        lines = [
            {"source": p.source, "chosen_score": c, "rejected_score": r}
            for p, c, r in zip(pairs, scores.chosen, scores.rejected, strict=True)
        ]
        summary = (
            f"{len(pairs)} pairs: accuracy {scores.accuracy:.4f}, mean margin {scores.margin:.4f}"
        )
    else:
        lines = [
            {"source": p.source, "score": s} for p, s in zip(pairs, scores.chosen, strict=True)
        ]
        summary = f"{len(pairs)} responses: mean score {sum(scores.chosen) / len(pairs):.4f}"
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    elif not is_pairs:
        sys.stdout.write(text)
    sys.stdout.write(summary + "\n")
    return 0
