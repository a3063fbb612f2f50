"""The per-request machinery of the API server (:mod:`llamaforge.serving.routes`).

Contract:

- :class:`ServerState`: what is served and the server's phase (loading, ready, stopping,
  failed) plus the count of requests in flight.
- :class:`GateMiddleware`: 401 without the right API key, 503 unless ready, answered
  before the request body is even parsed.
- :class:`RequestRows`: one API request's rows in the batch scheduler; their events are
  handed from the scheduler thread to an asyncio queue.
- :class:`ClosingStream`: a streaming response that always runs its ``on_close`` (cancel
  the rows, free the slot), whether the stream finished, failed or the client left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from fastapi.responses import JSONResponse, StreamingResponse

from llamaforge.serving.requests import Event, GenerationRequest
from llamaforge.serving.schema import APIError

if TYPE_CHECKING:
    from llamaforge.config import GenerationConfig
    from llamaforge.serving.batching import BatchScheduler
    from llamaforge.serving.model_pool import ModelPool
    from llamaforge.serving.requests import ServedModel

Phase = Literal["loading", "ready", "stopping", "failed"]
RETRY_AFTER_S = "1"


class ServerState:
    """What the app serves, and where the server is in its life."""

    def __init__(self, defaults: GenerationConfig) -> None:
        self.phase: Phase = "loading"
        self.defaults = defaults
        self.pool: ModelPool | None = None
        self.scheduler: BatchScheduler | None = None
        self.in_flight = 0
        self.error: BaseException | None = None
        self.created = int(time.time())

    def set_ready(self, pool: ModelPool, scheduler: BatchScheduler) -> None:
        self.pool, self.scheduler = pool, scheduler
        if self.phase == "loading":
            self.phase = "ready"


def gate_error(state: ServerState, headers: dict[str, str], api_key: str | None) -> APIError | None:
    """401 without the right key, 503 unless ready; checked before the body is parsed."""
    if api_key is not None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), api_key.encode()
        ):
            return APIError(
                401,
                "missing or incorrect API key; send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )
    if state.phase != "ready":
        what = "loading the model" if state.phase == "loading" else "shutting down"
        return APIError(
            503,
            f"the server is {what}; retry shortly",
            type="server_error",
            code="service_unavailable",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    return None


class GateMiddleware:
    """ASGI middleware applying :func:`gate_error` to ``/v1/`` routes. (Plain ASGI rather
    than ``@app.middleware``: BaseHTTPMiddleware buffers streams and hides disconnects.)"""

    def __init__(self, app: Any, state: ServerState, api_key: str | None) -> None:
        self.app, self.state, self.api_key = app, state, api_key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            error = gate_error(self.state, headers, self.api_key)
            if error is not None:
                response = JSONResponse(
                    error.body(), status_code=error.status, headers=error.headers
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def sse_event(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


class RequestRows:
    """The rows of one API request in the scheduler, with their events on an asyncio queue."""

    def __init__(
        self,
        state: ServerState,
        served: ServedModel,
        jobs: Sequence[tuple[list[int], Any]],
        gen: GenerationConfig,
        n: int,
        raw: bool,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.requests: list[GenerationRequest] = []
        self.prompt_tokens = sum(len(ids) for ids, _ in jobs)
        stops = served.engine.stop_strings(gen, raw=raw)
        for ids, prompt in jobs:
            for j in range(n):
                index = len(self.requests)
                row_gen = gen
                if gen.sampling_seed is not None and j:
                    # n seeded choices differ from each other and are each reproducible.
                    row_gen = dataclasses.replace(
                        gen, sampling_seed=(gen.sampling_seed + j) % 2**63
                    )
                self.requests.append(
                    GenerationRequest(
                        model=served.name,
                        prompt_ids=ids,
                        gen=row_gen,
                        stops=stops,
                        on_event=self._callback(index),
                        prompt=prompt,
                        raw=raw,
                    )
                )
        self.state = state

    def _callback(self, index: int) -> Callable[[Event], None]:
        def deliver(event: Event) -> None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))

        return deliver

    def start(self) -> None:
        assert self.state.scheduler is not None
        for request in self.requests:
            self.state.scheduler.submit(request)

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()


class ClosingStream(StreamingResponse):
    """A streaming response that always runs ``on_close`` (finished, failed, or the
    client gone), even when the body iterator never started."""

    def __init__(self, content: Any, *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
