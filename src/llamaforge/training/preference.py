"""Preference data for TRL's trainers, rendered with our templates, and the check that TRL
tokenizes it as we do.

TRL's DPO, KTO, ORPO and CPO (SimPO) trainers tokenize text columns themselves. We hand
them plain text (never messages, so TRL applies no chat template of its own): the prompt
and answers rendered by our template (``data/tokenization.py:render_preference``), so that
what is trained is what ``generate`` and ``serve`` prompt with. TRL then adds the
tokenizer's own special tokens (DPO, KTO: ``tokenizer(text)``; ORPO, CPO: BOS when the
prompt lacks it) and appends EOS to answers that do not end with it.
:func:`check_tokenization` compares the ids TRL made with ours (the SFT tokenization: same
segments, BOS once) for the first records and refuses the run when they differ, naming the
record: e.g. an EOS appended after a template's own end-of-turn marker.

Each row carries ``record`` (its index in our list), so TRL's filters (prompts longer than
``max_length`` are dropped) never misalign the check.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from llamaforge.data.formats import Feedback, Preference, Record
from llamaforge.data.templates import ChatTemplate, Template
from llamaforge.data.tokenization import (
    encode_answer,
    render_feedback,
    render_preference,
    special_prefix,
)
from llamaforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CHECKED_RECORDS = 16
"""How many rows :func:`check_tokenization` compares (tokenization is per row and uniform)."""


def _bos_stripped(prompt: str, tokenizer: Any, template: Template, *, adds_specials: bool) -> str:
    """A chat template that writes BOS itself, fed to a trainer whose tokenizer call adds
    BOS again (DPO, KTO): drop the written one so the ids hold it once, as in SFT."""
    prefix = special_prefix(tokenizer)
    if not (adds_specials and prefix and isinstance(template, ChatTemplate)):
        return prompt
    text = tokenizer.decode(list(prefix))
    return prompt.removeprefix(text)


def pair_rows(
    records: Sequence[Record], tokenizer: Any, template: Template, *, adds_specials: bool
) -> list[dict[str, Any]]:
    """Preference pairs → ``{prompt, chosen, rejected, record}`` text rows."""
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, Preference):
            raise DataError(
                f"{record.source}: this stage trains on chosen/rejected pairs; give it "
                "preference data (prompt/chosen/rejected, or LLaMA-Factory `ranking: true`)"
            )
        row: dict[str, Any] = dict(render_preference(record, tokenizer, template))
        row["prompt"] = _bos_stripped(
            row["prompt"], tokenizer, template, adds_specials=adds_specials
        )
        rows.append({**row, "record": i})
    return rows


def feedback_rows(
    records: Sequence[Record], tokenizer: Any, template: Template
) -> list[dict[str, Any]]:
    """KTO rows ``{prompt, completion, label, record}``: labelled answers as they are, and
    each pair unpaired into its chosen (desirable) and rejected (undesirable) answer."""
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if isinstance(record, Preference):
            answers = [
                Feedback(record.prompt, record.chosen, True, record.source),
                Feedback(record.prompt, record.rejected, False, record.source),
            ]
        elif isinstance(record, Feedback):
            answers = [record]
        else:
            raise DataError(
                f"{record.source}: stage kto trains on labelled answers (messages + a boolean "
                "label) or on chosen/rejected pairs"
            )
        for answer in answers:
            row = render_feedback(answer, tokenizer, template)
            row["prompt"] = _bos_stripped(row["prompt"], tokenizer, template, adds_specials=True)
            rows.append({**row, "record": i, "answer": answer.completion})
    return rows


def _expected(record: Record, answer: str, tokenizer: Any, template: Template) -> list[int]:
    prompt = record.prompt if isinstance(record, Preference | Feedback) else ()
    prompt_ids, answer_ids = encode_answer(prompt, answer, tokenizer, template)
    return [*prompt_ids, -1, *answer_ids]  # -1 marks where the prompt ends


def _trl_ids(row: dict[str, Any], side: str) -> list[int]:
    """TRL's ids of one side of a tokenized row, in the same ``prompt, -1, answer`` form."""
    if "prompt_ids" in row:  # DPO, KTO
        return [*row["prompt_ids"], -1, *row[f"{side}_ids"]]
    # ORPO, CPO: full sequences with the prompt masked in the labels
    ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
    start = next(i for i, label in enumerate(labels) if label != -100)
    return [*ids[:start], -1, *ids[start:]]


def check_tokenization(
    dataset: Any, records: Sequence[Record], tokenizer: Any, template: Template
) -> None:
    """Refuse a run whose TRL-tokenized rows differ from our tokenization (first rows)."""
    for row in dataset.select(range(min(CHECKED_RECORDS, len(dataset)))):
        record = records[row["record"]]
        if "completion_ids" in row:  # KTO: one answer per row
            sides = [("completion", row["answer"])]
        else:
            assert isinstance(record, Preference)
            sides = [("chosen", record.chosen), ("rejected", record.rejected)]
        for side, answer in sides:
            ours = _expected(record, answer, tokenizer, template)
            theirs = _trl_ids(row, side)
            if theirs != ours:
                raise ConfigError(
                    f"{record.source}: TRL tokenizes the {side} answer differently from "
                    f"SFT and generation with template '{template.name}' (ours "
                    f"{tokenizer.decode([i for i in ours if i >= 0])!r}, TRL's "
                    f"{tokenizer.decode([i for i in theirs if i >= 0])!r}, prompt/answer "
                    f"boundary at {ours.index(-1)} vs {theirs.index(-1)}). Training would "
                    "not match what the model is prompted with; use a template whose answers "
                    "end with the tokenizer's EOS (e.g. template: chat on ChatML models)"
                )


@contextlib.contextmanager
def experimental_trl() -> Iterator[None]:
    """Import from ``trl.experimental`` (ORPO, CPO/SimPO) without its instability warning:
    we pin TRL and test what we use. Other warnings still show."""
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        yield


def drop_reference_adapter(model: Any) -> None:
    """TRL's DPO/KTO trainers, handed a peft model, add a "ref" adapter copying the new
    (all-zero) one and score the reference through it. Deleting it makes them disable the
    adapter instead (``use_adapter(model, None)``): the reference is the same weights with
    no adapter, at no extra memory and without the adapter's matmuls."""
    config = getattr(model, "peft_config", None)
    if config is not None and "ref" in config:
        model.delete_adapter("ref")
        model.set_adapter("default")


def frozen_copy(model: Any) -> Any:
    """A frozen copy of ``model`` as the reference for full or freeze fine-tuning."""
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
