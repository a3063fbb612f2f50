"""The canonical record types every dataset format is read into.

Contract: :class:`Conversation` (optional system message first, then user/assistant
turns), :class:`Preference` (prompt messages, a chosen and a rejected answer) and
:class:`Feedback` (prompt messages, one answer and a desirable/undesirable label, KTO) and
:class:`TextDocument` (pretraining text). All are frozen; ``source`` says where a record
came from (``data.json: record 12 (line 57)``) for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    """``system`` | ``user`` | ``assistant``."""
    content: str
    input: str = ""
    """Alpaca ``input`` (context) of a user turn; prompt templates render it in their
    input slot, chat templates see :attr:`text`."""

    @property
    def text(self) -> str:
        """The message as one string: content, a blank line, then the input (if any)."""
        return f"{self.content}\n\n{self.input}" if self.input else self.content


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: str = ""
    """Where the record came from, e.g. ``data.json: record 12 (line 57)``."""


@dataclass(frozen=True)
class Preference:
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""


@dataclass(frozen=True)
class Feedback:
    """KTO's binary feedback: one answer to a prompt, labelled desirable or not."""

    prompt: tuple[Message, ...]
    completion: str
    label: bool
    """True: a desirable answer."""
    source: str = ""


@dataclass(frozen=True)
class TextDocument:
    text: str
    source: str = ""


Record = Conversation | Preference | Feedback | TextDocument
