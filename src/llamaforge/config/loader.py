"""YAML + ``key=value`` overrides → a validated, frozen :class:`RunConfig`.

Every problem is collected and reported at once, each with its place
(``config.yaml:12: key 'lerning_rate'``) and a fix (``did you mean 'learning_rate'?``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from llamaforge.config.sections import SECTIONS, RunConfig
from llamaforge.config.stages import STAGES
from llamaforge.config.validate import validate_run_config
from llamaforge.errors import ConfigError

logger = logging.getLogger(__name__)

# Flat alpaca-lora / LLaMA-Factory / HF names → ours, so configs users already have run.
ALIASES: dict[str, str] = {
    "base_model": "model",
    "model_name_or_path": "model",
    "data_path": "dataset",
    "prompt_template_name": "template",
    "lora_rank": "lora_r",
    "lora_target": "lora_target_modules",
    "finetuning_type": "finetuning",
    "num_train_epochs": "num_epochs",
    "per_device_train_batch_size": "micro_batch_size",
    "lr_scheduler": "lr_scheduler_type",
    "bf16": "precision",
    "rope_parameters": "rope_scaling",  # transformers 5's name for it
}
# alpaca-lora keys with no effect here; accepted (with a note) so its configs run unchanged.
IGNORED_KEYS = {"wandb_project", "wandb_run_name", "wandb_watch", "wandb_log_model"}


def field_sections(sections: Mapping[str, type]) -> dict[str, str]:
    """Key name → its section. A name in two sections could not be set flat or by
    ``key=value`` without silently picking one (``seed`` once meant only sampling), so it
    is a programming error, raised when the map is built."""
    owner: dict[str, str] = {}
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            if f.name in owner:
                raise TypeError(
                    f"config key '{f.name}' is defined in sections '{owner[f.name]}' and "
                    f"'{section}'; give one of them another name"
                )
            owner[f.name] = section
    return owner


def stage_keys(common: Mapping[str, str], stages: Mapping[str, type]) -> dict[str, tuple[str, ...]]:
    """Key name → the stages whose section has it. A run has one stage's section only, so
    stage sections may share a name (``beta`` of dpo and grpo) and the stage decides; a
    stage key that is also a key of every run (``common``) is refused as in
    :func:`field_sections`."""
    owners: dict[str, list[str]] = {}
    for stage, cls in stages.items():
        for f in dataclasses.fields(cls):
            if f.name in common:
                raise TypeError(
                    f"config key '{f.name}' is defined in sections '{common[f.name]}' and "
                    f"'{stage}'; give one of them another name"
                )
            owners.setdefault(f.name, []).append(stage)
    return {key: tuple(names) for key, names in owners.items()}


# The sections every run has, then one per stage (named after it) for its own options.
STAGE_SECTIONS: dict[str, type] = {name: stage.options for name, stage in STAGES.items()}
ALL_SECTIONS: dict[str, type] = {**SECTIONS, **STAGE_SECTIONS}
FIELD_SECTION: dict[str, str] = field_sections(SECTIONS)
STAGE_KEYS: dict[str, tuple[str, ...]] = stage_keys(FIELD_SECTION, STAGE_SECTIONS)
_HINTS: dict[str, dict[str, Any]] = {
    section: typing.get_type_hints(cls) for section, cls in ALL_SECTIONS.items()
}


def known_keys() -> list[str]:
    return sorted({*FIELD_SECTION, *STAGE_KEYS})


def _did_you_mean(key: str) -> str:
    candidates = [*FIELD_SECTION, *STAGE_KEYS, *ALIASES, *ALL_SECTIONS]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return (
        f"; did you mean '{close[0]}'?" if close else "; run `llamaforge config keys` to list keys"
    )


def _key_lines(text: str) -> dict[str, int]:
    """Line numbers (1-based) of top-level keys and of ``section.key`` keys."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    return key_lines(root)


def key_lines(root: yaml.Node | None) -> dict[str, int]:
    """Line numbers (1-based) of a YAML mapping node's keys and ``section.key`` keys (for a
    config nested in another file, e.g. a pipeline's stage)."""
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                lines[f"{key_node.value}.{sub_key.value}"] = sub_key.start_mark.line + 1
    return lines


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data, _key_lines(text)


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Coerce a YAML value to the field's annotated type or raise ValueError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and str in args:
            return value  # `all-linear`, not a one-element list
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(" or ".join(errors))
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(hint)[0], key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        value_hint = typing.get_args(hint)[1]
        return {str(k): _coerce(v, value_hint, key) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads `1e-4` as a string
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _flatten(
    data: Mapping[str, Any], lines: Mapping[str, int], where: str
) -> Iterable[tuple[str, Any, str]]:
    """Yield (key, value, place) with section mappings opened up."""
    for key, value in data.items():
        key = str(key)
        if key in ALL_SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                line = lines.get(f"{key}.{sub_key}")
                yield f"{key}.{sub_key}", sub_value, f"{where}:{line}" if line else where
        else:
            line = lines.get(key)
            yield key, value, f"{where}:{line}" if line else where


def _alias_value(alias: str, value: Any) -> Any:
    if alias == "bf16":  # HF's `bf16: true`
        return "bf16" if value else "fp32"
    return value


def build_run_config(
    entries: Iterable[tuple[str, Any, str]], source: str | None = None
) -> RunConfig:
    """Build a RunConfig from (key, value, place) entries; later entries win."""
    errors: list[str] = []
    values: dict[str, dict[str, Any]] = {section: {} for section in ALL_SECTIONS}
    # Stage keys wait for the stage, which decides the section (and may come later).
    stage_entries: list[tuple[str, Any, str, str]] = []
    for raw_key, value, place in entries:
        section_hint, _, key = raw_key.rpartition(".")
        if key in IGNORED_KEYS:
            logger.info("%s: '%s' has no effect in llamaforge; ignored", place, key)
            continue
        if key in ALIASES:
            value = _alias_value(key, value)
            key = ALIASES[key]
        section, owners = FIELD_SECTION.get(key), STAGE_KEYS.get(key, ())
        if section is None and not owners:
            errors.append(f"{place}: unknown key '{raw_key}'{_did_you_mean(key)}")
        elif section_hint and section_hint != section and section_hint not in owners:
            where = section or "' or '".join(owners)
            errors.append(f"{place}: key '{raw_key}' belongs in section '{where}'")
        elif section is None:
            stage_entries.append((key, value, place, section_hint))
        else:
            try:
                values[section][key] = _coerce(value, _HINTS[section][key], key)
            except ValueError as e:
                errors.append(f"{place}: key '{key}': {e}")
    sections = {section: cls(**values[section]) for section, cls in SECTIONS.items()}
    stage = sections["training"].stage
    for key, value, place, section_hint in stage_entries:
        owner = section_hint or (stage if stage in STAGE_KEYS[key] else STAGE_KEYS[key][0])
        if owner != stage:
            errors.append(
                f"{place}: key '{key}' belongs to stage '{owner}', not '{stage}'; "
                f"set stage: {owner} or remove it"
            )
            continue
        try:
            values[stage][key] = _coerce(value, _HINTS[stage][key], key)
        except ValueError as e:
            errors.append(f"{place}: key '{key}': {e}")
    options = STAGES[stage].options(**values[stage]) if stage in STAGES else None
    config = RunConfig(**sections, options=options, source=source)
    errors.extend(validate_run_config(config))
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def load_run_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), **values: Any
) -> RunConfig:
    """Load a config file (optional), then apply ``key=value`` overrides and keyword values.

    >>> load_run_config(None, ["learning_rate=1e-4", "dataset=data.json"]).training.learning_rate
    0.0001
    """
    entries: list[tuple[str, Any, str]] = []
    source = None
    if path is not None:
        path = Path(path)
        data, lines = _read_yaml(path)
        entries.extend(_flatten(data, lines, str(path)))
        source = str(path)
    for item in overrides:
        key, value = _parse_override(item)
        entries.append((key, value, f"override '{item}'"))
    entries.extend((key, value, f"argument '{key}'") for key, value in values.items())
    return build_run_config(entries, source)


def run_config_from_mapping(
    data: Mapping[str, Any],
    where: str,
    lines: Mapping[str, int] | None = None,
    *,
    base: str | Path | None = None,
) -> RunConfig:
    """A config written as a mapping inside another file (``where``: its path; ``lines``: its
    keys' line numbers there), on top of an optional ``base`` config file; relative data
    paths resolve next to ``base``, else next to ``where``."""
    entries: list[tuple[str, Any, str]] = []
    if base is not None:
        base_data, base_lines = _read_yaml(Path(base))
        entries.extend(_flatten(base_data, base_lines, str(base)))
    entries.extend(_flatten(data, lines or {}, where))
    return build_run_config(entries, str(base) if base is not None else where)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples) for saving as YAML/JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    sections = {section: getattr(config, section) for section in SECTIONS}
    if config.options is not None:
        sections[config.training.stage] = config.options
    return {
        name: {k: plain(v) for k, v in dataclasses.asdict(values).items()}
        for name, values in sections.items()
    }
