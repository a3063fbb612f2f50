"""Seed tasks: the human-written examples self-instruct starts from.

Contract: :func:`read_seed_tasks` reads the JSON Lines layout of yizhongw/self-instruct and
stanford_alpaca (``seed_tasks.jsonl``) as it is — one object per line with ``instruction``,
``instances`` (a list of ``{"input", "output"}``) and ``is_classification``; ``id`` and
``name`` are kept when present, other keys are ignored. A record that cannot be used raises a
DataError naming the file, the line and the field. :func:`shipped_seed_path` is the
project's own small seed file for a language (``seeds/seed_tasks_<lang>.jsonl``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from llamaforge.data.files import json_kind, read_rows
from llamaforge.errors import ConfigError, DataError

LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool
    name: str = ""


def shipped_seed_path(lang: str) -> Path:
    """The seed file that ships with llamaforge for ``lang`` (en or zh)."""
    if lang not in LANGUAGES:
        raise ConfigError(f"--lang must be one of: {', '.join(LANGUAGES)} (got '{lang}')")
    return Path(str(files("llamaforge.selfinstruct") / "seeds" / f"seed_tasks_{lang}.jsonl"))


def _text(row: dict[str, object], key: str, source: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in row else json_kind(value)
        raise DataError(f"{source}: field '{key}' must be a string (got {got})")
    return value


def _instances(row: dict[str, object], source: str) -> tuple[Instance, ...]:
    value = row.get("instances")
    if not isinstance(value, list) or not value:
        got = "missing" if "instances" not in row else json_kind(value)
        raise DataError(
            f'{source}: field \'instances\' must be a non-empty list of {{"input", "output"}} '
            f"objects (got {got})"
        )
    instances = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{source}: instances[{i}] must be an object (got {json_kind(item)})")
        where = f"{source}: instances[{i}]"
        instances.append(Instance(_text(item, "input", where), _text(item, "output", where)))
    return tuple(instances)


def read_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Every task of a seed file (see the module docstring for the layout)."""
    tasks = []
    for row, source in read_rows(Path(path)):
        instruction = _text(row, "instruction", source).strip()
        if not instruction:
            raise DataError(f"{source}: field 'instruction' is empty; write the task there")
        flag = row.get("is_classification", False)
        if not isinstance(flag, bool):
            raise DataError(
                f"{source}: field 'is_classification' must be true or false (got {json_kind(flag)})"
            )
        name = row.get("name", "")
        tasks.append(
            SeedTask(
                instruction, _instances(row, source), flag, name if isinstance(name, str) else ""
            )
        )
    return tasks
