"""Raw text streamed from disk into pretraining blocks, for corpora larger than memory.

``stage: pt`` with ``pt: {streaming: true}`` reads its documents lazily: a JSON Lines file
line by line, a text file paragraph by paragraph (blank-line separated, as in memory); a
JSON list or a CSV file is parsed whole, one file at a time. The blocks are the ones
:func:`~llamaforge.data.pretraining.pretraining_blocks` makes of the same documents (same
order, same EOS joins, same block size), produced as they are consumed. A stream has no
length, so a streaming run needs ``max_steps``; it re-reads the files for each pass.

The first ``skip_documents`` documents of the stream are the validation split (read into
memory by :func:`head_documents`), so validation never overlaps training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from llamaforge.data.files import JSONL_SUFFIXES, SUFFIXES, TEXT_SUFFIXES, parse_jsonl_line
from llamaforge.data.formats import TextDocument, read_file, read_text_documents
from llamaforge.data.pretraining import document_ids
from llamaforge.data.registry import DatasetSpec
from llamaforge.errors import DataError

_BATCH = 256


def _files(spec: DatasetSpec) -> list[Path]:
    if not spec.path.is_dir():
        return [spec.path]
    files = sorted(p for p in spec.path.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"{spec.path}: folder has no data files ({', '.join(SUFFIXES)})")
    return files


def _text_paragraphs(path: Path) -> Iterator[TextDocument]:
    block: list[str] = []
    first = 0
    with path.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                if not block:
                    first = line_no
                block.append(line.rstrip("\r\n"))
            elif block:
                yield TextDocument("\n".join(block), f"{path}:{first}")
                block = []
    if block:
        yield TextDocument("\n".join(block), f"{path}:{first}")


def _jsonl_documents(path: Path, columns: dict[str, str]) -> Iterator[TextDocument]:
    with path.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = parse_jsonl_line(path, line_no, line)
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object with a `text` field")
            # read_text_documents makes TextDocuments only (its Record type is the union)
            yield from read_text_documents([(row, f"{path}:{line_no}")], columns)  # type: ignore[misc]


def _documents(spec: DatasetSpec) -> Iterator[TextDocument]:
    columns = dict(spec.columns or {})
    for path in _files(spec):
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            yield from _jsonl_documents(path, columns)
        elif suffix in TEXT_SUFFIXES:
            yield from _text_paragraphs(path)
        else:  # a JSON list or a CSV table cannot be read a record at a time
            yield from read_file(path, "text", columns)[1]  # type: ignore[misc]


def stream_documents(specs: Sequence[DatasetSpec], max_samples: int | None) -> Iterator[str]:
    """The text of every document of ``specs``, dataset after dataset (not shuffled together
    as in memory), at most ``max_samples`` per dataset."""
    for spec in specs:
        for document in islice(_documents(spec), max_samples):
            if document.text.strip():  # empty documents hold nothing to learn (as in memory)
                yield document.text


def head_documents(
    specs: Sequence[DatasetSpec], count: int, max_samples: int | None = None
) -> list[TextDocument]:
    """The first ``count`` documents of the stream (the validation split)."""
    texts = list(islice(stream_documents(specs, max_samples), count))
    return [TextDocument(text, f"document {i + 1} of the stream") for i, text in enumerate(texts)]


class StreamedBlocks(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Pretraining blocks of ``specs``'s documents, tokenized as they are read."""

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        tokenizer: Any,
        block_size: int,
        *,
        skip_documents: int = 0,
        max_samples: int | None = None,
    ) -> None:
        self.specs = list(specs)
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.skip_documents = skip_documents
        self.max_samples = max_samples

    def _texts(self) -> Iterator[str]:
        return islice(stream_documents(self.specs, self.max_samples), self.skip_documents, None)

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        size = self.block_size
        buffer: list[int] = []
        texts = self._texts()
        while batch := list(islice(texts, _BATCH)):
            for ids in document_ids(batch, self.tokenizer):
                buffer.extend(ids)
                full = len(buffer) - len(buffer) % size
                for start in range(0, full, size):
                    block = buffer[start : start + size]
                    yield {"input_ids": block, "attention_mask": [1] * size, "labels": block}
                del buffer[:full]
        if buffer:
            yield {"input_ids": buffer, "attention_mask": [1] * len(buffer), "labels": buffer}

    def content_hash(self) -> str:
        """What a resumed run must find unchanged, without reading the corpus: each file's
        path, size and modification time, the block size and the documents skipped."""
        digest = hashlib.sha256()
        for spec in self.specs:
            for path in _files(spec):
                stat = path.stat()
                digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        digest.update(f"{self.block_size}|{self.skip_documents}|{self.max_samples}".encode())
        return digest.hexdigest()[:16]
