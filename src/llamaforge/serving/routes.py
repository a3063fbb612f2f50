"""The routes of ``llamaforge serve``: an OpenAI-compatible HTTP API over the batch scheduler.

Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming as server-sent events
with a final ``finish_reason`` chunk, ``stream_options.include_usage`` and ``[DONE]``).

Contract:

- Every error body has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``:
  400 validation (including prompt + max_tokens beyond the context, both numbers named),
  401 missing/wrong key when an API key is set, 404 unknown model or route, 429 with
  ``Retry-After`` beyond ``max_concurrent`` requests in flight, 503 (with ``Retry-After``)
  while the model loads or the server shuts down, 500 for bugs. Bodies never carry a
  traceback or a file path; those go to the log.
- Concurrent requests share decode steps (:mod:`llamaforge.serving.batching`); ``n``
  choices are separate rows of the batch.
- A client that disconnects cancels its generation before the next decode step.

Binding, loading and shutting down are :mod:`llamaforge.serving.server`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from llamaforge.errors import ConfigError, LlamaforgeError

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # the CLI prints this instead of a traceback
    raise ConfigError(
        "llamaforge serve needs the serve extra: pip install 'llamaforge[serve]'"
    ) from None
from llamaforge.serving.requests import Failed, Finished, TextPiece
from llamaforge.serving.runtime import (
    RETRY_AFTER_S,
    ClosingStream,
    GateMiddleware,
    RequestRows,
    ServerState,
    sse_event,
)
from llamaforge.serving.schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    generation_config,
)

if TYPE_CHECKING:
    from llamaforge.serving.requests import ServedModel

logger = logging.getLogger(__name__)

# How often a non-streaming handler checks whether its client went away.
DISCONNECT_POLL_S = 0.25


def _served(state: ServerState, name: str) -> ServedModel:
    assert state.pool is not None  # the gate answers 503 until the pool is set
    served = state.pool.served.get(name)
    if served is None:
        raise APIError(
            404,
            f"model '{name}' does not exist; choose one of: {', '.join(state.pool.served)}",
            param="model",
            code="model_not_found",
        )
    return served


def _encode(served: ServedModel, prompt: Any, raw: bool) -> list[int]:
    try:
        return served.engine.encode(prompt, raw=raw)
    except LlamaforgeError as e:
        raise APIError(400, str(e), param="prompt" if raw else "messages") from None


# Pydantic names the union member that failed in the error location (prompt.str,
# stop.list[str]); clients want the field.
_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none)(\[.*\])?$|\[")


def _field_path(loc: Sequence[Any]) -> list[str]:
    return [str(p) for p in loc if p != "body" and not _UNION_TAG.search(str(p))]


def create_app(
    state: ServerState,
    *,
    api_key: str | None = None,
    max_concurrent: int = 32,
) -> FastAPI:
    """The FastAPI app serving ``state``; the caller loads models into it (``set_ready``)."""

    app = FastAPI(title="llamaforge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llamaforge = state
    app.add_middleware(GateMiddleware, state=state, api_key=api_key)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        problems: dict[str, str] = {}
        for err in e.errors():
            if err.get("type") == "json_invalid":  # loc is (body, character offset)
                offset = err.get("loc", ("", "?"))[-1]
                problems.setdefault("body", f"invalid JSON at character {offset}")
                continue
            where = ".".join(_field_path(err.get("loc", ()))) or "body"
            problems.setdefault(where, err.get("msg", "invalid value"))
        message = "invalid request: " + "; ".join(
            f"{k}: {v}" for k, v in list(problems.items())[:5]
        )
        params = list(problems)
        return JSONResponse(
            error_body(message, "invalid_request_error", params[0] if params else None),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = "no such endpoint" if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(message, kind), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal server error; see the server log", "server_error"),
            status_code=500,
        )

    @app.get("/health")
    async def health() -> JSONResponse:
        scheduler = state.scheduler
        body = {
            "status": "ok" if state.phase == "ready" else state.phase,
            "in_flight": state.in_flight,
            "models": list(state.pool.served) if state.pool else [],
            "active_rows": scheduler.active if scheduler else 0,
        }
        return JSONResponse(body, status_code=200 if state.phase == "ready" else 503)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": state.created, "owned_by": "llamaforge"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        assert state.pool is not None
        return {"object": "list", "data": [model_card(name) for name in state.pool.served]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        return model_card(_served(state, name).name)

    def admit(generation: RequestRows) -> None:
        if state.in_flight >= max_concurrent:
            raise APIError(
                429,
                f"too many requests in flight (limit {max_concurrent}); retry shortly",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        state.in_flight += 1
        generation.start()

    def release(generation: RequestRows) -> None:
        generation.cancel()  # no-op for finished rows
        state.in_flight -= 1

    async def collect(generation: RequestRows, request: Request) -> list[Any] | None:
        """Every row's result; None if the client went away first."""
        results: list[Any] = [None] * len(generation.requests)
        remaining = len(results)
        while remaining:
            try:
                index, event = await asyncio.wait_for(
                    generation.events.get(), timeout=DISCONNECT_POLL_S
                )
            except TimeoutError:
                if await request.is_disconnected():
                    return None
                continue
            if isinstance(event, Finished):
                results[index] = event.result
                remaining -= 1
            elif isinstance(event, Failed):
                raise APIError(500, event.message, type="server_error")
        return results

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def respond(
        body: ChatCompletionRequest | CompletionRequest,
        request: Request,
        generation: RequestRows,
        chat: bool,
    ) -> Any:
        admit(generation)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not body.stream:
            try:
                results = await collect(generation, request)
            finally:
                release(generation)  # also stops the rows when the client is gone
            if results is None:
                return Response(status_code=499)  # nobody is listening any more
            choices = []
            for i, result in enumerate(results):
                choice: dict[str, Any] = {"index": i, "finish_reason": result.finish_reason}
                if chat:
                    choice["message"] = {"role": "assistant", "content": result.text}
                    choice["logprobs"] = None
                else:
                    choice["text"] = result.text
                    choice["logprobs"] = None
                choices.append(choice)
            completion = sum(r.completion_tokens for r in results)
            return {
                "id": ident,
                "object": kind,
                "created": created,
                "model": body.model,
                "choices": choices,
                "usage": usage(generation.prompt_tokens, completion),
            }
        return ClosingStream(
            stream_events(body, generation, ident, created, chat),
            on_close=lambda: release(generation),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream_events(
        body: ChatCompletionRequest | CompletionRequest,
        generation: RequestRows,
        ident: str,
        created: int,
        chat: bool,
    ) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        with_usage = body.include_usage

        def chunk(index: int, text: str | None, finish: str | None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": index}
            if chat:
                choice["delta"] = {} if text is None else {"content": text}
            else:
                choice["text"] = text or ""
            choice["logprobs"] = None
            choice["finish_reason"] = finish
            out = {"id": ident, "object": kind, "created": created, "model": body.model}
            out["choices"] = [choice]
            if with_usage:
                out["usage"] = None
            return out

        if chat:
            for i in range(len(generation.requests)):
                first = chunk(i, "", None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield sse_event(first)
        remaining = len(generation.requests)
        completion = 0
        while remaining:
            index, event = await generation.events.get()
            if isinstance(event, TextPiece):
                yield sse_event(chunk(index, event.text, None))
            elif isinstance(event, Finished):
                remaining -= 1
                completion += event.result.completion_tokens
                yield sse_event(chunk(index, None, event.result.finish_reason))
            else:
                generation.cancel()
                yield sse_event(error_body(event.message, "server_error"))
                break
        else:
            if with_usage:
                yield sse_event(
                    {
                        "id": ident,
                        "object": kind,
                        "created": created,
                        "model": body.model,
                        "choices": [],
                        "usage": usage(generation.prompt_tokens, completion),
                    }
                )
        yield sse_event("[DONE]")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        served = _served(state, body.model)
        body.check_supported()
        messages = body.to_messages()
        ids = _encode(served, messages, raw=False)
        gen = _generation(body, ids)
        generation = RequestRows(state, served, [(ids, messages)], gen, body.n, raw=False)
        return await respond(body, request, generation, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        served = _served(state, body.model)
        body.check_supported()
        jobs = [(_encode(served, p, raw=True), p) for p in body.prompts]
        gen = _generation(body, max(jobs, key=lambda job: len(job[0]))[0])
        generation = RequestRows(state, served, jobs, gen, body.n, raw=True)
        return await respond(body, request, generation, chat=False)

    def _generation(body: ChatCompletionRequest | CompletionRequest, ids: list[int]) -> Any:
        assert state.pool is not None
        return generation_config(
            body,
            state.defaults,
            prompt_tokens=len(ids),
            context_length=state.pool.context_length,
        )

    return app
