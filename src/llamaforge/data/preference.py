"""Preference pairs → token ids, for the preference stages (reward model, DPO, ...).

Contract: :func:`encode_pairs` renders each :class:`Preference` with the template exactly as
SFT renders a conversation (each segment tokenized on its own, BOS first for prompt
templates) and splits it into the shared ``prompt`` ids and the ``chosen`` / ``rejected``
answer ids. An answer is what SFT would train: its text up to and including the
template's end-of-turn marker (``<|im_end|>``), or the EOS token for templates without one
(``add_eos_token``); text after the marker (a newline) is not part of it. Nothing is
truncated here.

:func:`reward_examples` builds the reward model's sequences, ``prompt + answer`` per
side, cut to ``cutoff_len`` (:func:`cut_pair`: prompt and answers each keep their
beginning, sized as LLaMA-Factory sizes them); pairs cut are counted, and pairs whose two
sides become identical (no signal left) are dropped and counted, never silently.

:func:`score_pad_token` picks the pad token of a reward model: transformers reads a
sequence-classification score at the rightmost token that is not the pad id, so the pad
must be a token the sequences never contain, or the score is read before it. On the
bundled model pad = EOS = ``<|im_end|>``, which is also where every answer ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llamaforge.data.formats import Message, Preference
from llamaforge.data.templates import PromptTemplate, Template, render_segments
from llamaforge.data.tokenization import encode_texts, special_prefix
from llamaforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    """The chosen answer's ids (its end-of-turn marker or EOS included), after ``prompt``."""
    rejected: list[int]
    source: str = ""

    def sequence(self, side: str) -> list[int]:
        """``prompt + answer`` of ``side`` (chosen | rejected)."""
        return [*self.prompt, *(self.chosen if side == "chosen" else self.rejected)]


def _answer_split(
    template: Template, pref: Preference, answer: str, tokenizer: Any, add_eos_token: bool
) -> tuple[list[str], str, bool]:
    """(prompt segment texts, answer text, EOS after the answer) of one side."""
    messages = (*pref.prompt, Message("assistant", answer))
    segments = render_segments(
        template, messages, tokenizer, add_eos_token=add_eos_token, source=pref.source
    )
    last = max(i for i, s in enumerate(segments) if s.trained)
    return [s.text for s in segments[:last]], segments[last].text, segments[last].eos


def encode_pairs(
    records: Sequence[Preference], tokenizer: Any, template: Template, add_eos_token: bool = True
) -> list[EncodedPair]:
    """Each pair's prompt and answer ids, in one tokenizer call (see the module docstring)."""
    prefix = list(special_prefix(tokenizer)) if isinstance(template, PromptTemplate) else []
    plans = []
    texts: list[str] = []
    for pref in records:
        prompt, chosen, chosen_eos = _answer_split(
            template, pref, pref.chosen, tokenizer, add_eos_token
        )
        prompt_r, rejected, rejected_eos = _answer_split(
            template, pref, pref.rejected, tokenizer, add_eos_token
        )
        if prompt != prompt_r:
            raise DataError(
                f"{pref.source}: the template renders the prompt differently before the chosen "
                "and the rejected answer; use template: chatml (or another fixed template)"
            )
        plans.append((pref, len(prompt), chosen_eos, rejected_eos))
        texts += [*prompt, chosen, rejected]
    if (any(p[2] or p[3] for p in plans)) and tokenizer.eos_token_id is None:
        raise ConfigError(
            "key 'add_eos_token': the tokenizer has no EOS token; set add_eos_token: false"
        )
    pieces = encode_texts(tokenizer, texts)
    pairs = []
    pos = 0
    for pref, n_prompt, chosen_eos, rejected_eos in plans:
        own = pieces[pos : pos + n_prompt + 2]
        pos += n_prompt + 2
        prompt_ids = prefix + [i for piece in own[:n_prompt] for i in piece]
        chosen_ids = own[n_prompt] + ([tokenizer.eos_token_id] if chosen_eos else [])
        rejected_ids = own[n_prompt + 1] + ([tokenizer.eos_token_id] if rejected_eos else [])
        pairs.append(EncodedPair(prompt_ids, chosen_ids, rejected_ids, pref.source))
    return pairs


@dataclass(frozen=True)
class Truncation:
    """What cutting to ``cutoff_len`` did to a set of pairs."""

    cutoff_len: int
    pairs: int
    cut: int
    """Pairs with at least one side longer than cutoff_len (cut by :func:`cut_pair`)."""
    dropped: int
    """Pairs whose sides were identical after the cut (dropped: they carry no preference)."""

    def log(self, name: str) -> None:
        if self.cut:
            logger.warning(
                "%s: %d of %d pairs are longer than cutoff_len=%d and were cut (prompt and "
                "answers each keep their beginning; the reward is then read at the last kept "
                "token); %d of them were left identical and dropped; raise cutoff_len to "
                "keep them whole",
                name,
                self.cut,
                self.pairs,
                self.cutoff_len,
                self.dropped,
            )


def cut_lengths(prompt_len: int, answer_len: int, cutoff_len: int) -> tuple[int, int]:
    """(prompt, answer) lengths to keep so that both fit ``cutoff_len`` (LLaMA-Factory's
    split): an answer under half the budget is kept whole; else a prompt under half is kept
    whole; else both shrink in proportion. Either part keeps its beginning."""
    if answer_len * 2 < cutoff_len:
        max_answer = cutoff_len
    elif prompt_len * 2 < cutoff_len:
        max_answer = cutoff_len - prompt_len
    else:
        max_answer = int(cutoff_len * answer_len / (prompt_len + answer_len))
    answer = min(max_answer, answer_len)
    return min(cutoff_len - answer, prompt_len), answer


def cut_pair(pair: EncodedPair, cutoff_len: int) -> tuple[list[int], list[int]]:
    """The chosen and rejected sequences (``prompt + answer``) within ``cutoff_len``: the
    prompt is cut to the same length for both sides, sized by the longer answer."""
    longer = max(len(pair.chosen), len(pair.rejected))
    prompt_len, answer_len = cut_lengths(len(pair.prompt), longer, cutoff_len)
    prompt = pair.prompt[:prompt_len]
    return [*prompt, *pair.chosen[:answer_len]], [*prompt, *pair.rejected[:answer_len]]


def reward_examples(
    pairs: Sequence[EncodedPair], cutoff_len: int
) -> tuple[list[dict[str, Any]], Truncation]:
    """Examples ``{chosen_ids, rejected_ids, length}`` (TRL's RewardTrainer columns:
    whole sequences, ``prompt + answer``), each cut to ``cutoff_len`` (:func:`cut_pair`)."""
    examples = []
    cut = dropped = 0
    for pair in pairs:
        chosen, rejected = cut_pair(pair, cutoff_len)
        if len(chosen) < len(pair.sequence("chosen")) or len(rejected) < len(
            pair.sequence("rejected")
        ):
            cut += 1
            if chosen == rejected:
                dropped += 1
                continue
        examples.append(
            {
                "chosen_ids": chosen,
                "rejected_ids": rejected,
                "length": max(len(chosen), len(rejected)),
            }
        )
    return examples, Truncation(cutoff_len, len(pairs), cut, dropped)


def score_pad_token(tokenizer: Any, sequences: Iterable[Sequence[int]]) -> str:
    """A pad token for a reward model that none of ``sequences`` contains (see the module
    docstring): the tokenizer's pad token if it is not EOS/BOS, else its unk token, else
    another of its special tokens."""
    used: set[int] = set()
    for ids in sequences:
        used.update(ids)
    reserved = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    candidates = [
        tokenizer.pad_token,
        tokenizer.unk_token,
        *getattr(tokenizer, "all_special_tokens", ()),
    ]
    for token in candidates:
        if token is None:
            continue
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id not in reserved and token_id not in used:
            return str(token)
    raise DataError(
        "no special token of the tokenizer is free to pad a reward model's batches (each "
        "occurs in the data or is EOS/BOS); add a pad token to the tokenizer"
    )


def check_free_of(
    pad_token_id: int, sequences: Iterable[Sequence[int]], sources: Sequence[str]
) -> None:
    """Refuse sequences that contain the reward model's pad id: their score would be read
    before it."""
    for ids, source in zip(sequences, sources, strict=True):
        if pad_token_id in ids:
            raise DataError(
                f"{source}: contains token id {pad_token_id}, the model's pad token, so its "
                "score would be read before the end; score with a run directory of stage rm "
                "(it pads with a token its data never contains), or remove that token"
            )
