"""The run's progress as an append-only journal: what makes a killed run resumable.

Contract: ``<output stem>.journal.jsonl`` beside the output holds a header (the settings
that must not change between sessions) and one JSON line per event, appended and fsync'd
before the run moves on:

- ``brainstorm``: request ``id`` done, how many instructions it gave, the ones dropped by
  each filter, and the ones ``queued`` (passed, waiting for an instance), each with a key;
- ``kept``: an instruction's record (instruction, input, output);
- ``dropped``: a queued instruction that failed later, with the reason;
- ``session`` when a session starts, ``stopped`` when it ends (not after a kill).

Each event also carries the request counters and the session's elapsed seconds. So a
SIGKILL loses at most the requests in flight: every accepted record and every counter
change before it is on disk. A line cut short by the kill (only the last one can be) is
cut off when the journal is read again; a broken line before the last is a DataError.
:func:`read_journal` replays the journal into :class:`Progress`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaforge.errors import ConfigError, DataError
from llamaforge.rundir import write_atomic
from llamaforge.selfinstruct.client import RequestStats

logger = logging.getLogger(__name__)

VERSION = 1


@dataclass
class Progress:
    """Everything a run has done so far (the journal replayed)."""

    kept: list[dict[str, str]] = field(default_factory=list)
    classification: int = 0  # kept records whose task was judged a classification task
    queued: dict[str, str] = field(default_factory=dict)  # key → instruction, in order
    dropped: Counter[str] = field(default_factory=Counter)
    brainstorms: set[int] = field(default_factory=set)
    requests: RequestStats = field(default_factory=RequestStats)
    elapsed_s: float = 0.0  # wall time of the sessions in the journal
    sessions: int = 0

    @property
    def generated(self) -> int:
        """Instructions with an outcome: kept + dropped (queued ones are still open)."""
        return len(self.kept) + sum(self.dropped.values())

    def apply(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "brainstorm":
            self.brainstorms.add(int(event["id"]))
            self.dropped.update(event.get("dropped", {}))
            for item in event.get("queued", []):
                self.queued[item["key"]] = item["instruction"]
        elif kind == "kept":
            self.queued.pop(event["key"], None)
            self.kept.append(event["record"])
            self.classification += bool(event.get("classification"))
        elif kind == "dropped":
            self.queued.pop(event["key"], None)
            self.dropped[event["reason"]] += 1


def journal_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.journal.jsonl")


def _check_settings(path: Path, saved: dict[str, Any], settings: dict[str, Any]) -> None:
    for key, value in settings.items():
        if saved.get(key) != value:
            raise ConfigError(
                f"{path}: this run was started with {key}={saved.get(key)!r}, now {value!r}; "
                "use the same setting to resume, or --overwrite to start again"
            )


def read_journal(path: Path, settings: dict[str, Any]) -> Progress:
    """Replay ``path`` (checking its settings against ``settings``); a torn last line —
    a write cut short by a kill — is cut off the file."""
    progress = Progress()
    lines = path.read_bytes().split(b"\n")
    offset = 0
    earlier_s = session_s = 0.0  # wall time of finished sessions; of the current one
    for number, line in enumerate(lines, start=1):
        try:
            event = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            if any(rest.strip() for rest in lines[number:]):
                raise DataError(
                    f"{path}:{number}: broken journal line; the file was edited or damaged — "
                    "fix that line or start again with --overwrite"
                ) from None
            logger.warning("%s:%d: dropping a line cut short by an interruption", path, number)
            with path.open("r+b") as f:
                f.truncate(offset)
            break
        offset += len(line) + 1
        if event is None:
            continue
        if number == 1:
            if event.get("type") != "header" or event.get("version") != VERSION:
                raise DataError(f"{path}:1: not a llamaforge selfinstruct journal")
            _check_settings(path, event["settings"], settings)
        elif event.get("type") == "session":
            progress.sessions += 1
            earlier_s, session_s = earlier_s + session_s, 0.0
        else:
            progress.apply(event)
            if "requests" in event:  # the counters as they were when the event was written
                progress.requests = RequestStats.from_dict(event["requests"])
            session_s = max(session_s, float(event.get("elapsed_s", 0.0)))
    progress.elapsed_s = earlier_s + session_s
    return progress


class Journal:
    """Appends events to the journal, each one on disk (fsync) before it returns."""

    def __init__(self, path: Path, settings: dict[str, Any], *, fresh: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:  # atomic: a journal never exists without its header
            header = {"type": "header", "version": VERSION, "settings": settings}
            write_atomic(path, json.dumps(header) + "\n")
        self._file = path.open("a", encoding="utf-8")

    def append(self, event: dict[str, Any]) -> None:
        self._file.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
