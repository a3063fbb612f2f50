"""Raw text → fixed-length blocks for continued pretraining.

Contract: documents are tokenized (no special tokens), each preceded by the tokenizer's
own leading special tokens (BOS, if it adds one) and followed by EOS, then concatenated
in order and cut into blocks of ``block_size`` tokens. No padding, no document dropped:
the last block may be shorter. Every token is trained (``labels`` = ``input_ids``), so a
block crosses from one document to the next only through that EOS.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from llamaforge.data.formats import Record, TextDocument
from llamaforge.data.tokenization import encode_texts, special_prefix, to_dataset
from llamaforge.errors import DataError

logger = logging.getLogger(__name__)

_BATCH = 1000


def _documents(records: Sequence[Record]) -> list[str]:
    texts = []
    empty = 0
    for record in records:
        if not isinstance(record, TextDocument):
            raise DataError(
                f"{getattr(record, 'source', '?')}: stage pt trains on raw text; this record is "
                f"a {type(record).__name__.lower()} (give `text` records, .txt files, or format: "
                "text)"
            )
        if record.text.strip():
            texts.append(record.text)
        else:
            empty += 1
    if empty:
        logger.info("skipped %d empty documents (nothing to learn from them)", empty)
    return texts


def document_ids(texts: Sequence[str], tokenizer: Any) -> Iterator[list[int]]:
    """Each document's ids with its BOS (if the tokenizer adds one) and EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"tokenizer {tokenizer.name_or_path} has no EOS token to join documents")
    prefix = list(special_prefix(tokenizer))
    for start in range(0, len(texts), _BATCH):
        for ids in encode_texts(tokenizer, list(texts[start : start + _BATCH])):
            yield [*prefix, *ids, eos]


def pretraining_blocks(
    records: Sequence[Record], tokenizer: Any, block_size: int, *, show_progress: bool = True
) -> Any:
    """TextDocument records → a ``datasets.Dataset`` of blocks (input_ids, attention_mask,
    labels), in document order."""
    texts = _documents(records)
    if not texts:
        raise DataError("no documents to train on; check `dataset` and `max_samples`")
    blocks: list[dict[str, list[int]]] = []
    buffer: list[int] = []
    for ids in tqdm(
        document_ids(texts, tokenizer),
        total=len(texts),
        desc="tokenizing",
        unit="doc",
        disable=not show_progress,
        leave=False,
    ):
        buffer.extend(ids)
        full = len(buffer) - len(buffer) % block_size
        for start in range(0, full, block_size):
            block = buffer[start : start + block_size]
            blocks.append({"input_ids": block, "attention_mask": [1] * block_size, "labels": block})
        del buffer[:full]
    if buffer:
        blocks.append({"input_ids": buffer, "attention_mask": [1] * len(buffer), "labels": buffer})
    return to_dataset(blocks)
