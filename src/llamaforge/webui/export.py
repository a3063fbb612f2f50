"""The Export tab: ``llamaforge export merge|gguf`` as a subprocess, its log streamed.

Contract: :func:`export_command` builds the same command line a user would type;
:func:`run_export` runs it and yields the growing console text, ending with a line that
says whether it succeeded. A failing export only fails its subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

from llamaforge.errors import ConfigError

KINDS = ("merge", "gguf")
GGUF_TYPES = ("f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def export_command(
    kind: str, model: str, output: str, *, gguf_type: str = "f16", overwrite: bool = False
) -> list[str]:
    if kind not in KINDS:
        raise ConfigError(f"unknown export '{kind}'; choose one of: {', '.join(KINDS)}")
    if not model.strip():
        raise ConfigError("export needs a model or run directory")
    if not output.strip():
        raise ConfigError("export needs an output path")
    command = [sys.executable, "-m", "llamaforge", "export", kind, "--model", model.strip()]
    command += ["--output", output.strip()]
    if kind == "gguf":
        if gguf_type not in GGUF_TYPES:
            raise ConfigError(
                f"unknown GGUF type '{gguf_type}'; choose one of: {', '.join(GGUF_TYPES)}"
            )
        command += ["--type", gguf_type]
    if overwrite:
        command.append("--overwrite")
    return command


def run_export(command: list[str]) -> Iterator[str]:
    """Run ``command``; yields the console text so far after every line."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = ["$ llamaforge " + " ".join(command[3:])]
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n").rstrip("\r").rsplit("\r", 1)[-1])
            yield "\n".join(lines)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the UI cancelled the export
            proc.terminate()
            proc.wait()
    lines.append("export finished" if code == 0 else f"export failed (exit code {code})")
    yield "\n".join(lines)
