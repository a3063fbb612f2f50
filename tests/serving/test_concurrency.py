"""Many clients at once: batching without cross-talk, disconnects, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from llamaforge.config import GenerationConfig

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


async def stream_chat(client, model: str, prompt: str, max_tokens: int) -> tuple[str, str, int]:
    """(streamed text, finish_reason, usage.completion_tokens) of one streaming chat."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pieces, finish, tokens = [], None, -1
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["usage"]:
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                pieces.append(choice["delta"].get("content") or "")
                finish = choice["finish_reason"] or finish
    return "".join(pieces), finish, tokens


def run_clients(url: str, model: str, prompts: list[str], max_tokens: int):
    async def run():
        limits = httpx.Limits(max_connections=len(prompts))
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            return await asyncio.gather(
                *(stream_chat(client, model, p, max_tokens) for p in prompts)
            )

    return asyncio.run(run())


def test_32_streaming_clients_get_their_own_text(tiny_pool, serve):
    model = tiny_pool.default
    engine = tiny_pool.served[model].engine
    prompts = [f"Client {i}: tell me about the number {i * 7919}." for i in range(32)]
    gen = GenerationConfig(temperature=0, max_new_tokens=24)
    expected = [engine.generate([p], gen)[0] for p in prompts]
    assert len({r.text for r in expected}) == 32  # cross-talk would show
    with serve(tiny_pool, max_concurrent=32) as srv:
        results = run_clients(srv.url, model, prompts, 24)
        steps = srv.state.scheduler.steps
    for (text, finish, tokens), want in zip(results, expected, strict=True):
        assert text == want.text
        assert finish == want.finish_reason
        assert tokens == want.completion_tokens
    # Serialised, 32 clients x 24 tokens would take 768 forward passes.
    assert steps < 768 / 4


@pytest.mark.slow
def test_8_clients_on_smollm2_get_their_own_answers(smollm2_pool, serve):
    model = "smollm2-135m"
    engine = smollm2_pool.served[model].engine
    prompts = [
        "What is the capital of France?",
        "Name a primary color.",
        "What is 2 + 2?",
        "Say hello in Spanish.",
        "What animal says moo?",
        "What is the opposite of hot?",
        "Name a planet.",
        "What do bees make?",
    ]
    gen = GenerationConfig(temperature=0, max_new_tokens=12)
    expected = engine.generate(prompts, gen)  # batched generate == one at a time (tested)
    with serve(smollm2_pool) as srv:
        results = run_clients(srv.url, model, prompts, 12)
    assert [text for text, _, _ in results] == [r.text for r in expected]
    assert "Paris" in results[0][0]


# ---------------------------------------------------------------------------- disconnects


def disconnect_after_first_piece(url: str, model: str, max_tokens: int) -> None:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=payload) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        return  # the first real piece: hang up
        raise AssertionError("the stream ended before its first piece")


def wait_for(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def test_disconnect_stops_generation_and_frees_the_server_50_times(tiny_pool, serve, controlled):
    pool = controlled(tiny_pool, delay_s=0.005)  # ~200 tokens/s: a 200-token stream takes ~1 s
    model = tiny_pool.default
    with serve(pool) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        scheduler = srv.state.scheduler
        threads_before = threading.active_count()
        latencies = []
        for _ in range(50):
            seen = len(scheduler.recent)
            disconnect_after_first_piece(srv.url, model, max_tokens=200)
            started = time.perf_counter()
            r = client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Hi"}]}
                | {"max_tokens": 2, "temperature": 0},
            )
            latencies.append(time.perf_counter() - started)
            assert r.status_code == 200
            assert wait_for(lambda s=seen: len(scheduler.recent) >= s + 2)
            cancelled = [r for r in list(scheduler.recent)[seen:] if r.outcome == "cancelled"]
            assert len(cancelled) == 1
            record = cancelled[0]
            # Stopped before the step after the one running when the client left.
            assert record.completion_tokens - record.tokens_at_cancel <= 1
            assert record.completion_tokens < 30
        assert wait_for(lambda: scheduler.active == 0 and scheduler.rows == 0)
        assert srv.state.in_flight == 0
        assert threading.active_count() <= threads_before
        # The next request is answered at once (2 tokens at ~5 ms a step), never after the
        # ~1 s the abandoned stream had left.
        assert sorted(latencies)[len(latencies) // 2] < 0.5
        assert max(latencies) < 2.0


@pytest.mark.slow
def test_disconnect_on_smollm2_stops_within_a_step(smollm2_pool, serve):
    model = "smollm2-135m"
    with serve(smollm2_pool) as srv:
        scheduler = srv.state.scheduler
        for _ in range(3):
            seen = len(scheduler.recent)
            disconnect_after_first_piece(srv.url, model, max_tokens=500)
            assert wait_for(lambda s=seen: len(scheduler.recent) > s, timeout=30)
            record = scheduler.recent[-1]
            assert record.outcome == "cancelled"
            assert record.completion_tokens - record.tokens_at_cancel <= 1
            assert record.completion_tokens < 10
        assert scheduler.active == 0 and srv.state.in_flight == 0


# ---------------------------------------------------------------------------- SIGTERM


SERVE_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from llamaforge.config import load_run_config
    from llamaforge.serving.server import run_serve
    cfg = load_run_config(None, (), model=sys.argv[1])
    sys.exit(run_serve(cfg, host="127.0.0.1", port=int(sys.argv[2]), api_key=None,
                       max_concurrent=4, adapters=[]))
    """
)


@pytest.fixture(scope="module")
def long_context_model_dir(make_tiny_llama, smollm2_tokenizer, tmp_path_factory):
    """A tiny random Llama with a 4096-token context (room for a long stream)."""
    path = tmp_path_factory.mktemp("long")
    make_tiny_llama(initializer_range=0.3, max_positions=4096).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_streams_then_exits(long_context_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, str(long_context_model_dir), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # refused before the bind, then 503 "loading", then 200
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server never became ready"
            try:
                r = httpx.get(f"{url}/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.json()["status"] == "loading"
            time.sleep(0.05)
        payload = {
            "model": str(long_context_model_dir),
            "prompt": "Once upon a time",
            "max_tokens": 1000,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        probes: list[object] = []
        stream_done = threading.Event()

        def probe() -> None:  # new connections while the server drains
            while not stream_done.is_set() and len(probes) < 50:
                try:
                    probes.append(httpx.get(f"{url}/v1/models", timeout=2).status_code)
                except httpx.TransportError:
                    probes.append("refused")
                time.sleep(0.02)

        after_signal, usage, finish, done = 0, None, None, False
        prober = threading.Thread(target=probe)
        with httpx.Client(timeout=120) as client:  # noqa: SIM117
            with client.stream("POST", f"{url}/v1/completions", json=payload) as r:
                lines = r.iter_lines()
                for line in lines:
                    if line.startswith("data: "):
                        break
                proc.send_signal(signal.SIGTERM)
                prober.start()
                for line in lines:
                    if line == "data: [DONE]":
                        done = True
                        break
                    if not line.startswith("data: "):
                        continue
                    after_signal += 1
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk["choices"]:
                        finish = choice["finish_reason"] or finish
        stream_done.set()
        prober.join()
        assert done, "the in-flight stream was cut"
        assert after_signal > 20  # it really was mid-stream when SIGTERM came
        assert probes and set(probes) <= {"refused", 503}
        assert finish in ("length", "stop")
        if finish == "length":
            assert usage["completion_tokens"] == 1000
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM), output
        assert "shutting down: finishing 1 request(s) in flight" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
