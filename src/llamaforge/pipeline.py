"""Staged recipes as one command: ``llamaforge pipeline FILE``.

A pipeline file names an ``output_dir`` and a list of ``stages``; each stage has a ``name``
and one step: ``train`` (the keys of a ``llamaforge train`` config, optionally on top of a
``config:`` file) or ``tokenizer_extend`` (``model``, ``corpus``, ``add``, optional
``heldout`` and ``min_frequency``, as ``llamaforge tokenizer extend`` takes them). Stage ``NAME`` writes ``<output_dir>/NAME``
and any string value ``@NAME`` in a later stage is that directory, so a stage trains on the
run directory of the one before it::

    output_dir: runs/zh
    stages:
      - name: pt
        train: {stage: pt, model: smollm2-135m, dataset: [corpus.txt], max_steps: 200}
      - name: sft
        train: {config: configs/quickstart.yaml, model: "@pt"}

Stages run in order, in this process. A stage that finished (recorded in
``<output_dir>/pipeline_state.json`` with the settings it ran with) is skipped; one that
finished with other settings is refused rather than silently reused. An interrupted
training stage resumes exactly from its last checkpoint (``resume_from_checkpoint: auto``,
which refuses changed settings or data), so a pipeline killed anywhere and started again
ends with the same models as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llamaforge import rundir
from llamaforge.config.loader import key_lines, run_config_from_mapping
from llamaforge.errors import ConfigError

logger = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    settings: dict[str, Any]
    lines: dict[str, int]
    line: int


def _train_step(pipeline: Path, stage: Stage, output: Path) -> Callable[[], object]:
    """A training stage: its RunConfig (validated now), run resumably when called."""
    settings = dict(stage.settings)
    base = settings.pop("config", None)
    if base is not None:
        base = _relative(pipeline, base)
    for key in ("output_dir", "resume_from_checkpoint"):
        if key in settings:
            raise ConfigError(
                f"{pipeline}:{stage.lines.get(key, stage.line)}: stage '{stage.name}': key "
                f"'{key}' is set by the pipeline ({output}); remove it"
            )
    settings["output_dir"] = str(output)
    settings["resume_from_checkpoint"] = "auto"  # a fresh directory starts from scratch
    cfg = run_config_from_mapping(settings, str(pipeline), stage.lines, base=base)

    def run() -> object:
        from llamaforge.methods import run_training

        return run_training(cfg)

    return run


_EXTEND_KEYS = {"model", "corpus", "add", "heldout", "min_frequency"}


def _extend_step(pipeline: Path, stage: Stage, output: Path) -> Callable[[], object]:
    """A vocabulary extension (``llamaforge tokenizer extend``) into the stage's directory;
    an interrupted one starts again (its output appears only when complete)."""
    settings = stage.settings
    unknown = sorted(set(settings) - _EXTEND_KEYS)
    missing = sorted({"model", "corpus", "add"} - set(settings))
    if unknown or missing:
        raise ConfigError(
            f"{pipeline}:{stage.line}: stage '{stage.name}': tokenizer_extend takes "
            f"{', '.join(sorted(_EXTEND_KEYS))}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )

    def paths(key: str) -> list[Path]:
        value = settings.get(key) or []
        return [_relative(pipeline, v) for v in ([value] if isinstance(value, str) else value)]

    def run() -> object:
        from llamaforge.export.extend import extend_model

        report = extend_model(
            str(settings["model"]),
            paths("corpus"),
            int(settings["add"]),
            output,
            heldout=paths("heldout"),
            min_frequency=int(settings.get("min_frequency", 2)),
            overwrite=True,
        )
        logger.info("%s", report.summary())
        return report

    return run


STEPS: dict[str, Callable[[Path, Stage, Path], Callable[[], object]]] = {
    "train": _train_step,
    "tokenizer_extend": _extend_step,
}
"""Step kinds: a stage's key naming its kind → a function that checks the stage's settings
(raising ConfigError) and returns the call that runs it into its directory."""


def _relative(pipeline: Path, value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return pipeline.parent / path


def read_pipeline(path: Path) -> tuple[Path, list[Stage]]:
    """(output_dir, stages) of a pipeline file, every problem named by file and line."""
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else 1}: invalid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}: a pipeline is a mapping with output_dir and stages")
    unknown = set(data) - {"output_dir", "stages"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {sorted(unknown)}; a pipeline has output_dir, stages"
        )
    if not isinstance(data.get("output_dir"), str) or not data.get("stages"):
        raise ConfigError(f"{path}: needs output_dir (a folder) and a non-empty list of stages")
    nodes = dict((k.value, v) for k, v in root.value)["stages"]
    if not isinstance(data["stages"], list) or not isinstance(nodes, yaml.SequenceNode):
        raise ConfigError(f"{path}: stages must be a list")
    stages: list[Stage] = []
    for entry, node in zip(data["stages"], nodes.value, strict=True):
        stages.append(_stage(path, entry, node, {s.name for s in stages}))
    return _relative(path, data["output_dir"]), stages


def _stage(path: Path, entry: Any, node: yaml.Node, earlier: set[str]) -> Stage:
    line = node.start_mark.line + 1
    where = f"{path}:{line}"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(
            f"{where}: a stage is a mapping with a name and one step ({', '.join(STEPS)})"
        )
    name = entry["name"]
    if name in earlier or not name.replace("-", "_").isidentifier():
        raise ConfigError(f"{where}: stage name '{name}' must be unique and a plain word")
    kinds = [key for key in entry if key != "name"]
    if len(kinds) != 1 or kinds[0] not in STEPS:
        raise ConfigError(
            f"{where}: stage '{name}' needs exactly one step, one of: {', '.join(STEPS)} "
            f"(got {', '.join(kinds) or 'none'})"
        )
    kind = kinds[0]
    settings = entry[kind] or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: stage '{name}': {kind} must be a mapping of settings")
    step_node = next(v for k, v in node.value if k.value == kind)  # type: ignore[attr-defined]
    return Stage(name, kind, settings, key_lines(step_node), line)


def _resolve_refs(value: Any, outputs: Mapping[str, Path], where: str) -> Any:
    """``@NAME`` → the output directory of the earlier stage NAME, at any depth."""
    if isinstance(value, str) and value.startswith("@"):
        if value[1:] not in outputs:
            known = ", ".join(f"@{n}" for n in outputs) or "none yet"
            raise ConfigError(f"{where}: '{value}' names no earlier stage (earlier: {known})")
        return str(outputs[value[1:]])
    if isinstance(value, list):
        return [_resolve_refs(v, outputs, where) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_refs(v, outputs, where) for k, v in value.items()}
    return value


def _fingerprint(stage: Stage) -> str:
    text = json.dumps({"kind": stage.kind, "settings": stage.settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_state(output_dir: Path) -> dict[str, str]:
    path = output_dir / STATE_FILE
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")).get("completed", {}))


def run_pipeline(path: str | Path, *, dry_run: bool = False) -> Path:
    """Run every stage of the pipeline file in order; returns its output directory. Every
    stage's settings are checked before the first one runs (a typo in the last stage must
    not wait for hours of training to surface)."""
    path = Path(path)
    output_dir, stages = read_pipeline(path)
    completed = _read_state(output_dir)
    outputs: dict[str, Path] = {}
    planned = []
    for stage in stages:
        where = f"{path}:{stage.line}"
        settings = _resolve_refs(stage.settings, outputs, where)
        stage = Stage(stage.name, stage.kind, settings, stage.lines, stage.line)
        output = output_dir / stage.name
        outputs[stage.name] = output
        fingerprint = _fingerprint(stage)
        if stage.name in completed and completed[stage.name] != fingerprint:
            raise ConfigError(
                f"{where}: stage '{stage.name}' finished with other settings; delete "
                f"{output} (and the stages after it) and its entry in "
                f"{output_dir / STATE_FILE} to run it again"
            )
        planned.append((stage, output, fingerprint, STEPS[stage.kind](path, stage, output)))
    for number, (stage, output, fingerprint, run) in enumerate(planned, start=1):
        header = f"stage {number}/{len(stages)} '{stage.name}' ({stage.kind}) → {output}"
        if stage.name in completed:
            logger.info("%s: complete, skipped", header)
            continue
        logger.info("%s%s", header, " (dry run)" if dry_run else "")
        if dry_run:
            continue
        run()
        completed[stage.name] = fingerprint
        output_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(
            output_dir / STATE_FILE, json.dumps({"completed": completed}, indent=1) + "\n"
        )
    return output_dir
