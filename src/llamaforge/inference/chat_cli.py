"""``llamaforge chat``: interactive multi-turn chat in the terminal.

Each user line is answered with the whole conversation so far as context (and the system
prompt, when set); the answer streams to the terminal token by token. ``/reset`` clears
the history, ``/exit`` or end of input quits, Ctrl-C during an answer stops that answer and
Ctrl-C at the prompt quits. When the history no longer fits the model's context, the
oldest turns are dropped.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from llamaforge.config import RunConfig
    from llamaforge.data.formats import Message
    from llamaforge.inference.engine import GenerationEngine

logger = logging.getLogger(__name__)

PROMPT = ">>> "
HELP = "Type a message; /reset clears the history, /exit quits."


def _fit_history(
    engine: GenerationEngine, history: list[Message], max_new_tokens: int
) -> list[Message]:
    """Drop the oldest (user, assistant) pairs until prompt + answer fit the context."""
    limit = getattr(engine.model.config, "max_position_embeddings", None)
    if not limit:
        return history
    while len(history) > 1 and len(engine.encode(history)) + max_new_tokens > limit:
        history = history[2:]
        logger.info("history too long for the model's %d-token context: dropped a turn", limit)
    return history


def chat_loop(
    engine: GenerationEngine, cfg: RunConfig, input_stream: TextIO, output_stream: TextIO
) -> int:
    """Read-answer loop on an already loaded engine. Returns the exit code."""
    from llamaforge.data.formats import Message

    history: list[Message] = []
    output_stream.write(HELP + "\n")
    while True:
        output_stream.write(PROMPT)
        output_stream.flush()
        try:
            line = input_stream.readline()
        except KeyboardInterrupt:
            output_stream.write("\n")
            return 0
        if not line:  # end of input
            output_stream.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            history = []
            output_stream.write("(history cleared)\n")
            continue
        if text.startswith("/") and " " not in text:
            output_stream.write(f"unknown command {text}; {HELP}\n")
            continue
        history = _fit_history(
            engine, [*history, Message("user", text)], cfg.generation.max_new_tokens
        )
        pieces: list[str] = []
        stream = engine.stream(history, cfg.generation)
        try:
            for piece in stream:
                pieces.append(piece)
                output_stream.write(piece)
                output_stream.flush()
        except KeyboardInterrupt:
            output_stream.write(" [stopped]")
        finally:
            stream.close()
        output_stream.write("\n")
        history.append(Message("assistant", "".join(pieces)))


def run_chat(
    cfg: RunConfig, *, input_stream: TextIO | None = None, output_stream: TextIO | None = None
) -> int:
    """The ``chat`` command: load the model named in ``cfg`` and chat until /exit."""
    from llamaforge.inference.engine import GenerationEngine

    engine = GenerationEngine.from_config(cfg)
    return chat_loop(
        engine,
        cfg,
        sys.stdin if input_stream is None else input_stream,
        sys.stdout if output_stream is None else output_stream,
    )
