"""Continuous batching: one scheduler thread owns the model and decodes every active request
together, one token per request per step.

Contract:

- :meth:`BatchScheduler.submit` takes a :class:`~llamaforge.serving.requests.GenerationRequest`
  (prompt token ids, its own sampling settings, stop strings, token budget) from any thread
  and returns at once. The request's ``on_event`` callback is then called *from the
  scheduler thread* with ``TextPiece`` events and finally exactly one ``Finished`` or
  ``Failed`` (:mod:`llamaforge.serving.requests`).
- Requests join the running batch at the next step boundary (their prompts are prefilled
  together, then their KV cache rows are merged into the batch) and leave it as soon as they
  finish or are cancelled; :meth:`GenerationRequest.cancel` takes effect before the next
  decode step, so a cancelled request costs at most the step already running.
- The pieces of one request concatenate to ``Finished.result.text``, and the result equals
  what :meth:`GenerationEngine.generate` returns for the same token ids (greedy decoding of a
  request alone gives the same tokens as ``generate``; batched rows match up to float noise).
- Sampling is per request (:class:`~llamaforge.serving.sampling.Sampler`): temperature,
  top_k, top_p, repetition_penalty, and a private ``torch.Generator`` seeded from
  ``sampling_seed``, so a seeded request gives the same text whatever else is in the batch.
  ``num_beams > 1`` runs ``GenerationEngine.generate`` on the scheduler thread (it pauses
  the batch while it runs) and arrives as one piece.
- Several served models can share one peft model: each ``ServedModel`` names its
  adapter (None = the base weights). Rows are grouped per served model, each group with its
  own cache; the adapter is switched around each group's forward pass.

Why a hand-written decode loop rather than ``model.generate``: ``generate`` runs a fixed
batch to the end, so requests arriving mid-way would wait for the slowest row. On a CPU a
batch-8 decode step costs ~1.5x a batch-1 step, which is where concurrent throughput comes
from.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from llamaforge.inference.stops import decode_tokens, first_stop, held_back
from llamaforge.serving.requests import (
    Event,
    Failed,
    Finished,
    FinishedRecord,
    GenerationRequest,
    ServedModel,
    TextPiece,
)
from llamaforge.serving.sampling import Sampler

if TYPE_CHECKING:
    import torch

    from llamaforge.inference.engine import GenerationEngine

logger = logging.getLogger(__name__)

# Between steps an idle scheduler wakes this often to notice stop().
IDLE_POLL_S = 0.1


class _Row:
    """A request's decoding state inside the batch."""

    def __init__(self, request: GenerationRequest, engine: GenerationEngine) -> None:
        self.request = request
        self.engine = engine
        self.ids: list[int] = []  # generated so far
        self.emitted = ""
        self.length = 0  # real tokens in this row's cache
        self.next_token = -1  # sampled, not yet fed to the model
        self.done = False
        self.sampler = Sampler(request.gen)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits ([V], float32), as ``generate`` would."""
        return self.sampler.pick(logits, self.request.prompt_ids, self.ids)

    def accept(self, token: int) -> list[Event]:
        """Record a sampled token; the events it produces (a piece, and the end)."""
        engine, request = self.engine, self.request
        self.ids.append(token)
        self.next_token = token
        request.generated = len(self.ids)
        finished = token in engine.stop_token_ids or len(self.ids) >= request.gen.max_new_tokens
        events: list[Event] = []
        text = decode_tokens(engine.tokenizer, self.ids)
        if not finished and first_stop(text, request.stops) is not None:
            finished = True
        if not finished:
            safe = len(text) - held_back(text, request.stops)
            if safe > len(self.emitted) and text.startswith(self.emitted):
                events.append(TextPiece(text[len(self.emitted) : safe]))
                self.emitted = text[:safe]
            return events
        self.done = True
        result = engine.make_result(self.ids, len(request.prompt_ids), request.stops)
        if not result.text.startswith(self.emitted):
            logger.warning("streamed text diverged from the final decode; check the tokenizer")
        elif len(result.text) > len(self.emitted):
            events.append(TextPiece(result.text[len(self.emitted) :]))
        events.append(Finished(result))
        return events


class _Group:
    """The rows of one served model and their shared KV cache (left-padded)."""

    def __init__(self, name: str, served: ServedModel) -> None:
        self.name = name
        self.served = served
        self.rows: list[_Row] = []
        self.cache: Any = None  # DynamicCache: per layer keys/values [B, kv_heads, L, head_dim]
        self.mask: torch.Tensor | None = None  # [B, L]: 1 where the cache holds a real token

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep``; drop cache columns no remaining row uses."""
        import torch

        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        # Left padding: once the longest rows leave, leading columns are padding for all.
        first = int(mask.any(0).nonzero()[0])
        self.mask = mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    def merge(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Append prefilled rows; the shorter side of the cache is padded on the left."""
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        self.mask = torch.cat([pad(self.mask, 1), pad(mask, 1)], dim=0)
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([pad(old.keys, 2), pad(new.keys, 2)], dim=0)
            old.values = torch.cat([pad(old.values, 2), pad(new.values, 2)], dim=0)
        self.rows = self.rows + rows


class BatchScheduler:
    """Owns ``model``; runs the decode loop for all requests on one background thread."""

    def __init__(
        self,
        model: Any,
        served: Mapping[str, ServedModel],
        *,
        max_batch_size: int = 64,
    ) -> None:
        self.model = model
        self.served = dict(served)
        self.max_batch_size = max_batch_size
        self.recent: collections.deque[FinishedRecord] = collections.deque(maxlen=1024)
        """The last finished requests, newest last (for monitoring and tests)."""
        self.steps = 0
        """Forward passes run (prefills and decode steps)."""
        self.rows = 0
        """Rows in the batch after the last step (0 once every request has left)."""
        self._inbox: queue.Queue[GenerationRequest] = queue.Queue()
        self._waiting: collections.deque[GenerationRequest] = collections.deque()
        self._groups: dict[str, _Group] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active = 0

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llamaforge-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> None:
        if request.model not in self.served:
            raise KeyError(request.model)
        with self._lock:
            self._active += 1
        self._inbox.put(request)

    @property
    def active(self) -> int:
        """Requests submitted and not yet finished (waiting or decoding)."""
        with self._lock:
            return self._active

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop; requests still running get :class:`Failed` ("shutting down")."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while not self._stop.is_set():
                self._admit(block=not self._groups)
                self._drop_cancelled()
                self._prefill_waiting()
                for name in list(self._groups):
                    self._step(self._groups[name])
        for request in self._pending_requests():
            self._end(request, Failed("the server is shutting down"), "failed", 0)
        logger.debug("batch scheduler stopped after %d forward passes", self.steps)

    def _pending_requests(self) -> Iterator[GenerationRequest]:
        for group in self._groups.values():
            yield from (row.request for row in group.rows)
        self._groups.clear()
        yield from self._waiting
        self._waiting.clear()
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit(self, block: bool) -> None:
        try:
            if block and not self._waiting:
                self._waiting.append(self._inbox.get(timeout=IDLE_POLL_S))
            while True:
                self._waiting.append(self._inbox.get_nowait())
        except queue.Empty:
            pass

    def _end(
        self,
        request: GenerationRequest,
        event: Event | None,
        outcome: Literal["stop", "length", "cancelled", "failed"],
        tokens: int,
    ) -> None:
        if event is not None:
            self._emit(request, event)
        at_cancel = request.tokens_at_cancel if outcome == "cancelled" else None
        self.recent.append(FinishedRecord(request.id, request.model, tokens, outcome, at_cancel))
        with self._lock:
            self._active -= 1

    def _emit(self, request: GenerationRequest, event: Event) -> None:
        try:
            request.on_event(event)
        except Exception:  # a consumer gone away (closed event loop) must not stop the loop
            logger.debug("request %d: event delivery failed; cancelling it", request.id)
            request.cancel()

    def _drop_cancelled(self) -> None:
        for group in list(self._groups.values()):
            keep = [i for i, row in enumerate(group.rows) if not row.request.cancelled]
            for row in group.rows:
                if row.request.cancelled:
                    self._end(row.request, None, "cancelled", len(row.ids))
            self._keep(group, keep)
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            self._end(request, None, "cancelled", 0)

    def _keep(self, group: _Group, keep: list[int]) -> None:
        group.keep(keep)
        if not group.rows:
            del self._groups[group.name]
        self.rows = sum(len(g.rows) for g in self._groups.values())

    @contextlib.contextmanager
    def _adapter(self, served: ServedModel) -> Iterator[None]:
        """Activate the served model's adapter (or none) around a forward pass."""
        if not hasattr(self.model, "peft_config"):
            yield
        elif served.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            if self.model.active_adapter != served.adapter:
                self.model.set_adapter(served.adapter)
            yield

    def _forward(self, served: ServedModel, **inputs: Any) -> tuple[torch.Tensor, Any]:
        """(last-position logits [B, V] float32, cache) of one forward pass."""
        import torch

        device = self.model.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with self._adapter(served):
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        self.steps += 1
        return out.logits[:, -1].float().cpu(), out.cache

    def _prefill_waiting(self) -> None:
        room = self.max_batch_size - sum(len(g.rows) for g in self._groups.values())
        if room <= 0 or not self._waiting:
            return
        admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        by_model: dict[str, list[GenerationRequest]] = {}
        for request in admitted:
            if request.gen.num_beams > 1:
                self._beam_search(request)
            else:
                by_model.setdefault(request.model, []).append(request)
        for name, requests in by_model.items():
            self._prefill(name, requests)

    def _prefill(self, name: str, requests: list[GenerationRequest]) -> None:
        import torch
        from transformers import DynamicCache

        served = self.served[name]
        engine = served.engine
        pad_id = engine.tokenizer.pad_token_id or 0
        width = max(len(r.prompt_ids) for r in requests)
        # input_ids, mask, positions: [n, width], left-padded like GenerationEngine.generate
        input_ids = torch.tensor(
            [[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests]
        )
        mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests]
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [_Row(r, engine) for r in requests]
        try:
            logits, cache = self._forward(
                served,
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=DynamicCache(),
            )
        except Exception:
            logger.exception("prefill failed for %d request(s) on %s", len(rows), served.name)
            for row in rows:
                self._end(row.request, Failed("generation failed on the server"), "failed", 0)
            return
        for i, row in enumerate(rows):
            row.length = len(row.request.prompt_ids)
            self._deliver(row, row.pick(logits[i]))
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(name, served)
        group.merge(rows, cache, mask.to(self.model.device))
        self._keep(group, [i for i, row in enumerate(group.rows) if not row.done])

    def _step(self, group: _Group) -> None:
        import torch

        rows = group.rows
        mask = torch.cat([group.mask, group.mask.new_ones(len(rows), 1)], dim=1)
        try:
            logits, group.cache = self._forward(
                group.served,
                input_ids=torch.tensor([[row.next_token] for row in rows]),  # [B, 1]
                attention_mask=mask,  # [B, L + 1]
                position_ids=torch.tensor([[row.length] for row in rows]),  # [B, 1]
                cache=group.cache,
            )
        except Exception:
            logger.exception("decode step failed for %d request(s)", len(rows))
            for row in rows:
                self._end(row.request, Failed("generation failed on the server"), "failed", 0)
            self._keep(group, [])
            return
        group.mask = mask
        for i, row in enumerate(rows):
            row.length += 1
            self._deliver(row, row.pick(logits[i]))
        self._keep(group, [i for i, row in enumerate(rows) if not row.done])

    def _deliver(self, row: _Row, token: int) -> None:
        for event in row.accept(token):
            if isinstance(event, Finished):
                self._end(row.request, event, event.result.finish_reason, len(row.ids))
            else:
                self._emit(row.request, event)

    def _beam_search(self, request: GenerationRequest) -> None:
        served = self.served[request.model]
        started = time.perf_counter()
        try:
            if request.prompt is None:
                raise ValueError("beam search needs the request's prompt")
            with self._adapter(served):
                result = served.engine.generate([request.prompt], request.gen, raw=request.raw)[0]
        except Exception:
            logger.exception("beam search failed for request %d", request.id)
            self._end(request, Failed("generation failed on the server"), "failed", 0)
            return
        self.steps += 1
        logger.debug("beam search took %.2f s (batch paused)", time.perf_counter() - started)
        if result.text:
            self._emit(request, TextPiece(result.text))
        self._end(request, Finished(result), result.finish_reason, result.completion_tokens)
