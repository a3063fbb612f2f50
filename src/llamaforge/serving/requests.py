"""What goes into the batch scheduler and what comes out of it.

Contract:

- A :class:`GenerationRequest` carries prompt token ids, its own sampling settings, stop
  strings, a token budget and an ``on_event`` callback; it is built on any thread and handed
  to :meth:`llamaforge.serving.batching.BatchScheduler.submit`.
- The callback receives :class:`TextPiece` events and finally exactly one :class:`Finished`
  (holding the :class:`~llamaforge.inference.engine.GenerationResult`) or :class:`Failed`.
- A :class:`ServedModel` is a model name clients can ask for: an engine + a peft adapter.
- Each request that leaves the scheduler leaves a :class:`FinishedRecord` behind.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from llamaforge.inference.engine import GenerationResult

if TYPE_CHECKING:
    from llamaforge.config import GenerationConfig
    from llamaforge.data.formats import Message
    from llamaforge.inference.engine import GenerationEngine


@dataclasses.dataclass(frozen=True)
class TextPiece:
    text: str


@dataclasses.dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclasses.dataclass(frozen=True)
class Failed:
    message: str
    """Safe to show a client: no traceback, no paths (those go to the log)."""


Event = TextPiece | Finished | Failed


@dataclasses.dataclass(frozen=True)
class FinishedRecord:
    """What happened to one request (kept in ``BatchScheduler.recent`` for monitoring)."""

    request_id: int
    model: str
    completion_tokens: int
    outcome: Literal["stop", "length", "cancelled", "failed"]
    tokens_at_cancel: int | None = None
    """Tokens generated when ``cancel()`` was called (None: never cancelled)."""


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A model name clients can ask for: an engine (tokenizer, template, stops) + adapter."""

    name: str
    engine: GenerationEngine
    adapter: str | None = None
    """The peft adapter to activate; None runs the base weights (adapters disabled)."""


_ids = itertools.count(1)


class GenerationRequest:
    """One generation: prompt ids, settings, and the callback that receives its events."""

    def __init__(
        self,
        *,
        model: str,
        prompt_ids: Sequence[int],
        gen: GenerationConfig,
        stops: Sequence[str],
        on_event: Callable[[Event], None],
        prompt: Sequence[Message] | str | None = None,
        raw: bool = False,
    ) -> None:
        self.id = next(_ids)
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.gen = gen
        self.stops = tuple(stops)
        self.on_event = on_event
        self.prompt = prompt
        """The prompt itself; needed only for beam search (``GenerationEngine.generate``)."""
        self.raw = raw
        self.generated = 0
        """Tokens generated so far (written by the scheduler thread)."""
        self.tokens_at_cancel: int | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating before the next decode step (thread-safe, idempotent)."""
        if not self._cancelled.is_set():
            self.tokens_at_cancel = self.generated
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()
