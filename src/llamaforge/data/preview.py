"""``llamaforge data preview``: validate a dataset, then show it as the model sees it.

Contract: :func:`preview_dataset` reads ``cfg.data.dataset[0]`` (a path or a registry
name) with the run's format, columns, system prompt and template; every bad record is
collected and reported at once in one DataError (the first 20 listed). A valid dataset
gives a report: the first ``num_examples`` records rendered from their token ids after
truncation, trained tokens wrapped in ``[[...]]`` (or green on a terminal), then length
statistics before truncation (min/mean/p50/p95/max), how many records exceed
``cutoff_len``, how many would be dropped for having no trained token, and the number
of trained tokens.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llamaforge.config.sections import RunConfig
from llamaforge.data.formats import Conversation, Message, Preference, Record
from llamaforge.data.registry import read_dataset_with_format, resolve_dataset
from llamaforge.data.templates import ChatTemplate, get_template
from llamaforge.data.tokenization import IGNORE_INDEX, Example, tokenize_batch
from llamaforge.errors import ConfigError, DataError

MAX_ERRORS = 20
_UNLIMITED = 1 << 62
_GREEN, _RESET = "\033[32m", "\033[0m"


def _as_sft(record: Record) -> Record:
    """Preference pairs are previewed as their chosen conversation."""
    if isinstance(record, Preference):
        return Conversation((*record.prompt, Message("assistant", record.chosen)), record.source)
    return record


def _render_example(example: Example, tokenizer: Any, color: bool) -> str:
    """Decoded tokens, trained runs marked; runs are decoded whole so text reads naturally."""
    ids, labels = example["input_ids"], example["labels"]
    out: list[str] = []
    start = 0
    while start < len(ids):
        trained = labels[start] != IGNORE_INDEX
        end = start
        while end < len(ids) and (labels[end] != IGNORE_INDEX) == trained:
            end += 1
        text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
        if trained:
            text = f"{_GREEN}{text}{_RESET}" if color else f"[[{text}]]"
        out.append(text)
        start = end
    return "".join(out)


def _percentile(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile: the smallest value with at least q of the values <= it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _stats(full: list[Example], cutoff_len: int, chunked: bool = False) -> list[str]:
    lengths = [len(e["input_ids"]) for e in full]
    total = sum(lengths)
    over = sum(n > cutoff_len for n in lengths)
    if chunked:  # raw text is split, not truncated: every token is trained
        trained, kept_tokens = lengths, total
    else:
        trained = [sum(label != IGNORE_INDEX for label in e["labels"][:cutoff_len]) for e in full]
        kept_tokens = sum(min(n, cutoff_len) for n in lengths)
    empty = sum(t == 0 for t in trained)
    n = len(lengths)
    lines = [
        f"tokens per record: min {min(lengths)}  mean {total / n:.1f}  "
        f"p50 {_percentile(lengths, 0.5)}  p95 {_percentile(lengths, 0.95)}  max {max(lengths)}",
        f"over cutoff_len={cutoff_len}: {over} of {n} records ({100 * over / n:.1f}%), "
        + (
            "split into cutoff_len chunks for training (shown: the first)"
            if chunked
            else "truncated keeping the beginning"
        ),
        f"trained tokens{'' if chunked else ' (after truncation)'}: {sum(trained)} of {kept_tokens} "
        f"({100 * sum(trained) / max(kept_tokens, 1):.1f}%)",
    ]
    if empty:
        lines.append(
            f"no trained token left after truncation: {empty} records (dropped in training; "
            "raise cutoff_len to keep them)"
        )
    return lines


def _raise_errors(errors: list[str], name: str) -> None:
    if not errors:
        return
    if len(errors) == 1:
        raise DataError(errors[0])
    shown = errors[:MAX_ERRORS]
    more = f" (first {MAX_ERRORS} shown)" if len(errors) > MAX_ERRORS else ""
    raise DataError(
        f"{len(errors)} bad records in dataset '{name}'{more}; fix them and run again:\n"
        + "\n".join(f"  {e}" for e in shown)
    )


def preview_dataset(
    cfg: RunConfig,
    num_examples: int = 3,
    tokenizer: Any = None,
    *,
    load_tokenizer: Callable[[], Any] | None = None,
    base_dir: Path | None = None,
    color: bool | None = None,
) -> str:
    """The preview report for ``cfg.data.dataset[0]`` (see the module docstring).

    Pass the ``tokenizer``, or ``load_tokenizer`` to load it only once the dataset has been
    read and checked (data/ is handed a tokenizer; it never loads models itself).
    """
    data = cfg.data
    if not data.dataset:
        raise ConfigError("key 'dataset' is empty; name a data file or a registry entry")
    if base_dir is None and cfg.source:
        base_dir = Path(cfg.source).parent
    template = get_template(data.template, data.templates_dir)
    spec = resolve_dataset(data.dataset[0], data, base_dir)
    errors: list[str] = []
    fmt, records = read_dataset_with_format(spec, errors)
    _raise_errors(errors, data.dataset[0])
    if tokenizer is None:
        if load_tokenizer is None:
            raise TypeError("preview_dataset needs a tokenizer or load_tokenizer")
        tokenizer = load_tokenizer()
    sft = [_as_sft(r) for r in records]
    full = tokenize_batch(
        sft, tokenizer, template, _UNLIMITED, data.add_eos_token, data.train_on_inputs
    )
    if color is None:
        color = sys.stdout.isatty()
    kind = "chat template" if isinstance(template, ChatTemplate) else "prompt template"
    lines = [
        f"dataset: {data.dataset[0]}"
        + (f" ({spec.path})" if str(spec.path) != data.dataset[0] else "")
        + f": format {fmt}, {len(records)} records",
        f"{kind}: {data.template or 'chat'}  cutoff_len: {data.cutoff_len}  "
        f"train_on_inputs: {str(data.train_on_inputs).lower()}  "
        f"add_eos_token: {str(data.add_eos_token).lower()}",
        "trained tokens are " + ("green" if color else "wrapped in [[...]]"),
        "",
    ]
    # Text documents turn into one example per record here (no chunking at an unlimited cutoff).
    for i, (record, example) in enumerate(zip(sft[:num_examples], full, strict=False)):
        cut = {k: v[: data.cutoff_len] for k, v in example.items()}
        n_trained = sum(label != IGNORE_INDEX for label in cut["labels"])
        dropped = len(example["input_ids"]) - len(cut["input_ids"])
        head = f"--- record {i + 1} ({record.source}): {len(cut['input_ids'])} tokens, {n_trained} trained"
        lines.append(head + (f", {dropped} cut by cutoff_len" if dropped else "") + " ---")
        lines.append(_render_example(cut, tokenizer, color))
        original = records[i]
        if isinstance(original, Preference):
            lines.append(f"(rejected answer: {original.rejected!r})")
        lines.append("")
    lines += _stats(full, data.cutoff_len, chunked=fmt == "text")
    return "\n".join(lines)
