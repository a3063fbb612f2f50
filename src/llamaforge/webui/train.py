"""The Train tab: one ``llamaforge train`` subprocess at a time, followed through its run dir.

Contract: :meth:`TrainingJob.start` validates the overrides exactly as the CLI would
(``load_run_config``), so a bad value is reported at once and nothing starts; then it runs
``python -m llamaforge train key=value ... output_dir=<run dir>`` — the same command, hence
the same run directory, as on the command line. The console output goes to a log file
outside the run directory. :meth:`TrainingJob.poll` reads ``trainer_log.jsonl`` (a line
still being written is skipped) and the console tail. :meth:`TrainingJob.stop` sends
SIGTERM, which makes training save a resumable checkpoint and exit. A training crash only
ends the subprocess; the UI goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from llamaforge.errors import ConfigError

logger = logging.getLogger(__name__)

LOG_NAME = "trainer_log.jsonl"
CONSOLE_TAIL_CHARS = 6000
STOP_TIMEOUT_S = 60.0

State = Literal["idle", "running", "finished", "failed", "stopped"]
# Keys whose whole-number values must stay floats (num_epochs: 1.0 means one epoch).
FLOAT_KEYS = frozenset({"learning_rate", "num_epochs", "lora_dropout", "warmup_ratio"})


def build_overrides(values: Mapping[str, Any], extra: str = "") -> list[str]:
    """Form values (None / "" = keep the default) plus ``key=value`` lines → overrides."""
    overrides = []
    for key, value in values.items():
        if value is None or value == "":
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, float) and value.is_integer() and key not in FLOAT_KEYS:
            value = int(value)  # Gradio numbers arrive as floats
        overrides.append(f"{key}={value}")
    for number, line in enumerate(extra.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(
                f"extra overrides, line {number}: '{line}' is not key=value; write e.g. "
                "warmup_steps=10"
            )
        overrides.append(line)
    return overrides


@dataclasses.dataclass(frozen=True)
class JobStatus:
    state: State
    run_dir: Path | None
    log: list[dict[str, Any]]
    """``trainer_log.jsonl`` rows so far (step, loss, learning_rate, eval_loss, ...)."""
    console: str
    """The tail of the subprocess's console output."""
    returncode: int | None

    @property
    def last_loss(self) -> tuple[int, float] | None:
        rows = [r for r in self.log if "loss" in r]
        return (int(rows[-1]["step"]), float(rows[-1]["loss"])) if rows else None


def read_run_log(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``trainer_log.jsonl``; a partly written last line is skipped."""
    path = run_dir / LOG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


class TrainingJob:
    """At most one training subprocess; safe to call from several UI threads."""

    def __init__(self, runs_dir: str | Path = "runs", python: str = sys.executable) -> None:
        self.runs_dir = Path(runs_dir)
        self.python = python
        self.run_dir: Path | None = None
        self.console_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._logs = Path(tempfile.mkdtemp(prefix="llamaforge-webui-"))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, overrides: list[str]) -> Path:
        """Validate, then start training; returns the run directory it will write."""
        from llamaforge.config import load_run_config

        with self._lock:
            if self.running:
                raise ConfigError("a training run is already going; stop it first")
            cfg = load_run_config(None, overrides)  # raises the CLI's errors
            run_dir = Path(cfg.training.output_dir or self._new_run_dir())
            if (run_dir / "run_metadata.json").exists() and not cfg.training.resume_from_checkpoint:
                raise ConfigError(
                    f"key 'output_dir': {run_dir} already holds a run; choose another output_dir"
                )
            args = [o for o in overrides if not o.startswith("output_dir=")]
            command = [self.python, "-m", "llamaforge", "train", *args, f"output_dir={run_dir}"]
            self.console_path = self._logs / f"{run_dir.name}.log"
            logger.info("starting training: %s", " ".join(command[1:]))
            with open(self.console_path, "wb") as console:
                # Own session: Ctrl-C in the UI's terminal does not reach training; stop()
                # signals it explicitly.
                self._proc = subprocess.Popen(
                    command,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            self.run_dir, self._stopping = run_dir, False
            return run_dir

    def _new_run_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        candidate, i = self.runs_dir / f"webui-{stamp}", 2
        while candidate.exists():
            candidate, i = self.runs_dir / f"webui-{stamp}-{i}", i + 1
        return candidate

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (checkpoint, then exit); SIGKILL if it has not exited after ``timeout``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._stopping = True
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("training did not stop within %.0f s; killing it", timeout)
            proc.kill()
            proc.wait()

    def poll(self) -> JobStatus:
        proc = self._proc
        if proc is None:
            return JobStatus("idle", None, [], "", None)
        code = proc.poll()
        state: State
        if code is None:
            state = "running"
        elif self._stopping:
            state = "stopped"
        else:
            state = "finished" if code == 0 else "failed"
        log = read_run_log(self.run_dir) if self.run_dir else []
        return JobStatus(state, self.run_dir, log, self._console_tail(), code)

    def _console_tail(self) -> str:
        if self.console_path is None:
            return ""
        try:
            with open(self.console_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - CONSOLE_TAIL_CHARS))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        # Progress bars redraw with \r: keep only what each line finally shows. (Not
        # splitlines(): it splits at \r too.)
        lines = (line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
        return "\n".join(line for line in lines if line)
