"""``llamaforge data preview``: validate a dataset, then show it as the model sees it.

Contract: :func:`preview_dataset` reads ``cfg.data.dataset[0]`` (a path or a registry
name) with the run's format, columns, system prompt and template; every bad record is
collected and reported at once in one DataError (the first 20 listed). A valid dataset
gives a report: the first ``num_examples`` records rendered from their token ids after
truncation, trained tokens wrapped in ``[[...]]`` (or green on a terminal), then length
statistics before truncation (min/mean/p50/p95/max), how many records exceed
``cutoff_len``, how many would be dropped for having no trained token, and the number
of trained tokens.

Preference pairs are shown as pairs: the prompt, then each answer with the tokens it is
scored on wrapped in ``[[...]]`` (the answer's log-probabilities in DPO-style stages), and
the token where a reward model reads its score (the last one of ``prompt + answer``);
their statistics are per side and count the pairs ``cutoff_len`` cuts. KTO feedback is
shown as its conversation with its label.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llamaforge.config.sections import RunConfig
from llamaforge.data.formats import Conversation, Feedback, Message, Preference, Record
from llamaforge.data.preference import EncodedPair, cut_pair, encode_pairs, reward_examples
from llamaforge.data.registry import read_dataset_with_format, resolve_dataset
from llamaforge.data.templates import ChatTemplate, get_template
from llamaforge.data.tokenization import IGNORE_INDEX, Example, tokenize_batch
from llamaforge.errors import ConfigError, DataError

MAX_ERRORS = 20
_UNLIMITED = 1 << 62
_GREEN, _RESET = "\033[32m", "\033[0m"


def _as_sft(record: Record) -> Record:
    """KTO feedback is previewed as its conversation."""
    if isinstance(record, Feedback):
        messages = (*record.prompt, Message("assistant", record.completion))
        return Conversation(messages, record.source)
    return record


def _mark(text: str, color: bool) -> str:
    return f"{_GREEN}{text}{_RESET}" if color else f"[[{text}]]"


def _pair_lines(pair: EncodedPair, tokenizer: Any, cutoff_len: int, color: bool) -> list[str]:
    lines = [f"prompt ({len(pair.prompt)} tokens): {tokenizer.decode(pair.prompt)}"]
    for side, kept in zip(("chosen", "rejected"), cut_pair(pair, cutoff_len), strict=True):
        answer = pair.chosen if side == "chosen" else pair.rejected
        lost = len(pair.sequence(side)) - len(kept)
        cut = f", {lost} cut by cutoff_len" if lost else ""
        lines.append(
            f"{side} ({len(answer)} answer tokens{cut}; a reward model reads its score at "
            f"token {len(kept)}, {tokenizer.decode(kept[-1:])!r}): "
            + _mark(tokenizer.decode(answer), color)
        )
    return lines


def _preview_pairs(
    records: Sequence[Preference],
    tokenizer: Any,
    template: Any,
    cfg: RunConfig,
    n: int,
    color: bool,
) -> list[str]:
    data = cfg.data
    pairs = encode_pairs(records, tokenizer, template, data.add_eos_token)
    lines = []
    for i, pair in enumerate(pairs[:n]):
        lines.append(f"--- pair {i + 1} ({pair.source}) ---")
        lines += [*_pair_lines(pair, tokenizer, data.cutoff_len, color), ""]
    _, truncation = reward_examples(pairs, data.cutoff_len)
    for side in ("chosen", "rejected"):
        lengths = [len(p.sequence(side)) for p in pairs]
        lines.append(
            f"{side} tokens per pair (prompt + answer): min {min(lengths)}  "
            f"mean {sum(lengths) / len(lengths):.1f}  p50 {_percentile(lengths, 0.5)}  "
            f"p95 {_percentile(lengths, 0.95)}  max {max(lengths)}"
        )
    lines.append(
        f"over cutoff_len={data.cutoff_len}: {truncation.cut} of {truncation.pairs} pairs "
        f"({100 * truncation.cut / truncation.pairs:.1f}%), cut (prompt and answers keep their "
        "beginnings); "
        f"left identical by the cut (dropped in training): {truncation.dropped}"
    )
    return lines


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
    ]
    pairs = [r for r in records if isinstance(r, Preference)]
    if pairs:
        lines += ["scored answer tokens are " + ("green" if color else "wrapped in [[...]]"), ""]
        return "\n".join(
            lines + _preview_pairs(pairs, tokenizer, template, cfg, num_examples, color)
        )
    sft = [_as_sft(r) for r in records]
    full = tokenize_batch(
        sft, tokenizer, template, _UNLIMITED, data.add_eos_token, data.train_on_inputs
    )
    lines += ["trained tokens are " + ("green" if color else "wrapped in [[...]]"), ""]
    # Text documents turn into one example per record here (no chunking at an unlimited cutoff).
    for i, (record, example) in enumerate(zip(sft[:num_examples], full, strict=False)):
        cut = {k: v[: data.cutoff_len] for k, v in example.items()}
        n_trained = sum(label != IGNORE_INDEX for label in cut["labels"])
        dropped = len(example["input_ids"]) - len(cut["input_ids"])
        head = f"--- record {i + 1} ({record.source}): {len(cut['input_ids'])} tokens, {n_trained} trained"
        lines.append(head + (f", {dropped} cut by cutoff_len" if dropped else "") + " ---")
        lines.append(_render_example(cut, tokenizer, color))
        original = records[i]
        if isinstance(original, Feedback):
            lines.append(f"(label: {'desirable' if original.desirable else 'undesirable'})")
        lines.append("")
    lines += _stats(full, data.cutoff_len, chunked=fmt == "text")
    return "\n".join(lines)
