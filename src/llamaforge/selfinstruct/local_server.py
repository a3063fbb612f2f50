"""``llamaforge serve`` as a child process, for a run given no ``--endpoint``.

Contract: :func:`local_server` starts ``python -m llamaforge serve --model M`` on a free
loopback port, waits until ``/health`` answers 200 (a server that exits first is a
ModelError quoting its log), yields the base URL, and stops the server with SIGTERM (then
SIGKILL after ``stop_timeout_s``) when the block ends, however it ends. On Linux the child
also gets SIGTERM if this process dies without cleaning up (a SIGKILL of the run), so a
killed run leaves no server behind. Its output goes to ``log_path``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from llamaforge.errors import ModelError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def local_server(
    model: str,
    log_path: Path,
    *,
    max_concurrent: int,
    threads: int | None = None,
    start_timeout_s: float = 900.0,
    stop_timeout_s: float = 60.0,
) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "llamaforge", "serve", "--model", model, "--port", str(port)]
    command += ["--max-concurrent", str(max_concurrent)]
    if threads is not None:
        command += ["--threads", str(threads)]
    url = f"http://127.0.0.1:{port}"
    logger.info("starting llamaforge serve --model %s on %s (log: %s)", model, url, log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    try:
        _wait_ready(process, url, log_path, start_timeout_s)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        logger.info("stopped the local server")


def _wait_ready(
    process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelError(
                f"llamaforge serve exited ({process.returncode}) before it was ready; "
                f"its log ({log_path}) ends:\n{_log_tail(log_path)}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise ModelError(f"llamaforge serve was not ready after {timeout_s:.0f} s; see {log_path}")
