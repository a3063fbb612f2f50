"""The chat client on httpx's MockTransport: retries, skips, fatal errors, budget, concurrency."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from llamaforge.errors import ConfigError
from llamaforge.selfinstruct.client import (
    BudgetSpent,
    ChatClient,
    RequestFailed,
    RequestStats,
    chat_url,
)


def completion(content: object, usage: bool = True) -> httpx.Response:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3}
    return httpx.Response(200, json=body)


def scripted(*responses: httpx.Response | type[Exception]):
    """A transport answering with ``responses`` in turn (an exception class is raised)."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        item = responses[len(seen) - 1]
        if isinstance(item, type):
            raise item("scripted", request=request)
        return item

    return httpx.MockTransport(handler), seen


def ask(transport, stats: RequestStats | None = None, **options):
    stats = stats if stats is not None else RequestStats()

    async def run():
        client = ChatClient(
            "http://fake/v1", "m", stats=stats, transport=transport, backoff_s=0, **options
        )
        try:
            return await client.chat("hello", max_tokens=5, temperature=0.5, seed=7)
        finally:
            await client.close()

    return asyncio.run(run()), stats


def test_429_5xx_timeouts_and_malformed_bodies_are_retried_until_an_answer():
    transport, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "slow"}}),
        httpx.Response(500),
        httpx.Response(503),
        httpx.ReadTimeout,
        httpx.ConnectError,
        httpx.Response(200, content=b'{"choices": [{"mess'),
        httpx.Response(200, json={"choices": []}),
        httpx.Response(200, json={"choices": [{"message": {"content": 5}}]}),
        completion("Hi there."),
    )
    reply, stats = ask(transport, max_retries=8)
    assert reply.text == "Hi there." and (reply.prompt_tokens, reply.completion_tokens) == (11, 3)
    assert stats.sent == 9 and stats.retried == 8 and stats.failed == 0
    assert stats.errors == {
        "429": 1,
        "500": 1,
        "503": 1,
        "timeout": 1,
        "connection": 1,
        "malformed": 3,
    }
    assert seen[0] == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "seed": 7,
    }
    assert all(body == seen[0] for body in seen)


def test_a_request_is_given_up_after_its_retries_and_a_400_is_not_retried():
    transport, seen = scripted(*[httpx.Response(500)] * 3)
    with pytest.raises(RequestFailed, match="no answer after 3 attempts"):
        ask(transport, max_retries=2)
    assert len(seen) == 3

    transport, seen = scripted(httpx.Response(400, json={"error": {"message": "too long"}}))
    stats = RequestStats()
    with pytest.raises(RequestFailed, match="400: too long"):
        ask(transport, stats)
    assert len(seen) == 1 and stats.failed == 1 and stats.errors == {"400": 1}


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_wrong_endpoint_model_or_key_stops_the_run(status):
    transport, seen = scripted(httpx.Response(status, json={"error": {"message": "no model m"}}))
    with pytest.raises(ConfigError, match=rf"answered {status} for model 'm': no model m; check"):
        ask(transport)
    assert len(seen) == 1


def test_empty_and_null_content_are_answers_not_errors():
    for content in ("", None, "  \n"):
        transport, _ = scripted(completion(content, usage=False))
        reply, stats = ask(transport)
        assert reply.text.strip() == "" and (reply.prompt_tokens, reply.completion_tokens) == (0, 0)
        assert stats.empty == 1 and stats.sent == 1 and stats.retried == 0


def test_the_budget_counts_every_attempt_and_carries_over():
    transport, seen = scripted(httpx.Response(500), httpx.Response(500), completion("x"))
    stats = RequestStats(sent=8)  # a resumed run: 8 requests spent in earlier sessions
    with pytest.raises(BudgetSpent, match="budget of 10 spent"):
        ask(transport, stats, max_requests=10)
    assert len(seen) == 2 and stats.sent == 10


def test_no_more_than_concurrency_requests_are_on_the_wire():
    active = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return completion("ok")

    async def run() -> list[str]:
        client = ChatClient(
            "http://fake",
            "m",
            stats=RequestStats(),
            transport=httpx.MockTransport(handler),
            concurrency=3,
        )
        try:
            replies = await asyncio.gather(
                *(client.chat(str(i), max_tokens=1, temperature=0, seed=i) for i in range(12))
            )
        finally:
            await client.close()
        return [r.text for r in replies]

    assert asyncio.run(run()) == ["ok"] * 12
    assert peak == 3


def test_endpoint_forms():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("https://api.x/v1/chat/completions") == "https://api.x/v1/chat/completions"
