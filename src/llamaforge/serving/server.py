"""``llamaforge serve``: bind, load the models in the background, serve until SIGTERM/SIGINT.

Contract:

- Binds 127.0.0.1 unless told otherwise; the port is bound before the model loads, so
  ``/health`` answers 503 ``loading`` until it is ready (the app is
  :func:`llamaforge.serving.routes.create_app`).
- SIGTERM/SIGINT: stop accepting, let in-flight responses finish (up to
  ``drain_timeout_s``), then stop the scheduler and exit.
- A failed load stops the server and is raised by :func:`run_serve` once it has stopped.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llamaforge.errors import ConfigError
from llamaforge.serving.batching import BatchScheduler
from llamaforge.serving.routes import create_app
from llamaforge.serving.runtime import ServerState

if TYPE_CHECKING:
    from fastapi import FastAPI

    from llamaforge.config import RunConfig

logger = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def load_into(
    state: ServerState, cfg: RunConfig, adapters: Sequence[str], max_batch_size: int
) -> None:
    """Load the models, start the scheduler and mark ``state`` ready (or failed)."""
    from llamaforge.serving.model_pool import load_model_pool

    try:
        pool = load_model_pool(cfg, adapters)
        scheduler = BatchScheduler(pool.model, pool.served, max_batch_size=max_batch_size)
        scheduler.start()
    except BaseException as e:  # reported by run_serve once the server has stopped
        state.error, state.phase = e, "failed"
        return
    state.set_ready(pool, scheduler)
    logger.info("ready: %s", ", ".join(pool.served))


def make_server(app: FastAPI, state: ServerState, *, drain_timeout_s: float) -> Any:
    """A uvicorn server that marks ``state`` as stopping on SIGTERM/SIGINT (new requests
    get 503 while in-flight ones finish)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if state.phase in ("loading", "ready"):
                logger.info("shutting down: finishing %d request(s) in flight", state.in_flight)
                state.phase = "stopping"
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_config=None,  # keep the CLI's logging setup
        timeout_graceful_shutdown=drain_timeout_s,
        lifespan="off",
    )
    return Server(config)


def run_serve(
    cfg: RunConfig,
    *,
    host: str,
    port: int,
    api_key: str | None,
    max_concurrent: int,
    adapters: list[str],
    drain_timeout_s: float = 120.0,
    threads: int | None = None,
) -> int:
    """The ``serve`` command: bind, load in the background, serve until SIGTERM/SIGINT.

    ``threads``: torch intra-op threads for decoding (default: torch's choice). On a CPU
    shared with other busy processes, 1 thread is several times faster than an
    oversubscribed 2 (see benchmarks/serve_throughput.py --threads).
    """
    if max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logger.warning(
            "listening on %s without --api-key: anyone who can reach it can use it", host
        )
    state = ServerState(cfg.generation)
    app = create_app(state, api_key=api_key, max_concurrent=max_concurrent)
    sock = _listen(host, port)
    server = make_server(app, state, drain_timeout_s=drain_timeout_s)

    def load() -> None:
        load_into(state, cfg, adapters, max_batch_size=max(64, max_concurrent))
        if state.phase == "failed":
            server.should_exit = True

    logger.info("listening on http://%s:%d (loading %s)", host, port, cfg.model.model)
    loader = threading.Thread(target=load, name="llamaforge-load", daemon=True)
    loader.start()
    try:
        server.run(sockets=[sock])
    finally:
        state.phase = "stopping" if state.phase != "failed" else "failed"
        loader.join()
        if state.scheduler is not None:
            state.scheduler.stop()
        sock.close()
    if state.error is not None:
        raise state.error
    return 0
