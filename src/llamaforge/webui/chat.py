"""The Chat tab: one loaded model (+ optional adapter) behind the batch scheduler.

Contract: :meth:`ChatBackend.load` loads a model spec and adapter directory (replacing the
previous one; requests still running on it end). :meth:`ChatBackend.reply` takes the chat
history in Gradio's messages format and yields it again after every streamed piece, the
last assistant message growing; closing the generator (the user pressed Stop, or left)
cancels the generation before its next decode step. Several browser sessions chatting at
once share decode steps, as API clients do.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge.errors import ConfigError, LlamaforgeError
from llamaforge.serving.batching import BatchScheduler
from llamaforge.serving.requests import Failed, Finished, GenerationRequest, TextPiece

if TYPE_CHECKING:
    from llamaforge.config import GenerationConfig, RunConfig
    from llamaforge.serving.model_pool import ModelPool

logger = logging.getLogger(__name__)

NO_ADAPTER = "(none)"
# A reply waits at most this long for the next piece before giving up.
PIECE_TIMEOUT_S = 600.0


def find_runs(runs_dir: str | Path) -> list[str]:
    """Run / adapter directories under ``runs_dir`` (those with adapter_config.json)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p for p in sorted(root.iterdir()) if (p / "adapter_config.json").is_file()]
    return [str(p) for p in found]


def text_of(content: Any) -> str:
    """A Gradio message's content as text (a string, or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return "".join(text_of(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text") or "")
    return ""


class ChatBackend:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.pool: ModelPool | None = None
        self.scheduler: BatchScheduler | None = None
        self.loaded: tuple[str, str | None] | None = None
        self._lock = threading.Lock()

    def load(self, model: str, adapter: str | None) -> str:
        """Load ``model`` (+ ``adapter``); returns a one-line status."""
        from llamaforge.serving.model_pool import load_model_pool

        model = (model or "").strip() or self.cfg.model.model
        adapter = (adapter or "").strip() or None
        if adapter == NO_ADAPTER:
            adapter = None
        with self._lock:
            if self.loaded == (model, adapter):
                return self.status()
            cfg = dataclasses.replace(
                self.cfg, model=dataclasses.replace(self.cfg.model, model=model, adapter=None)
            )
            pool = load_model_pool(cfg, [f"chat={adapter}"] if adapter else [])
            old = self.scheduler
            self.scheduler = BatchScheduler(pool.model, pool.served)
            self.scheduler.start()
            self.pool, self.loaded = pool, (model, adapter)
        if old is not None:
            old.stop(timeout=30)
        return self.status()

    def status(self) -> str:
        if self.loaded is None:
            return "no model loaded"
        model, adapter = self.loaded
        return f"loaded {model}" + (f" + adapter {adapter}" if adapter else "")

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop(timeout=30)

    def _served_name(self) -> str:
        assert self.pool is not None
        return "chat" if "chat" in self.pool.served else self.pool.default

    def reply(
        self,
        history: list[dict[str, Any]],
        gen: GenerationConfig,
        system_prompt: str = "",
    ) -> Iterator[list[dict[str, Any]]]:
        """Stream the answer to ``history`` (ending with the user's message)."""
        from llamaforge.config import validate_generation
        from llamaforge.data.formats import Message

        if self.pool is None or self.scheduler is None:
            self.load(self.cfg.model.model, self.cfg.model.adapter)
        assert self.pool is not None and self.scheduler is not None
        errors = validate_generation(gen)
        if errors:
            raise ConfigError("; ".join(errors))
        name = self._served_name()
        engine = self.pool.served[name].engine
        messages = [Message(m["role"], text_of(m["content"])) for m in history]
        if system_prompt.strip():
            messages.insert(0, Message("system", system_prompt.strip()))
        prompt_ids = engine.encode(messages)
        if self.pool.context_length is not None:
            room = self.pool.context_length - len(prompt_ids)
            if room < 1:
                raise ConfigError(
                    f"the conversation has {len(prompt_ids)} tokens, the model's context is "
                    f"{self.pool.context_length}; clear the chat"
                )
            gen = dataclasses.replace(gen, max_new_tokens=min(gen.max_new_tokens, room))
        events: queue.Queue[Any] = queue.Queue()
        request = GenerationRequest(
            model=name,
            prompt_ids=prompt_ids,
            gen=gen,
            stops=engine.stop_strings(gen),
            on_event=events.put,
            prompt=messages,
        )
        answer = {"role": "assistant", "content": ""}
        history = [*history, answer]
        self.scheduler.submit(request)
        try:
            while True:
                event = events.get(timeout=PIECE_TIMEOUT_S)
                if isinstance(event, TextPiece):
                    answer["content"] += event.text
                    yield history
                elif isinstance(event, Finished):
                    answer["content"] = event.result.text
                    yield history
                    return
                else:
                    assert isinstance(event, Failed)
                    raise LlamaforgeError(event.message)
        finally:
            request.cancel()  # no-op when finished; stops it when the UI stopped reading
