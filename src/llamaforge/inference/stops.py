"""Stop strings and decoding: where a completion ends and which of its text is safe to show.

Shared by :mod:`llamaforge.inference.engine` (``generate`` and ``stream``) and the batch
scheduler of :mod:`llamaforge.serving`, so every path turns the same token ids into the
same text:

- :func:`decode_tokens` / :func:`decode_token_rows`: token ids → text, special tokens
  dropped, spacing left as generated.
- :func:`first_stop`: where the earliest stop string starts in a text.
- :func:`held_back`: how many trailing characters a stream must not show yet (an incomplete
  UTF-8 character, or the start of what may become a stop string).
- :func:`trim_completion`: generated ids → the completion's text and ids, cut at the first
  stop token or stop string, with its finish reason.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Literal, cast

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]


def decode_tokens(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """The text of ``ids`` without special tokens, spacing exactly as generated."""
    # generate(), stream() and the batch scheduler all decode here, so their texts agree.
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return cast("str", text)  # a str for one row of ids


def decode_token_rows(tokenizer: PreTrainedTokenizerBase, rows: list[list[int]]) -> list[str]:
    """:func:`decode_tokens` for each row of a batch."""
    return tokenizer.batch_decode(
        rows, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text`` (None when there is none)."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` not safe to show yet.

    An incomplete UTF-8 character decodes to U+FFFD, and a suffix that starts a stop string
    may turn out to be the stop string (which is never shown).
    """
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold


def trim_completion(
    tokenizer: PreTrainedTokenizerBase,
    generated: Sequence[int],
    stop_token_ids: Collection[int],
    stops: Sequence[str],
) -> tuple[str, list[int], FinishReason]:
    """(text, token ids, finish reason) of one generated row.

    The ids end at the first stop token (kept in the ids, never in the text) or at the
    fewest tokens whose text contains a stop string (the text is cut before it); the reason
    is ``stop`` then, ``length`` when neither occurs.
    """
    ids = list(generated)
    stop_token = next((i for i, t in enumerate(ids) if t in stop_token_ids), None)
    if stop_token is not None:
        # Past this point a batch row holds only padding (often the same id as EOS).
        ids = ids[: stop_token + 1]
        text = decode_tokens(tokenizer, ids[:-1])
    else:
        text = decode_tokens(tokenizer, ids)
    cut = first_stop(text, stops)
    if cut is None:
        return text, ids, "stop" if stop_token is not None else "length"
    # The fewest tokens whose text contains the stop string (containment grows with n).
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if first_stop(decode_tokens(tokenizer, ids[:mid]), stops) is None:
            lo = mid + 1
        else:
            hi = mid
    return text[:cut], ids[:lo], "stop"
