"""Dataset names → files: a ``dataset_info.json`` registry, mixing and validation splits.

Contract: :func:`load_dataset_records` resolves every entry of ``DataConfig.dataset``:
a path to a file (or a folder of data files), relative to the current directory or
``base_dir`` (the config file's folder), or a name in ``dataset_info.json`` in
``dataset_dir`` (default ``base_dir``, else the current directory). Registry entries
are ``{file_name, formatting?, columns?, tags?, ranking?, system_prompt?}``; LLaMA-Factory's
``dataset_info.json`` is read as it is (``formatting: alpaca|sharegpt``, ``ranking: true``
for preference pairs; hub-only entries raise a DataError asking for a local copy).
``max_samples`` keeps the first N records of each dataset; several datasets are
concatenated and shuffled with ``seed``. :func:`split_validation` holds out a count
(``>= 1``) or a fraction (``< 1``) of the records.
"""

from __future__ import annotations

import difflib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from llamaforge.config.sections import DataConfig
from llamaforge.data.files import SUFFIXES
from llamaforge.data.formats import FORMATS, Record, Tags, read_file
from llamaforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

REGISTRY_FILE = "dataset_info.json"
# LLaMA-Factory keys we read; others (split, subset, folder, ...) only matter for hub data.
_ENTRY_KEYS = {"file_name", "formatting", "columns", "tags", "ranking", "system_prompt", "format"}
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")

T = TypeVar("T")


@dataclass(frozen=True)
class DatasetSpec:
    """Where one dataset lives and how to read it."""

    name: str
    path: Path
    format: str | None = None
    columns: Mapping[str, str] | None = None
    tags: Tags | None = None
    system_prompt: str | None = None


def registry_dir(cfg: DataConfig, base_dir: Path | None = None) -> Path:
    base = base_dir if base_dir is not None else Path.cwd()
    if cfg.dataset_dir is None:
        return base
    directory = Path(cfg.dataset_dir).expanduser()
    return directory if directory.is_absolute() else base / directory


def read_registry(directory: Path) -> dict[str, dict[str, Any]]:
    """The entries of ``directory/dataset_info.json`` ({} when there is no such file)."""
    path = directory / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}); fix the syntax there"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: must be a JSON object mapping dataset names to entries")
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise DataError(
                f'{path}: entry \'{name}\' must be an object like {{"file_name": "data.json"}}'
            )
    return data


def _format_of(entry: Mapping[str, Any], where: str) -> str | None:
    formatting = entry.get("formatting", entry.get("format"))
    if entry.get("ranking"):
        return "preference"
    columns = entry.get("columns")
    if isinstance(columns, dict) and "kto_tag" in columns:
        return "feedback"  # LLaMA-Factory's KTO entries say `formatting: sharegpt`
    if formatting is None:
        return None  # detect from the file (LLaMA-Factory's default `alpaca` covers text too)
    if formatting not in FORMATS:
        raise DataError(f"{where}: formatting '{formatting}' is not one of: {', '.join(FORMATS)}")
    return str(formatting)


def _string_map(value: object, where: str, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DataError(
            f'{where}: \'{key}\' must be an object of field names, e.g. {{"prompt": "question"}}'
        )
    return dict(value)


def spec_from_entry(name: str, entry: Mapping[str, Any], directory: Path) -> DatasetSpec:
    where = f"{directory / REGISTRY_FILE}: dataset '{name}'"
    if "file_name" not in entry:
        hub = next((entry[k] for k in _HUB_KEYS if k in entry), None)
        if hub is not None:
            raise DataError(
                f"{where} is on a hub ({hub}) with no local file; download it and add "
                f'"file_name": "<file>" to the entry (no network access is used here)'
            )
        raise DataError(f"{where} has no 'file_name'; add one")
    ignored = sorted(set(entry) - _ENTRY_KEYS - set(_HUB_KEYS))
    if ignored:
        logger.debug("%s: ignoring keys %s", where, ", ".join(ignored))
    tags = _string_map(entry.get("tags"), where, "tags")
    fmt = _format_of(entry, where)
    columns = _string_map(entry.get("columns"), where, "columns")
    parsed = Tags.from_llama_factory(tags) if tags else None
    return DatasetSpec(
        name=name,
        path=directory / str(entry["file_name"]),
        format=fmt,
        columns=columns,
        tags=parsed,
        system_prompt=entry.get("system_prompt"),
    )


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or Path(spec).suffix.lower() in SUFFIXES


def resolve_dataset(spec: str, cfg: DataConfig, base_dir: Path | None = None) -> DatasetSpec:
    """A ``dataset`` entry → where it lives and how to read it."""
    candidates = [Path(spec).expanduser()]
    if base_dir is not None and not candidates[0].is_absolute():
        candidates.append(base_dir / spec)
    for path in candidates:
        if path.exists():
            return DatasetSpec(spec, path, cfg.format, cfg.columns, None, cfg.system_prompt)
    directory = registry_dir(cfg, base_dir)
    registry = read_registry(directory)
    if spec in registry:
        found = spec_from_entry(spec, registry[spec], directory)
        return DatasetSpec(
            found.name,
            found.path,
            found.format or cfg.format,
            found.columns or cfg.columns,
            found.tags,
            found.system_prompt or cfg.system_prompt,
        )
    if _looks_like_path(spec):
        raise DataError(f"{candidates[-1]}: file not found; check the path (dataset '{spec}')")
    if not registry:
        raise DataError(
            f"unknown dataset '{spec}': no such file, and no {REGISTRY_FILE} in {directory}; "
            "give a file path or set dataset_dir to the folder with the registry"
        )
    close = difflib.get_close_matches(spec, list(registry), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    names = sorted(registry)
    shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
    raise DataError(
        f"unknown dataset '{spec}' in {directory / REGISTRY_FILE}; {hint}known: {shown}"
    )


def read_dataset(spec: DatasetSpec, errors: list[str] | None = None) -> list[Record]:
    """Records of one dataset; a folder is read file by file in name order. With an
    ``errors`` list, bad records are skipped and reported there (see ``read_file``)."""
    return read_dataset_with_format(spec, errors)[1]


def read_dataset_with_format(
    spec: DatasetSpec, errors: list[str] | None = None
) -> tuple[str, list[Record]]:
    """(format of the first file, records) of one dataset."""
    if spec.path.is_dir():
        files = sorted(p for p in spec.path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{spec.path}: folder has no data files ({', '.join(SUFFIXES)})")
    else:
        files = [spec.path]
    records: list[Record] = []
    formats = []
    for path in files:
        fmt, part = read_file(
            path, spec.format, spec.columns, spec.system_prompt, spec.tags, errors
        )
        formats.append(fmt)
        records += part
    return formats[0], records


def load_dataset_records(
    cfg: DataConfig, base_dir: Path | None = None, seed: int = 42
) -> list[Record]:
    """All records of ``cfg.dataset``: each resolved, capped at ``max_samples``, mixed."""
    if not cfg.dataset:
        raise ConfigError("key 'dataset' is empty; name a data file or a registry entry")
    parts = []
    for entry in cfg.dataset:
        records = read_dataset(resolve_dataset(entry, cfg, base_dir))
        if cfg.max_samples is not None:
            records = records[: cfg.max_samples]
        logger.info("dataset %s: %d records", entry, len(records))
        parts.append(records)
    mixed = [r for part in parts for r in part]
    if len(parts) > 1:
        random.Random(seed).shuffle(mixed)
    return mixed


def split_validation(
    records: Sequence[T], val_set_size: float, seed: int
) -> tuple[list[T], list[T]]:
    """(train, validation): a random count (``>= 1``) or fraction (``< 1``) held out,
    both in their original order."""
    if val_set_size <= 0:
        return list(records), []
    if val_set_size >= 1:
        if val_set_size != int(val_set_size):
            raise ConfigError(
                f"key 'val_set_size': {val_set_size} is neither a count (whole number >= 1) "
                "nor a fraction (< 1)"
            )
        count = int(val_set_size)
    else:
        count = max(1, round(len(records) * val_set_size))
    if count >= len(records):
        raise DataError(
            f"key 'val_set_size': holding out {count} of {len(records)} records leaves none to "
            "train on; lower val_set_size or add data"
        )
    held = set(random.Random(seed).sample(range(len(records)), count))
    train = [r for i, r in enumerate(records) if i not in held]
    val = [r for i, r in enumerate(records) if i in held]
    return train, val
