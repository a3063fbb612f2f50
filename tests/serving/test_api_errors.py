"""Every documented error of the API server: status, OpenAI-shaped body, no internals leaked."""

from __future__ import annotations

import json
import threading

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "sk-test-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def check_error(response, status: int, *, type: str, param=None, code=None) -> str:
    """Assert the OpenAI error shape; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code
    for leak in ("Traceback", "site-packages", "/secret", '.py"', "File "):
        assert leak not in response.text
    return body["error"]["message"]


@pytest.fixture(scope="module")
def server(tiny_pool, serve):
    with serve(tiny_pool, api_key=KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def model(tiny_pool) -> str:
    return tiny_pool.default


def chat(model, content="Hi", **extra):
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


# ---------------------------------------------------------------------------- 401


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"X-Api-Key": KEY}],
)
def test_missing_or_wrong_key_is_401(server, model, headers):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat(model), headers=headers)
    message = check_error(r, 401, type="invalid_request_error", code="invalid_api_key")
    assert "Authorization: Bearer" in message
    r = httpx.get(f"{server.url}/v1/models", headers=headers)
    check_error(r, 401, type="invalid_request_error", code="invalid_api_key")


def test_key_is_checked_before_the_body(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json")
    check_error(r, 401, type="invalid_request_error", code="invalid_api_key")


def test_right_key_works_and_health_needs_none(server, client, model):
    r = client.post("/v1/chat/completions", json=chat(model, max_tokens=3, temperature=0))
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 3
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["models"] == [model]


# ---------------------------------------------------------------------------- 400


@pytest.mark.parametrize(
    ("payload", "param", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model", "Field required"),
        ({"model": "M"}, "messages", "Field required"),
        ({"model": "M", "messages": []}, "messages", "at least 1"),
        (chat("M", temperature=3), "temperature", "less than or equal to 2"),
        (chat("M", temperature="hot"), "temperature", "valid number"),
        (chat("M", top_p=0), "top_p", "greater than 0"),
        (chat("M", n=0), "n", "greater than or equal to 1"),
        (chat("M", n=17), "n", "less than or equal to 16"),
        (chat("M", max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (chat("M", seed=-1), "seed", "greater than or equal to 0"),
        (chat("M", num_beams=9), "num_beams", "less than or equal to 8"),
        (chat("M", stop=["a"] * 17), "stop", "at most 16"),
        (chat("M", logprobs=True), "logprobs", "not supported"),
        (chat("M", tools=[{"type": "function"}]), "tools", "not supported"),
        (chat("M", presence_penalty=0.5), "presence_penalty", "repetition_penalty"),
        (chat("M", logit_bias={"50": 1}), "logit_bias", "not supported"),
        (chat("M", response_format={"type": "json_object"}), "response_format", "json_object"),
        (
            {"model": "M", "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role",
            "'system', 'developer', 'user' or 'assistant'",
        ),
        (
            {
                "model": "M",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            "messages[0].content[0]",
            "content type 'image_url' is not supported",
        ),
        (
            {"model": "M", "messages": [{"role": "assistant", "content": "x"}]},
            "messages",
            "message 0 is from the assistant, expected the user",
        ),
        (
            {
                "model": "M",
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "b"},
                ],
            },
            "messages[1].role",
            "must come before",
        ),
    ],
)
def test_invalid_chat_requests_are_400(client, model, payload, param, fragment):
    payload = json.loads(json.dumps(payload).replace('"M"', json.dumps(model)))
    r = client.post("/v1/chat/completions", json=payload)
    message = check_error(r, 400, type="invalid_request_error", param=param)
    assert fragment in message


@pytest.mark.parametrize(
    ("payload", "param", "fragment"),
    [
        ({"model": "M", "prompt": "x", "echo": True}, "echo", "not supported"),
        ({"model": "M", "prompt": []}, "prompt", "1 to 16"),
        ({"model": "M", "prompt": ["a", "b"], "n": 9}, "n", "at most 16"),
        ({"model": "M", "prompt": "x", "best_of": 3}, "best_of", "use n"),
        ({"model": "M", "prompt": 5}, "prompt", "valid string"),
    ],
)
def test_invalid_completion_requests_are_400(client, model, payload, param, fragment):
    payload = {**payload, "model": model}
    r = client.post("/v1/completions", json=payload)
    message = check_error(r, 400, type="invalid_request_error", param=param)
    assert fragment in message


def test_malformed_json_is_400(client):
    r = client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"Content-Type": "application/json"}
    )
    message = check_error(r, 400, type="invalid_request_error", param="body")
    assert message == "invalid request: body: invalid JSON at character 10"


def test_prompt_plus_max_tokens_beyond_context_is_400_naming_both(client, model, tiny_pool):
    prompt_tokens = len(tiny_pool.served[model].engine.encode("Hi"))
    assert tiny_pool.context_length == 256
    r = client.post("/v1/chat/completions", json=chat(model, max_tokens=300))
    message = check_error(
        r, 400, type="invalid_request_error", param="max_tokens", code="context_length_exceeded"
    )
    assert "maximum context length is 256 tokens" in message
    assert f"{prompt_tokens} prompt tokens + max_tokens 300 = {prompt_tokens + 300}" in message
    assert f"at most {256 - prompt_tokens}" in message
    # The largest budget that fits is accepted.
    ok = client.post("/v1/chat/completions", json=chat(model, max_tokens=256 - prompt_tokens, n=1))
    assert ok.status_code == 200
    # max_completion_tokens (what newer clients send) is checked the same way.
    r = client.post("/v1/chat/completions", json=chat(model, max_completion_tokens=999))
    message = check_error(
        r,
        400,
        type="invalid_request_error",
        param="max_completion_tokens",
        code="context_length_exceeded",
    )
    assert "max_completion_tokens 999" in message


def test_prompt_alone_beyond_context_is_400(client, model, tiny_pool):
    prompt = "word " * 400
    tokens = len(tiny_pool.served[model].engine.encode(prompt, raw=True))
    assert tokens > 256
    r = client.post("/v1/completions", json={"model": model, "prompt": prompt})
    message = check_error(
        r, 400, type="invalid_request_error", param="prompt", code="context_length_exceeded"
    )
    assert message == (
        f"this model's maximum context length is 256 tokens, but the prompt has {tokens} "
        "tokens; shorten it"
    )


# ---------------------------------------------------------------------------- 404 / 405


def test_unknown_model_is_404(client, model):
    for path, payload in (
        ("/v1/chat/completions", chat("gpt-4")),
        ("/v1/completions", {"model": "gpt-4", "prompt": "x"}),
    ):
        message = check_error(
            client.post(path, json=payload),
            404,
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )
        assert "'gpt-4' does not exist" in message and model in message
    check_error(
        client.get("/v1/models/gpt-4"),
        404,
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def test_unknown_route_and_wrong_method(client):
    check_error(client.get("/v1/nothing"), 404, type="not_found_error")
    check_error(client.get("/etc/passwd"), 404, type="not_found_error")
    check_error(client.get("/v1/chat/completions"), 405, type="invalid_request_error")


# ---------------------------------------------------------------------------- 429


def test_beyond_max_concurrent_is_429_with_retry_after(tiny_pool, serve, controlled):
    pool = controlled(tiny_pool)
    pool.model.gate.clear()  # the first request holds its slot until the gate opens
    model = tiny_pool.default
    with serve(pool, max_concurrent=1) as srv, httpx.Client(base_url=srv.url) as c:
        results = {}
        first = threading.Thread(
            target=lambda: results.setdefault(
                "first", c.post("/v1/chat/completions", json=chat(model, max_tokens=4))
            )
        )
        first.start()
        try:
            deadline = 100
            while srv.state.in_flight == 0 and deadline:
                threading.Event().wait(0.05)
                deadline -= 1
            assert srv.state.in_flight == 1
            r = c.post("/v1/chat/completions", json=chat(model, max_tokens=4))
            message = check_error(r, 429, type="rate_limit_error", code="rate_limit_exceeded")
            assert r.headers["Retry-After"] == "1"
            assert "limit 1" in message
        finally:
            pool.model.gate.set()
            first.join(30)
        assert results["first"].status_code == 200
        # The slot is free again.
        assert (
            c.post(
                "/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2}
            ).status_code
            == 200
        )
        assert srv.state.in_flight == 0


# ---------------------------------------------------------------------------- 503 / 500


def test_loading_is_503_with_retry_after(serve):
    with serve(None) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        for response in (
            c.get("/v1/models"),
            c.post("/v1/chat/completions", json=chat("m")),
            c.post("/v1/chat/completions", content=b"garbage"),
        ):
            message = check_error(response, 503, type="server_error", code="service_unavailable")
            assert "loading" in message
            assert response.headers["Retry-After"] == "1"


def test_stopping_is_503(tiny_pool, serve):
    with serve(tiny_pool) as srv, httpx.Client(base_url=srv.url) as c:
        srv.state.phase = "stopping"
        r = c.post("/v1/chat/completions", json=chat(tiny_pool.default))
        message = check_error(r, 503, type="server_error", code="service_unavailable")
        assert "shutting down" in message
        assert c.get("/health").json()["status"] == "stopping"


def test_internal_errors_are_500_without_internals(tiny_pool, serve, caplog):
    from llamaforge.serving.model_pool import ModelPool
    from llamaforge.serving.requests import ServedModel

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("secret detail in /secret/site-packages/x.py")

    pool = ModelPool(tiny_pool.model, {"broken": ServedModel("broken", Broken())}, 256)
    with serve(pool) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post("/v1/chat/completions", json=chat("broken"))
        message = check_error(r, 500, type="server_error")
        assert message == "internal server error; see the server log"
    assert "secret detail" in caplog.text  # the log keeps what the body hides


def test_failure_mid_stream_sends_an_error_event_then_done(tiny_pool, serve, controlled):
    pool = controlled(tiny_pool, fail_at=4)  # prefill and two steps succeed
    with serve(pool) as srv, httpx.Client(base_url=srv.url) as c:
        payload = chat(tiny_pool.default, max_tokens=50, temperature=0, stream=True)
        with c.stream("POST", "/v1/chat/completions", json=payload) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])
        assert error == {
            "error": {
                "message": "generation failed on the server",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        pieces = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert len([p for p in pieces if p]) >= 2
        assert not any("secret" in e for e in events)
        # The server goes on serving.
        ok = c.post("/v1/chat/completions", json=chat(tiny_pool.default, max_tokens=3))
        assert ok.status_code == 200 and srv.state.in_flight == 0
