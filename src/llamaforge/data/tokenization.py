"""Records → token ids with label masks, ready for a causal-LM trainer.

Contract: an example is ``{"input_ids", "attention_mask", "labels"}`` (lists of equal
length, at most ``cutoff_len``). ``labels`` is ``input_ids`` with -100 on every token that
is not part of an assistant answer (the answer's EOS or end-of-turn marker included),
unless ``train_on_inputs``. Each segment from :func:`~llamaforge.data.templates.render_segments`
is tokenized on its own (no special tokens) and the pieces are concatenated, after the
tokenizer's own leading special tokens (BOS) for prompt templates — chat templates write
BOS themselves. :func:`encode_prompt` builds generation prompts the same way, so the
ids a model sees at inference are exactly the prompt ids it was trained on. Truncation
keeps the beginning. Raw text is split into ``cutoff_len`` chunks, all tokens trained.

:func:`tokenize_records` tokenizes in batches of strings with the fast tokenizer and
caches the result on disk, keyed by the records, tokenizer, template and settings.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llamaforge.config.sections import DataConfig
from llamaforge.data.formats import (
    Conversation,
    Feedback,
    Message,
    Preference,
    Record,
    TextDocument,
)
from llamaforge.data.templates import (
    ChatTemplate,
    PromptTemplate,
    Segment,
    Template,
    get_template,
    render_segments,
)
from llamaforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
Example = dict[str, list[int]]
CACHE_VERSION = 1


@functools.lru_cache(maxsize=16)
def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The ids the tokenizer puts before text by itself (BOS for Llama/SentencePiece)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            "key 'add_eos_token': the tokenizer has no EOS token; set add_eos_token: false "
            "or use a chat template with an end-of-turn marker"
        )
    return int(eos)


def _prefix_for(template: Template, tokenizer: Any) -> tuple[int, ...]:
    return special_prefix(tokenizer) if isinstance(template, PromptTemplate) else ()


def _assemble(
    segments: Sequence[Segment],
    pieces: Sequence[list[int]],
    prefix: Sequence[int],
    eos_id: int | None,
    cutoff_len: int,
    train_on_inputs: bool,
) -> Example:
    input_ids = list(prefix)
    labels = list(prefix) if train_on_inputs else [IGNORE_INDEX] * len(prefix)
    for segment, ids in zip(segments, pieces, strict=True):
        if segment.eos:
            assert eos_id is not None  # _eos_id() was checked when any segment asks for EOS
            ids = [*ids, eos_id]
        input_ids += ids
        labels += ids if (segment.trained or train_on_inputs) else [IGNORE_INDEX] * len(ids)
    input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added (one batched call)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "split_special_tokens", False):
        # The Rust tokenizer directly: same ids as tokenizer(texts), about 2x faster
        # because transformers' per-encoding conversion is skipped.
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def tokenize_conversation(
    conv: Conversation,
    tokenizer: Any,
    template: str | Template,
    cutoff_len: int,
    add_eos_token: bool = True,
    train_on_inputs: bool = False,
    templates_dir: str | Path | None = None,
) -> Example:
    """One conversation → input_ids / attention_mask / labels (see the module docstring)."""
    template = get_template(template, templates_dir) if isinstance(template, str) else template
    segments = render_segments(
        template, conv.messages, tokenizer, add_eos_token=add_eos_token, source=conv.source
    )
    eos_id = _eos_id(tokenizer) if any(s.eos for s in segments) else None
    pieces = encode_texts(tokenizer, [s.text for s in segments])
    prefix = _prefix_for(template, tokenizer)
    return _assemble(segments, pieces, prefix, eos_id, cutoff_len, train_on_inputs)


def tokenize_text(
    doc: TextDocument, tokenizer: Any, cutoff_len: int, add_eos_token: bool = True
) -> list[Example]:
    """Raw text → ``cutoff_len`` chunks (BOS first, EOS last), every token trained."""
    ids = encode_texts(tokenizer, [doc.text])[0]
    return _chunk_text(ids, tokenizer, cutoff_len, add_eos_token)


def _chunk_text(
    ids: list[int], tokenizer: Any, cutoff_len: int, add_eos_token: bool
) -> list[Example]:
    ids = [*special_prefix(tokenizer), *ids]
    if add_eos_token:
        ids.append(_eos_id(tokenizer))
    return [
        {"input_ids": chunk, "attention_mask": [1] * len(chunk), "labels": list(chunk)}
        for chunk in (ids[i : i + cutoff_len] for i in range(0, len(ids), cutoff_len))
    ]


def encode_prompt(
    tokenizer: Any,
    template: str | Template,
    messages: Sequence[Message],
    templates_dir: str | Path | None = None,
    *,
    add_eos_token: bool = True,
) -> list[int]:
    """Token ids of the generation prompt for ``messages`` (ending with the user), built
    exactly as in training: use this rather than ``tokenizer(render_prompt(...))``."""
    template = get_template(template, templates_dir) if isinstance(template, str) else template
    segments = render_segments(
        template, messages, tokenizer, add_eos_token=add_eos_token, generation=True
    )
    eos_id = _eos_id(tokenizer) if any(s.eos for s in segments) else None
    pieces = encode_texts(tokenizer, [s.text for s in segments])
    example = _assemble(
        segments, pieces, _prefix_for(template, tokenizer), eos_id, 1 << 62, train_on_inputs=True
    )
    return example["input_ids"]


def _render_answer(
    prompt: Sequence[Message], answer: str, tokenizer: Any, template: Template, source: str
) -> tuple[str, str]:
    """(prompt text, answer text): the answer with its end-of-turn text or EOS, the prompt
    everything before it (history included); what follows the answer is left out."""
    messages = (*prompt, Message("assistant", answer))
    segments = render_segments(template, messages, tokenizer, source=source)
    eos = tokenizer.eos_token or ""
    texts = [s.text + (eos if s.eos else "") for s in segments]
    last_trained = max(i for i, s in enumerate(segments) if s.trained)
    return "".join(texts[:last_trained]), texts[last_trained]


def render_preference(
    pref: Preference,
    tokenizer: Any,
    template: str | Template,
    templates_dir: str | Path | None = None,
) -> dict[str, str]:
    """A preference pair as the texts a DPO/reward trainer expects: prompt (rendered with
    the template), chosen and rejected answers (each with its end-of-turn text or EOS)."""
    template = get_template(template, templates_dir) if isinstance(template, str) else template
    out: dict[str, str] = {}
    for key, answer in (("chosen", pref.chosen), ("rejected", pref.rejected)):
        out["prompt"], out[key] = _render_answer(
            pref.prompt, answer, tokenizer, template, pref.source
        )
    return out


def render_feedback(
    feedback: Feedback,
    tokenizer: Any,
    template: str | Template,
    templates_dir: str | Path | None = None,
) -> dict[str, Any]:
    """A KTO record as TRL's unpaired texts: prompt, completion (with its end-of-turn text
    or EOS) and label."""
    template = get_template(template, templates_dir) if isinstance(template, str) else template
    prompt, completion = _render_answer(
        feedback.prompt, feedback.completion, tokenizer, template, feedback.source
    )
    return {"prompt": prompt, "completion": completion, "label": feedback.desirable}


def encode_answer(
    prompt: Sequence[Message], answer: str, tokenizer: Any, template: str | Template
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) exactly as SFT tokenizes the conversation (BOS for prompt
    templates, each segment on its own): the reference preference trainers are checked
    against."""
    conv = Conversation((*prompt, Message("assistant", answer)))
    example = tokenize_conversation(conv, tokenizer, template, cutoff_len=1 << 62)
    trained = [i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
    ids = example["input_ids"]
    return ids[: trained[0]], ids[trained[0] : trained[-1] + 1]


# ---------------------------------------------------------------------------- batches


def _template_fingerprint(template: Template, tokenizer: Any) -> str:
    if isinstance(template, ChatTemplate):
        return template.jinja(tokenizer)
    return json.dumps([template.prompt_input, template.prompt_no_input, template.response_split])


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(
        [tokenizer.bos_token_id, tokenizer.eos_token_id, list(special_prefix(tokenizer))]
    )
    return hashlib.sha256((body + specials).encode()).hexdigest()


def cache_key(
    records: Sequence[Record], tokenizer: Any, template: Template, cfg: DataConfig
) -> str:
    """A hash of everything that changes the tokenized examples."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}".encode())
    h.update(_tokenizer_fingerprint(tokenizer).encode())
    h.update(_template_fingerprint(template, tokenizer).encode())
    h.update(json.dumps([cfg.cutoff_len, cfg.add_eos_token, cfg.train_on_inputs]).encode())
    for record in records:
        # The source (file:line) is left out: moving a file must not invalidate the cache.
        if isinstance(record, Conversation):
            h.update(repr([(m.role, m.content, m.input) for m in record.messages]).encode())
        elif isinstance(record, TextDocument):
            h.update(repr(("text", record.text)).encode())
        elif isinstance(record, Feedback):
            h.update(repr((record.prompt, record.completion, record.desirable)).encode())
        else:
            h.update(repr(replace(record, source="")).encode())
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    root = os.environ.get("LLAMAFORGE_CACHE") or Path.home() / ".cache" / "llamaforge"
    return Path(root) / "tokenized"


def _batches(records: Sequence[Record], size: int) -> Iterable[Sequence[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def tokenize_batch(
    records: Sequence[Record],
    tokenizer: Any,
    template: Template,
    cutoff_len: int,
    add_eos_token: bool = True,
    train_on_inputs: bool = False,
) -> list[Example]:
    """Several records at once: one tokenizer call for all their segments."""
    plans: list[tuple[Record, list[Segment]]] = []
    texts: list[str] = []
    for record in records:
        if isinstance(record, Conversation):
            segments = render_segments(
                template,
                record.messages,
                tokenizer,
                add_eos_token=add_eos_token,
                source=record.source,
            )
        elif isinstance(record, TextDocument):
            segments = [Segment(record.text, True)]
        elif isinstance(record, Preference):
            raise DataError(
                f"{record.source}: preference data (a chosen/rejected pair or a labelled answer) "
                "cannot be used for supervised fine-tuning; use a preference stage (stage: dpo, "
                "kto, orpo, simpo) or an SFT dataset"
            )
        else:
            raise DataError(
                f"{record.source}: binary feedback (an answer with a true/false label) cannot be "
                "used for supervised fine-tuning; use stage kto or an SFT dataset"
            )
        plans.append((record, segments))
        texts.extend(s.text for s in segments)
    pieces = encode_texts(tokenizer, texts)
    eos_id = tokenizer.eos_token_id
    prefix = _prefix_for(template, tokenizer)
    examples: list[Example] = []
    pos = 0
    for record, segments in plans:
        own = pieces[pos : pos + len(segments)]
        pos += len(segments)
        if isinstance(record, TextDocument):
            examples.extend(_chunk_text(own[0], tokenizer, cutoff_len, add_eos_token))
            continue
        if eos_id is None and any(s.eos for s in segments):
            _eos_id(tokenizer)
        examples.append(_assemble(segments, own, prefix, eos_id, cutoff_len, train_on_inputs))
    return examples


def tokenize_records(
    records: Sequence[Record],
    tokenizer: Any,
    cfg: DataConfig,
    *,
    template: str | Template | None = None,
    batch_size: int = 1000,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
) -> Any:
    """Records → a ``datasets.Dataset`` with input_ids / attention_mask / labels.

    Settings come from ``cfg`` (template, templates_dir, cutoff_len, add_eos_token,
    train_on_inputs). Examples left with no trained token after truncation are dropped
    (the count is logged). The result is cached under ``cache_dir`` (default
    ``~/.cache/llamaforge/tokenized``, or ``$LLAMAFORGE_CACHE/tokenized``).
    """
    import datasets

    if not records:
        raise DataError("no records to tokenize; check `dataset` and `max_samples`")
    tpl = (
        get_template(template or cfg.template, cfg.templates_dir)
        if not isinstance(template, PromptTemplate | ChatTemplate)
        else template
    )
    path: Path | None = None
    if use_cache:
        key = cache_key(records, tokenizer, tpl, cfg)
        path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = path / key
        if (path / "dataset_info.json").exists():
            logger.info("tokenized data from cache %s", path)
            return datasets.load_from_disk(str(path))
    examples: list[Example] = []
    with tqdm(
        total=len(records), desc="tokenizing", unit="rec", disable=not show_progress, leave=False
    ) as bar:
        for batch in _batches(records, batch_size):
            examples.extend(
                tokenize_batch(
                    batch, tokenizer, tpl, cfg.cutoff_len, cfg.add_eos_token, cfg.train_on_inputs
                )
            )
            bar.update(len(batch))
    kept = [e for e in examples if any(label != IGNORE_INDEX for label in e["labels"])]
    if len(kept) < len(examples):
        logger.warning(
            "dropped %d of %d examples with no trained token left after truncation to "
            "cutoff_len=%d; raise cutoff_len to keep them",
            len(examples) - len(kept),
            len(examples),
            cfg.cutoff_len,
        )
    if not kept:
        raise DataError(
            f"no example has a trained token within cutoff_len={cfg.cutoff_len}; "
            "raise cutoff_len or shorten the prompts"
        )
    dataset = to_dataset(kept)
    if path is not None:
        _save_atomically(dataset, path)
    return dataset


def to_dataset(
    examples: Sequence[dict[str, Any]],
    columns: Sequence[str] = ("input_ids", "attention_mask", "labels"),
) -> Any:
    """Examples → ``datasets.Dataset`` (int32 columns: lists of ids, or one int per row;
    built with pyarrow: 2.5x faster than ``Dataset.from_dict``, which infers types value by
    value)."""
    import datasets
    import pyarrow as pa

    table = {}
    for name in columns:
        values = [e[name] for e in examples]
        kind = pa.list_(pa.int32()) if values and isinstance(values[0], list) else pa.int32()
        table[name] = pa.array(values, type=kind)
    return datasets.Dataset(pa.table(table))


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No "Saving the dataset" bar: our own bar already covered tokenizing."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _save_atomically(dataset: Any, path: Path) -> None:
    """Write to a temporary sibling, then rename: a crash never leaves a half cache."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _quiet_datasets():
            dataset.save_to_disk(str(tmp))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home or a concurrent writer: work on uncached
        logger.warning("could not write the tokenization cache %s: %s", path, e)
        shutil.rmtree(tmp, ignore_errors=True)
