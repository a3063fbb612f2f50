"""`llamaforge tokenizer extend`: a model directory whose vocabulary grew from a corpus.

Contract of :func:`extend_model`:

- the corpus and held-out files are read first (any dataset file: ``.txt``, JSONL ``text``,
  Alpaca, ShareGPT, ... — every text field of every record; a folder: its data files), and the
  output is checked, so bad input fails before the model loads;
- the model (HF directory, ``.gguf`` file, ``smollm2-135m``) is loaded in float32 and its
  byte-level BPE extended by :mod:`llamaforge.models.vocabulary` (new merges, new embedding
  rows initialised from the old tokens they replace);
- the result is written like ``export merge`` writes a model (safetensors, ``config.json``
  with the new ``vocab_size``, tokenizer files) into a hidden staging directory, renamed to
  the output only after it was read back from disk and verified: the saved tokenizer gives
  the extended tokenizer's ids, decodes every checked text losslessly, and encodes any text
  without a new token exactly as before; the saved model's logits over the old vocabulary
  equal the original model's on fixed prompts (within fp32 rounding). So the output loads
  in every command (``generate --model DIR``, ``train model=DIR``, ``export``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamaforge.data.files import SUFFIXES
from llamaforge.data.formats import Conversation, Feedback, Preference, Record, read_file
from llamaforge.errors import DataError, ExportError
from llamaforge.export.merge import (
    fixed_prompts,
    logit_tolerance,
    max_logit_diff,
    prompt_logits,
)
from llamaforge.export.sources import load_base, load_tokenizer_dir
from llamaforge.export.writing import check_output_dir, save_hf_model, staged_dir
from llamaforge.models import load_tokenizer
from llamaforge.models.vocabulary import (
    VocabularyRecord,
    check_byte_level_bpe,
    learn_vocabulary,
    resize_embeddings,
    tokens_per_char,
    write_extension_record,
)

logger = logging.getLogger(__name__)

# Texts every extension is checked on besides samples of the corpus and held-out files.
CHECK_TEXTS = (
    "The quick brown fox jumps over the lazy dog. It's 3:45 pm, isn't it?",
    "Fine-tuning LLaMA models on a laptop: LoRA, QLoRA and continued pretraining.",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(2, 40))\n",
    '{"key": [1, 2.5, null], "path": "C:\\\\Users\\\\me"}\n\t<div class="x">&amp;</div>',
    "Emoji 😀👍🏽🇫🇷 and a family 👨‍👩‍👧 — ünïcödé, naïve café.",
    "春天来了，花儿开了，小鸟在树上唱歌。北京是中国的首都。",
    "日本語のテキスト、한국어 텍스트, Ελληνικά, русский текст.",
)
SAMPLE_TEXTS = 200
"""Corpus and held-out texts (each) the saved tokenizer is checked on."""


@dataclass(frozen=True)
class ExtendReport:
    output_dir: Path
    added: int
    first_id: int
    vocab_size: int
    """Rows of the embedding matrix (``config.json``'s ``vocab_size``)."""
    tied_embeddings: bool
    tokens_per_char: dict[str, tuple[float, float]]
    """``corpus`` / ``held-out`` → (before, after)."""
    characters: dict[str, int]
    examples: tuple[str, ...]
    """A few new tokens, decoded."""
    learn_seconds: float
    total_seconds: float
    max_abs_logit_diff: float
    """Max |Δlogit| over the old vocabulary, original vs saved model, on the fixed prompts."""
    texts_checked: int

    def summary(self) -> str:
        lines = [
            f"added {self.added} tokens (ids {self.first_id}..{self.first_id + self.added - 1}); "
            f"vocab_size {self.vocab_size}, embeddings {'tied' if self.tied_embeddings else 'untied'}",
            f"new tokens, e.g.: {' | '.join(self.examples)}",
            f"{'':10} {'chars':>10} {'tokens/char before':>19} {'after':>7} {'change':>8}",
        ]
        for name, (before, after) in self.tokens_per_char.items():
            change = (after - before) / before if before else 0.0
            lines.append(
                f"{name:10} {self.characters[name]:>10} {before:>19.3f} {after:>7.3f} "
                f"{100 * change:>+7.1f}%"
            )
        lines.append(
            f"verified from disk: {self.texts_checked} texts, max |Δlogit| on the old "
            f"vocabulary {self.max_abs_logit_diff:.3g}; learned in {self.learn_seconds:.1f} s, "
            f"{self.total_seconds:.1f} s in all"
        )
        lines.append(f"wrote {self.output_dir}")
        return "\n".join(lines)


def _record_texts(record: Record) -> list[str]:
    if isinstance(record, Conversation):
        return [m.text for m in record.messages]
    if isinstance(record, Preference):
        return [*(m.text for m in record.prompt), record.chosen, record.rejected]
    if isinstance(record, Feedback):
        return [*(m.text for m in record.prompt), record.completion]
    return [record.text]


def read_corpus(paths: Sequence[str | Path]) -> list[str]:
    """Every text field of every record of the files (folders: their data files, sorted)."""
    texts: list[str] = []
    for spec in paths:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
            if not files:
                raise DataError(f"{path}: folder holds no data files ({', '.join(SUFFIXES)})")
        else:
            files = [path]
        for file in files:
            _, records = read_file(file)
            texts += [text for record in records for text in _record_texts(record) if text]
    if not texts:
        raise DataError(f"{', '.join(map(str, paths))}: no text in the corpus")
    return texts


def _sample(texts: Sequence[str], count: int) -> list[str]:
    step = max(1, len(texts) // count)
    return list(texts[::step][:count])


def _check_tokenizer(saved: Any, extension: Any, old: Any, texts: Sequence[str]) -> None:
    """The saved tokenizer against the extension, and the extension against the old one."""
    for text in texts:
        ids = extension.tokenizer.encode(text, add_special_tokens=False).ids
        saved_ids = saved(text, add_special_tokens=False)["input_ids"]
        if saved_ids != ids:
            raise ExportError(
                f"verification failed: the saved tokenizer encodes {text[:40]!r} differently "
                "from the extended one; nothing was written (report this as a bug)"
            )
        old_ids = old.encode(text, add_special_tokens=False).ids
        if max(ids, default=-1) < extension.first_id and ids != old_ids:
            raise ExportError(
                f"verification failed: {text[:40]!r} has no new token but encodes differently "
                "than before; nothing was written (report this as a bug)"
            )
        if saved.decode(ids) != old.decode(old_ids):
            raise ExportError(
                f"verification failed: {text[:40]!r} does not decode back to itself after the "
                "extension; nothing was written (report this as a bug)"
            )


def _examples(tokenizer: Any, first_id: int, count: int, shown: int = 10) -> tuple[str, ...]:
    """New tokens spread over the learned order, decoded (whole characters only)."""
    step = max(1, count // shown)
    texts = [tokenizer.decode([i]) for i in range(first_id + count - 1, first_id - 1, -step)]
    return tuple(repr(t)[1:-1] for t in texts if "\ufffd" not in t)[:shown][::-1]


def _extended_tokenizer(old: Any, extension: Any) -> Any:
    """The transformers tokenizer of ``old`` (class, special tokens, chat template) with the
    extended backend: saved, its tokenizer.json replaced, loaded again. Loading (not editing
    the object) makes every class rebuild itself from the new vocabulary and merges."""
    with tempfile.TemporaryDirectory(prefix="llamaforge-tokenizer-") as tmp:
        directory = Path(tmp)
        old.save_pretrained(str(directory))
        for stale in ("vocab.json", "merges.txt"):  # slow-tokenizer files of the old vocab
            (directory / stale).unlink(missing_ok=True)
        extension.tokenizer.save(str(directory / "tokenizer.json"))
        return load_tokenizer_dir(directory)


def extend_model(
    model_spec: str,
    corpus: Sequence[str | Path],
    add: int,
    output_dir: str | Path,
    *,
    heldout: Sequence[str | Path] = (),
    min_frequency: int = 2,
    overwrite: bool = False,
    show_progress: bool = True,
) -> ExtendReport:
    """Learn ``add`` tokens from ``corpus``, grow the model's embeddings, write a verified
    model directory (see the module docstring)."""
    start = time.perf_counter()
    if add <= 0:
        raise ExportError(f"--add must be a positive number of new tokens, got {add}")
    if min_frequency < 1:
        raise ExportError(f"--min-frequency must be at least 1, got {min_frequency}")
    output = Path(output_dir)
    check_output_dir(output, overwrite=overwrite)
    sets = {"corpus": read_corpus(corpus)}
    if heldout:
        sets["held-out"] = read_corpus(heldout)

    # The tokenizer alone first: an unsupported one is refused before the weights load.
    check_byte_level_bpe(load_tokenizer(model_spec).backend_tokenizer, model_spec)
    model, tokenizer = load_base(model_spec)
    old = tokenizer.backend_tokenizer
    prompts = fixed_prompts(
        tokenizer, max_len=getattr(model.config, "max_position_embeddings", 512)
    )
    reference = prompt_logits(model, prompts)
    old_rows = model.get_input_embeddings().weight.shape[0]

    learn_start = time.perf_counter()
    extension = learn_vocabulary(
        old,
        sets["corpus"],
        add,
        name=model_spec,
        min_frequency=min_frequency,
        show_progress=show_progress,
    )
    learn_seconds = time.perf_counter() - learn_start
    vocab_size = resize_embeddings(model, extension.first_id, extension.pieces)
    new_tokenizer = _extended_tokenizer(tokenizer, extension)
    checked = [*CHECK_TEXTS, *(t for texts in sets.values() for t in _sample(texts, SAMPLE_TEXTS))]

    with staged_dir(output, overwrite=overwrite) as staging:
        logger.info("writing %s", output)
        save_hf_model(model, new_tokenizer, staging)
        write_extension_record(
            staging,
            VocabularyRecord(model_spec, extension.first_id, len(extension.tokens)),
        )
        from transformers import AutoModelForCausalLM

        saved = load_tokenizer_dir(staging)
        _check_tokenizer(saved, extension, old, checked)
        if saved.chat_template != tokenizer.chat_template:
            raise ExportError("verification failed: the saved tokenizer lost its chat template")
        reloaded = AutoModelForCausalLM.from_pretrained(str(staging), dtype=torch.float32).eval()
        if reloaded.get_input_embeddings().weight.shape[0] != vocab_size:
            raise ExportError("verification failed: the saved model lost its new embedding rows")
        logits = [x[:, :old_rows] for x in prompt_logits(reloaded, prompts)]
        diff = max_logit_diff(reference, logits)
        tolerance = logit_tolerance(reference, reloaded.config)
        if diff > tolerance:
            raise ExportError(
                f"verification failed: over the old vocabulary the saved model differs from the "
                f"original by max |Δlogit| = {diff:.3g} > {tolerance:.3g}; nothing was written "
                "(report this as a bug)"
            )
    output_embeddings = model.get_output_embeddings()
    tied = (
        output_embeddings is not None
        and output_embeddings.weight is model.get_input_embeddings().weight
    )
    rates = {
        name: (tokens_per_char(old, texts), tokens_per_char(extension.tokenizer, texts))
        for name, texts in sets.items()
    }
    report = ExtendReport(
        output_dir=output,
        added=len(extension.tokens),
        first_id=extension.first_id,
        vocab_size=vocab_size,
        tied_embeddings=tied,
        tokens_per_char=rates,
        characters={name: sum(map(len, texts)) for name, texts in sets.items()},
        examples=_examples(new_tokenizer, extension.first_id, len(extension.tokens)),
        learn_seconds=learn_seconds,
        total_seconds=time.perf_counter() - start,
        max_abs_logit_diff=diff,
        texts_checked=len(checked),
    )
    return report
