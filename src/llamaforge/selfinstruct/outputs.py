"""What a self-instruct run writes: the Alpaca JSON, its dataset_info.json entry, the statistics.

Contract: every file is written atomically (the old one or the new one, never half).
The data file is ``--output`` (a JSON list of ``{"instruction", "input", "output"}``, in the
order the records were accepted); ``dataset_info.json`` beside it gets (or keeps, updated)
an entry named after the file's stem, so ``dataset: [<stem>]`` with ``dataset_dir`` set to
that folder trains on it; ``<stem>.stats.json`` holds the figures of :func:`run_statistics`,
in which ``generated == kept + dropped`` and ``dropped`` is the sum of ``dropped_by_reason``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamaforge.data.registry import REGISTRY_FILE, read_registry
from llamaforge.rundir import write_atomic
from llamaforge.selfinstruct.filters import REASONS
from llamaforge.selfinstruct.journal import Progress


def stats_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.stats.json")


def run_statistics(progress: Progress, elapsed_s: float, **about: Any) -> dict[str, Any]:
    """The figures of a run so far; ``about`` (lang, model, endpoint, stopped, ...) goes first."""
    requests = progress.requests
    dropped = {reason: progress.dropped.get(reason, 0) for reason in REASONS}
    return {
        **about,
        "generated": progress.generated,
        "kept": len(progress.kept),
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "pending": len(progress.queued),
        "classification_tasks": progress.classification,
        "brainstorm_requests": len(progress.brainstorms),
        "requests": {
            "sent": requests.sent,
            "retried": requests.retried,
            "failed": requests.failed,
            "empty_answers": requests.empty,
            "errors": dict(sorted(requests.errors.items())),
        },
        "tokens": {
            "prompt": requests.prompt_tokens,
            "completion": requests.completion_tokens,
            "total": requests.prompt_tokens + requests.completion_tokens,
        },
        "time_s": round(elapsed_s, 1),
        "sessions": progress.sessions,
    }


def describe_run(output: Path, statistics: dict[str, Any]) -> str:
    """One line for the terminal: what was kept of what, at what cost."""
    return (
        f"{output}: {statistics['kept']} records kept of {statistics['generated']} generated "
        f"({statistics['dropped']} dropped), {statistics['requests']['sent']} requests, "
        f"{statistics['time_s']:.0f} s; statistics in {stats_path(output).name}"
    )


def write_outputs(output: Path, records: list[dict[str, str]], statistics: dict[str, Any]) -> None:
    write_atomic(output, json.dumps(records, ensure_ascii=False, indent=2) + "\n")
    registry = read_registry(output.parent)
    registry[output.stem] = {"file_name": output.name, "formatting": "alpaca"}
    write_atomic(
        output.parent / REGISTRY_FILE, json.dumps(registry, ensure_ascii=False, indent=2) + "\n"
    )
    write_atomic(stats_path(output), json.dumps(statistics, ensure_ascii=False, indent=2) + "\n")
