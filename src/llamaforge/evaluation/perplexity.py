"""Perplexity of a model on a text or dataset file, per token and per character.

Contract: what is scored is the text a model would be trained on.

- Text records (``.txt`` blocks, JSONL ``text``): every token of the document's text, each
  given everything before it in its document; the first given the tokenizer's BOS (or EOS
  when it adds no BOS, as lm-evaluation-harness does). Characters: the document's.
- Conversations (alpaca, sharegpt, openai ...): the answer tokens SFT trains (the
  template's end-of-turn marker included), given the prompt as the template renders it.
  Characters: the answers'.

A sequence longer than ``block_size`` tokens is read in windows of ``block_size`` that
advance by half of it; each token is scored once, by the first window that holds it with
context, so every scored token sees at least ``block_size / 2`` tokens before it (or its
whole document). ``token_perplexity`` is exp(NLL / tokens) — exp of the eval loss;
``char_perplexity`` exp(NLL / characters) and ``bits_per_char`` NLL / characters / ln 2
compare models whose tokenizers cut the same text differently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from llamaforge.data.formats import Conversation, Record, TextDocument
from llamaforge.data.tokenization import (
    IGNORE_INDEX,
    encode_texts,
    special_prefix,
    tokenize_conversation,
)
from llamaforge.errors import DataError

DEFAULT_BLOCK_SIZE = 1024
TOKENS_PER_FORWARD = 2048
"""Scored positions per forward: bounds the [positions, vocabulary] logits in memory."""


@dataclass(frozen=True)
class ScoredText:
    """Token ids read by the model and which of them are scored (each from those before)."""

    ids: tuple[int, ...]
    scored: tuple[bool, ...]
    characters: int
    source: str


@dataclass(frozen=True)
class TextScore:
    source: str
    nll: float
    """Summed negative log-likelihood of the scored tokens, in nats."""
    tokens: int
    characters: int


@dataclass(frozen=True)
class PerplexityResult:
    documents: tuple[TextScore, ...]
    block_size: int
    seconds: float

    @property
    def nll(self) -> float:
        return sum(d.nll for d in self.documents)

    @property
    def tokens(self) -> int:
        return sum(d.tokens for d in self.documents)

    @property
    def characters(self) -> int:
        return sum(d.characters for d in self.documents)

    def metrics(self) -> dict[str, float]:
        nll, tokens, characters = self.nll, self.tokens, self.characters
        return {
            "token_perplexity": math.exp(nll / tokens),
            "char_perplexity": math.exp(nll / characters),
            "bits_per_char": nll / characters / math.log(2),
            "nll_per_token": nll / tokens,
            "tokens": tokens,
            "characters": characters,
            "documents": len(self.documents),
        }


def scored_texts(records: Sequence[Record], tokenizer: Any, template: str) -> list[ScoredText]:
    """The sequences to score for each record (see the module docstring)."""
    texts = [r for r in records if isinstance(r, TextDocument) and r.text.strip()]
    start = list(special_prefix(tokenizer))
    if not start:
        if tokenizer.eos_token_id is None:
            raise DataError(f"tokenizer {tokenizer.name_or_path} has no BOS or EOS to start text")
        start = [tokenizer.eos_token_id]
    out = [
        ScoredText(
            (*start, *ids), (False,) * len(start) + (True,) * len(ids), len(doc.text), doc.source
        )
        for doc, ids in zip(texts, encode_texts(tokenizer, [t.text for t in texts]), strict=True)
    ]
    for record in records:
        if isinstance(record, TextDocument):
            continue
        if not isinstance(record, Conversation):
            raise DataError(
                f"{record.source}: perplexity reads text or conversations; this record is "
                f"a {type(record).__name__.lower()} (give text, alpaca, sharegpt or openai data)"
            )
        example = tokenize_conversation(record, tokenizer, template, cutoff_len=2**31)
        labels = example["labels"]
        answers = sum(len(m.content) for m in record.messages if m.role == "assistant")
        scored = (False, *(label != IGNORE_INDEX for label in labels[1:]))
        if any(scored):
            out.append(ScoredText(tuple(example["input_ids"]), scored, answers, record.source))
    if not out:
        raise DataError("no text to score: the records are empty or hold no answers")
    return out


@dataclass(frozen=True)
class _Window:
    text: int
    begin: int
    end: int
    first: int
    """Scored positions start here (absolute, in the text's ids)."""


def _windows(texts: Sequence[ScoredText], block_size: int) -> list[_Window]:
    windows = []
    stride = max(block_size // 2, 1)
    for n, text in enumerate(texts):
        length, first, begin = len(text.ids), 1, 0
        while True:
            end = min(begin + block_size, length)
            windows.append(_Window(n, begin, end, first))
            if end == length:
                break
            first, begin = end, begin + stride
    return windows


@torch.no_grad()
def score_texts(
    model: Any,
    texts: Sequence[ScoredText],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = 16,
    pad_token_id: int = 0,
    show_progress: bool = True,
) -> list[TextScore]:
    """Summed NLL and scored-token count of each text (windows as the module says)."""
    windows = sorted(_windows(texts, block_size), key=lambda w: w.begin - w.end)
    nll = [0.0] * len(texts)
    counts = [0] * len(texts)
    bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not show_progress)
    position = 0
    while position < len(windows):
        width = windows[position].end - windows[position].begin
        rows = max(1, min(batch_size, TOKENS_PER_FORWARD // width))
        batch = windows[position : position + rows]
        position += len(batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        targets = []
        for row, w in enumerate(batch):
            text = texts[w.text]
            ids[row, : w.end - w.begin] = torch.tensor(text.ids[w.begin : w.end])
            for i in range(max(w.first, w.begin + 1), w.end):
                if text.scored[i]:
                    keep[row, i - 1 - w.begin] = True  # the logits there predict token i
                    targets.append((w.text, text.ids[i]))
        if targets:
            # Right padding needs no mask: causal attention keeps pads after every scored row.
            logits = model(input_ids=ids.to(model.device), logits_to_keep=keep.to(model.device))
            flat = logits.logits.reshape(-1, logits.logits.shape[-1]).float()  # [kept, V]
            token_ids = torch.tensor([t for _, t in targets], device=flat.device)
            losses = torch.nn.functional.cross_entropy(flat, token_ids, reduction="none")
            for (text_index, _), loss in zip(targets, losses.tolist(), strict=True):
                nll[text_index] += loss
                counts[text_index] += 1
        bar.update(len(batch))
    bar.close()
    return [TextScore(t.source, nll[n], counts[n], t.characters) for n, t in enumerate(texts)]
