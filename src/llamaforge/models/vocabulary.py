"""Vocabulary extension for byte-level BPE tokenizers: new merges, new embedding rows.

Contract of :func:`learn_vocabulary`: the new tokens are learned by *continuing* the
tokenizer's own BPE on a corpus, so they are ordinary vocabulary entries reached by merges
(never added/special tokens, which are matched before pre-tokenization):

- the corpus is normalized and pre-tokenized exactly as the tokenizer does, and each piece
  is encoded with the old BPE; BPE then goes on from those old tokens (the tokenizers
  library's ``BpeTrainer``, each old token standing for one symbol of its alphabet);
- every new merge is ranked after all old merges and yields a string that was not in the
  vocabulary. BPE applies the lowest-ranked merge first, so every old merge has fired before
  a new one can: text the new merges do not touch encodes to exactly the old ids, and text
  they do touch contains a new token. Old ids keep their tokens, and decoding stays lossless
  (a new token is the concatenation of the old byte-level tokens it replaces);
- new ids start after the last id in use (vocabulary and added tokens).

:func:`resize_embeddings` grows the input embeddings (and an untied lm_head) and sets each new
row to the mean of the rows of the old tokens it replaces in the corpus: a new token starts
as the average of what it stands for, and no old row changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tqdm.auto import tqdm

from llamaforge.errors import ModelError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

SYMBOL_OFFSET = 0x10000
"""Old token id ``i`` is the trainer's symbol ``chr(SYMBOL_OFFSET + i)``: code points past the
Basic Multilingual Plane hold no whitespace and no surrogates, so the trainer's whitespace
split never cuts a word and every id up to ~1.05 M has its own symbol."""
MAX_SYMBOLS = 0x110000 - SYMBOL_OFFSET
SUPPORTED = (
    "byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM2 style: a BPE model with a "
    "ByteLevel pre-tokenizer and decoder); SentencePiece tokenizers (Llama 2, Mistral) need a "
    "SentencePiece merge instead (e.g. Chinese-LLaMA's merge_tokenizers.py)"
)
# Extra merges asked of the trainer beyond N: some learned merges are dropped (their result
# was already an old token), and a second pass with a larger margin costs a full retrain.
MARGIN = 0.05


@dataclass(frozen=True)
class VocabularyExtension:
    """The extended tokenizer and, per new token, the old ids it replaces."""

    tokenizer: Tokenizer
    first_id: int
    """Id of the first new token; the new tokens have ids ``first_id ...``."""
    tokens: tuple[str, ...]
    """The new tokens (byte-level strings), in id order."""
    pieces: tuple[tuple[int, ...], ...]
    """For each new token, the old token ids it replaces (its embedding is their mean)."""
    merges: int
    """New merges added (≥ ``len(tokens)``: two merges may build the same string)."""
    dropped: int
    """Learned merges left out because their result already was an old token."""


EXTENSION_RECORD = "vocabulary_extension.json"
"""Written into an extended model's directory: which token ids the extension added."""


@dataclass(frozen=True)
class VocabularyRecord:
    """What ``tokenizer extend`` added to a model (``EXTENSION_RECORD`` in its directory)."""

    base_model: str
    first_new_id: int
    added: int

    @property
    def new_ids(self) -> list[int]:
        return list(range(self.first_new_id, self.first_new_id + self.added))


def write_extension_record(directory: Path, record: VocabularyRecord) -> None:
    (directory / EXTENSION_RECORD).write_text(
        json.dumps(dataclasses.asdict(record), indent=1) + "\n", encoding="utf-8"
    )


def read_extension_record(directory: Path) -> VocabularyRecord | None:
    """The extension record of a model directory (None: not made by ``tokenizer extend``)."""
    path = directory / EXTENSION_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return VocabularyRecord(
            str(data["base_model"]), int(data["first_new_id"]), int(data["added"])
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelError(
            f"{path}: unreadable ({e}); re-run `llamaforge tokenizer extend`"
        ) from None


def _kinds(node: dict[str, Any] | None, children: str) -> list[str]:
    """The component types of a pre-tokenizer/decoder, ``Sequence`` flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [kind for child in node.get(children, []) for kind in _kinds(child, children)]
    return [str(node.get("type"))]


def check_byte_level_bpe(backend: Tokenizer, name: str) -> dict[str, Any]:
    """The tokenizer's JSON, or a ModelError saying what is supported."""
    data: dict[str, Any] = json.loads(backend.to_str())
    model = data.get("model") or {}
    pre = _kinds(data.get("pre_tokenizer"), "pretokenizers")
    decoder = _kinds(data.get("decoder"), "decoders")
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"its model is {model.get('type')}, not BPE")
    if "ByteLevel" not in pre:
        problems.append(f"its pre-tokenizer is {'+'.join(pre) or 'none'}, without ByteLevel")
    if "ByteLevel" not in decoder:
        problems.append(f"its decoder is {'+'.join(decoder) or 'none'}, without ByteLevel")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("it marks subwords with a prefix/suffix")
    if problems:
        raise ModelError(
            f"cannot extend the tokenizer of {name}: {'; '.join(problems)}. Supported: {SUPPORTED}"
        )
    return data


def piece_counts(
    backend: Tokenizer, texts: Iterable[str], *, show_progress: bool = True
) -> Counter:
    """How often each pre-tokenized piece (byte-level string) occurs in ``texts``."""
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    counts: Counter[str] = Counter()
    for text in tqdm(texts, desc="reading corpus", unit="doc", disable=not show_progress):
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        counts.update(piece for piece, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


def _symbol_words(backend: Tokenizer, counts: Counter) -> dict[str, int]:
    """Each piece the old BPE leaves in ≥ 2 tokens, as a word of old-token symbols → count."""
    words: dict[str, int] = {}
    for piece, count in counts.items():
        ids = [token.id for token in backend.model.tokenize(piece)]
        if len(ids) > 1:
            word = "".join(chr(SYMBOL_OFFSET + i) for i in ids)
            words[word] = words.get(word, 0) + count
    return words


def _train_merges(
    words: dict[str, int], size: int, min_frequency: int, show_progress: bool
) -> list[tuple[str, str]]:
    """``size`` BPE merges over symbol words, most frequent pair first (tokenizers' trainer)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from tokenizers.trainers import BpeTrainer

    alphabet = {symbol for word in words for symbol in word}
    trainer = BpeTrainer(
        vocab_size=len(alphabet) + size,
        min_frequency=min_frequency,
        # Its bars go to the terminal; when stdout is not one it writes blank lines there.
        show_progress=show_progress and sys.stdout.isatty(),
        limit_alphabet=len(alphabet),
    )
    symbols = Tokenizer(BPE())
    symbols.pre_tokenizer = WhitespaceSplit()

    def occurrences() -> Iterator[list[str]]:
        for word, count in words.items():
            yield [word] * count  # the trainer counts words itself: one sequence per occurrence

    symbols.train_from_iterator(occurrences(), trainer, length=len(words))
    merges = json.loads(symbols.to_str())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [(left, right) for left, right in pairs]


def _append_merges(
    data: dict[str, Any], first_id: int, learned: list[tuple[str, str]], add: int
) -> tuple[list[str], list[tuple[int, ...]], int, int]:
    """Append learned merges to the tokenizer JSON ``data`` (in place) until ``add`` new tokens.
    Returns (new tokens, their old pieces, merges added, merges dropped)."""
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    old_tokens = {i: token for token, i in vocab.items()}

    def text(word: str) -> str:
        return "".join(old_tokens[ord(symbol) - SYMBOL_OFFSET] for symbol in word)

    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    seen = {tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]}
    tokens: list[str] = []
    pieces: list[tuple[int, ...]] = []
    added = dropped = 0
    for left_word, right_word in learned:
        if len(tokens) == add:
            break
        left, right = text(left_word), text(right_word)
        result = left + right
        if result in vocab and vocab[result] < first_id:
            # Merging into an old token would re-segment text that has no new token (and let
            # old merges fire after new ones): leave it out.
            dropped += 1
            continue
        if (left, right) in seen:
            continue  # two symbol pairs that spell the same strings: the first one's rank holds
        if result not in vocab:
            vocab[result] = first_id + len(tokens)
            tokens.append(result)
            pieces.append(tuple(ord(s) - SYMBOL_OFFSET for s in left_word + right_word))
        model["merges"].append(f"{left} {right}" if as_strings else [left, right])
        seen.add((left, right))
        added += 1
    return tokens, pieces, added, dropped


def first_free_id(data: dict[str, Any]) -> int:
    """One past the largest id the tokenizer uses (vocabulary and added tokens)."""
    ids = [*data["model"]["vocab"].values(), *(t["id"] for t in data.get("added_tokens") or ())]
    return max(ids, default=-1) + 1


def learn_vocabulary(
    backend: Tokenizer,
    texts: Sequence[str],
    add: int,
    *,
    name: str = "the model",
    min_frequency: int = 2,
    show_progress: bool = True,
) -> VocabularyExtension:
    """Learn up to ``add`` new tokens from ``texts`` as BPE merges (see the module docstring).

    Fewer come back (with a warning) when the corpus has no more pairs seen at least
    ``min_frequency`` times.
    """
    from tokenizers import Tokenizer

    if add <= 0:
        raise ModelError(f"the number of tokens to add must be positive, got {add}")
    data = check_byte_level_bpe(backend, name)
    first_id = first_free_id(data)
    if first_id > MAX_SYMBOLS:
        raise ModelError(f"{name}: {first_id} token ids are more than {MAX_SYMBOLS} (supported)")
    words = _symbol_words(backend, piece_counts(backend, texts, show_progress=show_progress))
    if not words:
        raise ModelError("the corpus has no text the tokenizer splits into several tokens")
    requested = add + max(16, int(add * MARGIN))
    while True:
        learned = _train_merges(words, requested, min_frequency, show_progress)
        model = data["model"]  # a fresh vocabulary and merge list per attempt:
        trial = {
            **data,
            "model": {**model, "vocab": dict(model["vocab"]), "merges": [*model["merges"]]},
        }
        tokens, pieces, added, dropped = _append_merges(trial, first_id, learned, add)
        exhausted = len(learned) < requested
        if len(tokens) == add or exhausted:
            break
        requested += max(dropped, add - len(tokens)) * 2  # more dropped than the margin
    if len(tokens) < add:
        logger.warning(
            "learned %d of %d tokens: no other pair occurs %d+ times in the corpus; give more "
            "text or a smaller number",
            len(tokens),
            add,
            min_frequency,
        )
    logger.info(
        "learned %d tokens (%d merges; %d merges left out: their result was an old token)",
        len(tokens),
        added,
        dropped,
    )
    extended = Tokenizer.from_str(json.dumps(trial))
    return VocabularyExtension(extended, first_id, tuple(tokens), tuple(pieces), added, dropped)


def tokens_per_char(backend: Tokenizer, texts: Sequence[str]) -> float:
    """Tokens per character of ``texts`` (no special tokens added)."""
    chars = sum(len(text) for text in texts)
    if not chars:
        return 0.0
    encodings = backend.encode_batch(list(texts), add_special_tokens=False)
    return sum(len(e.ids) for e in encodings) / chars


def resize_embeddings(
    model: PreTrainedModel, first_id: int, pieces: Sequence[Sequence[int]]
) -> int:
    """Give the new ids ``first_id ...`` embedding rows, each the mean of its ``pieces`` rows,
    in the input embeddings and an untied lm_head; returns the new number of rows.

    Rows past the tokenizer (padding rows some checkpoints carry) are reused before growing.
    """
    import torch

    def weights() -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input embedding matrix [V, H], lm_head matrix [V, H] or None when tied/absent)."""
        embedding = cast(torch.Tensor, model.get_input_embeddings().weight)
        output = model.get_output_embeddings()
        lm_head = None if output is None else cast(torch.Tensor, output.weight)
        return embedding, None if lm_head is embedding else lm_head

    embedding, lm_head = weights()
    rows = int(embedding.shape[0])
    if rows < first_id:
        raise ModelError(
            f"the model has {rows} embedding rows but its tokenizer uses ids up to "
            f"{first_id - 1}; the tokenizer does not belong to this model"
        )
    with torch.no_grad():  # [K, H]: one mean row per new token, from the old rows
        means = [
            None if w is None else torch.stack([w[list(p)].mean(0) for p in pieces])
            for w in (embedding, lm_head)
        ]
    new_rows = max(rows, first_id + len(pieces))
    if new_rows != rows:
        # mean_resizing=False: its covariance-matched random rows are overwritten just below.
        model.resize_token_embeddings(new_rows, mean_resizing=False)
    end = first_id + len(pieces)
    with torch.no_grad():
        for weight, mean in zip(weights(), means, strict=True):
            if weight is not None and mean is not None:
                weight[first_id:end] = mean
    return new_rows
