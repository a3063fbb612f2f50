"""A small client for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Contract: :meth:`ChatClient.chat` sends one user message and returns the answer's text and
token usage. At most ``concurrency`` requests are on the wire at once. A 429, a 5xx, a
timeout, a dropped connection or a body that is not a chat completion (malformed JSON,
no ``choices``) is retried up to ``max_retries`` times with exponential backoff (the
server's ``Retry-After`` when it sends one, capped at ``max_backoff_s``); then, and on a
400-class refusal of that one request, :class:`RequestFailed` is raised for the caller to
skip it. 401/403/404 mean the endpoint, key or model name is wrong for every request:
a ConfigError. ``max_requests`` caps the HTTP requests of the run, retries included
(:class:`BudgetSpent`). An answer with empty content is returned as ``""`` (not retried:
the model did answer). Every outcome is counted in :class:`RequestStats`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from llamaforge.errors import ConfigError

FATAL_STATUSES = (401, 403, 404)


class RequestFailed(Exception):
    """One request that could not be answered (after its retries); the caller skips it."""


class BudgetSpent(Exception):
    """The run's request budget (``--max-requests``) is used up."""


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class RequestStats:
    """HTTP requests of a run (resumed runs carry on from the journal's counts)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    empty: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "429", "500", "timeout", ...

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestStats:
        return cls(**{**data, "errors": dict(data.get("errors", {}))})


def chat_url(endpoint: str) -> str:
    """``http://host:port``, ``.../v1`` or the full ``.../v1/chat/completions`` URL → the last."""
    url = endpoint.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _reply(body: Any) -> Reply:
    """The answer of a chat-completion body; ValueError when it is not one."""
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0].message") from None
    content = message.get("content") if isinstance(message, dict) else None
    if content is not None and not isinstance(content, str):
        raise ValueError("message content is not a string")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Reply(
        content or "",
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )


class ChatClient:
    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        stats: RequestStats,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_requests: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = chat_url(endpoint)
        self.model = model
        self.stats = stats
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_requests = max_requests
        self._slots = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    def budget_left(self) -> bool:
        return self.max_requests is None or self.stats.sent < self.max_requests

    async def chat(self, content: str, *, max_tokens: int, temperature: float, seed: int) -> Reply:
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
        }
        for attempt in range(self.max_retries + 1):
            wait = await self._attempt(payload)
            if isinstance(wait, Reply):
                return wait
            if attempt == self.max_retries:
                break
            self.stats.retried += 1
            backoff = min(self.backoff_s * 2**attempt, self.max_backoff_s)
            await asyncio.sleep(min(wait, self.max_backoff_s) if wait is not None else backoff)
        self.stats.failed += 1
        raise RequestFailed(f"no answer after {self.max_retries + 1} attempts")

    async def _attempt(self, payload: dict[str, Any]) -> Reply | float | None:
        """The reply, or the seconds to wait before retrying (None: the default backoff)."""
        if not self.budget_left():
            raise BudgetSpent(f"request budget of {self.max_requests} spent")
        self.stats.sent += 1
        async with self._slots:
            try:
                response = await self._http.post(self.url, json=payload)
            except httpx.TimeoutException:
                self.stats.count_error("timeout")
                return None
            except httpx.TransportError:
                self.stats.count_error("connection")
                return None
        status = response.status_code
        if status in FATAL_STATUSES:
            raise ConfigError(
                f"{self.url} answered {status} for model '{self.model}': "
                f"{_error_message(response)}; check --endpoint, --model and --api-key"
            )
        if status == 429 or status >= 500:
            self.stats.count_error(str(status))
            return _retry_after(response)
        if status != 200:
            self.stats.count_error(str(status))
            self.stats.failed += 1
            raise RequestFailed(f"{status}: {_error_message(response)}")
        try:
            reply = _reply(json.loads(response.content))
        except ValueError:  # JSONDecodeError included
            self.stats.count_error("malformed")
            return None
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        if not reply.text.strip():
            self.stats.empty += 1
        return reply
