"""Fixtures for the serving tests: servers on loopback in a background thread.

``tiny_pool`` serves a 2-layer random Llama (with the real tokenizer) saved as an HF
directory; ``smollm2_pool`` the real bundled SmolLM2-135M, loaded once per session through
the session's own GGUF cache (``smollm2_cache`` in tests/conftest.py).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from llamaforge.config import GenerationConfig, load_run_config
from llamaforge.serving.batching import BatchScheduler
from llamaforge.serving.model_pool import ModelPool, load_model_pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> from a daemon thread."""

    def __init__(self, app, state) -> None:
        from llamaforge.serving.server import make_server

        self.state = state
        self.port = free_port()
        self.server = make_server(app, state, drain_timeout_s=10)
        self.server.config.host, self.server.config.port = "127.0.0.1", self.port
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        if self.state.scheduler is not None:
            self.state.scheduler.stop()


def serve_pool(
    pool: ModelPool | None,
    *,
    api_key: str | None = None,
    max_concurrent: int = 32,
    defaults: GenerationConfig | None = None,
) -> ServerThread:
    """A server for ``pool`` (None: stays 'loading') with its own scheduler."""
    from llamaforge.serving.routes import create_app
    from llamaforge.serving.runtime import ServerState

    state = ServerState(defaults or GenerationConfig())
    if pool is not None:
        scheduler = BatchScheduler(pool.model, pool.served)
        scheduler.start()
        state.set_ready(pool, scheduler)
    app = create_app(state, api_key=api_key, max_concurrent=max_concurrent)
    return ServerThread(app, state)


@pytest.fixture(scope="session")
def chatty_model_dir(make_tiny_llama, smollm2_tokenizer, tmp_path_factory) -> Path:
    """A 2-layer random Llama with large weights (varied greedy tokens) as an HF dir."""
    path = tmp_path_factory.mktemp("chatty")
    make_tiny_llama(initializer_range=0.3, max_positions=256).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_pool(chatty_model_dir) -> ModelPool:
    return load_model_pool(load_run_config(None, (), model=str(chatty_model_dir)))


@pytest.fixture(scope="session")
def smollm2_pool(smollm2_cache) -> ModelPool:
    return load_model_pool(load_run_config(None, (), model="smollm2-135m"))


class ControlledModel(torch.nn.Module):
    """Wraps a model: each forward first waits for ``gate`` (set by default) and sleeps
    ``delay_s``, and forward number ``fail_at`` (1-based) raises: for 429s, disconnects and
    failures at a known pace."""

    def __init__(self, inner, fail_at: int | None = None, delay_s: float = 0.0) -> None:
        super().__init__()
        self.inner = inner
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.fail_at = fail_at
        self.calls = 0

    @property
    def device(self):
        return self.inner.device

    def forward(self, **kwargs):
        assert self.gate.wait(30), "test gate never opened"
        time.sleep(self.delay_s)
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom in /secret/site-packages/model.py")
        return self.inner(**kwargs)


def controlled_pool(pool: ModelPool, fail_at: int | None = None, delay_s: float = 0.0) -> ModelPool:
    model = ControlledModel(pool.model, fail_at, delay_s)
    return ModelPool(model, pool.served, pool.context_length)


@pytest.fixture(scope="session")
def serve():
    """``serve(pool, api_key=..., max_concurrent=...)``: a context manager running a server."""
    return serve_pool


@pytest.fixture(scope="session")
def controlled():
    """``controlled(pool, fail_at=None, delay_s=0)``: the pool with a gated, slowed or
    failing model."""
    return controlled_pool


@pytest.fixture(scope="session")
def lora_dirs(chatty_model_dir, tmp_path_factory):
    """Two LoRA adapters with random (non-zero) weights for the chatty model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = []
    for seed, targets in ((1, ["q_proj", "v_proj"]), (2, ["o_proj", "down_proj"])):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(chatty_model_dir)
        config = LoraConfig(r=4, lora_alpha=64, target_modules=targets, init_lora_weights=False)
        path = tmp_path_factory.mktemp(f"lora{seed}")
        get_peft_model(base, config).save_pretrained(path)
        dirs.append(path)
    return dirs
