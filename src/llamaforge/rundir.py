"""The run directory: everything needed to chat, evaluate, merge or export a run.

This module sits below training: models, inference, evaluation and export read runs
through it without importing ``llamaforge.training``.

Layout (written by `llamaforge train`):

    <output_dir>/
      config.yaml              resolved config (written first, before any loading)
      run_metadata.json        versions, data hash, seed, world size, fingerprint
      trainer_log.jsonl        one JSON object per logged step (step, loss, learning_rate, ...)
      loss.png                 train / eval loss curves
      summary.json             tokens trained, wall time, tokens/s, peak memory, best eval loss
      adapter_config.json + adapter_model.safetensors   (peft adapters)  or  model weights (full, freeze)
      tokenizer files          including the chat template
      checkpoint-<step>/       resumable checkpoints; valid only with CHECKPOINT_MARKER inside

Checkpoints are written by the HF Trainer, which does not write atomically; a checkpoint
counts as valid only once our marker file is written after the Trainer has finished it,
so a crash mid-save leaves a directory that `resume_from_checkpoint: auto` ignores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from llamaforge.config.loader import STAGE_SECTIONS, config_to_dict
from llamaforge.config.sections import SECTIONS, RunConfig
from llamaforge.errors import ConfigError

CONFIG_NAME = "config.yaml"
METADATA_NAME = "run_metadata.json"
LOG_NAME = "trainer_log.jsonl"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "loss.png"
CHECKPOINT_MARKER = "llamaforge_checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# Keys that may change between a run and its resumption without breaking it. The dataset's
# location may: its tokenized content is in the fingerprint (data_hash), so a moved or renamed
# file with the same records resumes, and changed records are refused.
RESUMABLE_CHANGES = {
    "dataset",
    "output_dir",
    "resume_from_checkpoint",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "report_to",
    "num_epochs",
    "max_steps",
    "predict_with_generate",
    "early_stopping_patience",
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_ordinary(path: Path) -> None:
    """Give ``path`` (and, for a directory, everything in it) the permissions a plain
    ``open``/``mkdir`` would: mkstemp/mkdtemp (and safetensors) create private ones."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def write_atomic(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    write_atomic(
        run_dir / CONFIG_NAME,
        yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True),
    )


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's saved ``config.yaml`` as a dict ({} when there is none).

    The one reader of a run's config: models, inference, evaluation and export use it.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable run config ({e}); fix or delete it") from None
    return data if isinstance(data, dict) else {}


def run_config_value(run_config: dict[str, Any], section: str, key: str) -> Any:
    """``section.key`` of a saved config, nested (as training saves it) or flat (alpaca-lora
    style keys, which the config loader accepts too)."""
    nested = run_config.get(section)
    if isinstance(nested, dict) and key in nested:
        return nested[key]
    return run_config.get(key)


def run_fingerprint(cfg: RunConfig, data_hash: str) -> dict[str, Any]:
    """The config values (and data) that a resumed run must share with the original."""
    flat: dict[str, Any] = {}
    for section in config_to_dict(cfg).values():
        flat.update({k: v for k, v in section.items() if k not in RESUMABLE_CHANGES})
    flat["data_hash"] = data_hash
    return flat


def default_values(stage: str | None) -> dict[str, Any]:
    """Every key's default for a run of ``stage``, flat and plain (lists, not tuples), as
    fingerprints hold them (stage sections may share a key name, with their own defaults)."""
    classes = [*SECTIONS.values(), *([STAGE_SECTIONS[stage]] if stage in STAGE_SECTIONS else [])]
    flat: dict[str, Any] = {}
    for cls in classes:
        flat.update(json.loads(json.dumps(dataclasses.asdict(cls()))))
    return flat


def hash_examples(examples: Iterable[dict[str, Any]]) -> str:
    """Content hash of tokenized examples: every column but ``attention_mask`` (derived),
    in order. Works for any stage's columns (input_ids/labels, chosen/rejected ids, ...)."""
    digest = hashlib.sha256()
    for example in examples:
        row = [example[k] for k in sorted(example) if k != "attention_mask"]
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def mark_checkpoint(checkpoint_dir: Path, step: int, fingerprint: dict[str, Any]) -> None:
    write_atomic(
        checkpoint_dir / CHECKPOINT_MARKER, json.dumps({"step": step, "fingerprint": fingerprint})
    )


def valid_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoints that were completely written, oldest first."""
    found = []
    if not run_dir.is_dir():
        return found
    for child in run_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / CHECKPOINT_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(run_dir: Path, resume: str | None, fingerprint: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, or None to start fresh. Refuses incompatible resumes."""
    if resume is None:
        return None
    if resume == "auto":
        checkpoints = valid_checkpoints(run_dir)
        if not checkpoints:
            return None
        checkpoint = checkpoints[-1][1]
    else:
        checkpoint = Path(resume)
        if not (checkpoint / CHECKPOINT_MARKER).is_file():
            raise ConfigError(
                f"key 'resume_from_checkpoint': {checkpoint} is not a complete llamaforge "
                "checkpoint (no marker file); use 'auto' to pick the newest valid one"
            )
    saved = json.loads((checkpoint / CHECKPOINT_MARKER).read_text())["fingerprint"]
    # A key added to llamaforge after the checkpoint was written is absent from it: the run
    # had that key's default, so only a non-default value now is a change.
    defaults = default_values(fingerprint.get("stage"))
    changed = sorted(
        k
        for k in set(saved) | set(fingerprint)
        if saved.get(k, defaults.get(k)) != fingerprint.get(k, defaults.get(k))
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {fingerprint.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"cannot resume from {checkpoint}: the run changed ({details}); "
            "restore those values or start a new run in another output_dir"
        )
    return checkpoint


def truncate_log(run_dir: Path, last_step: int) -> None:
    """Drop log lines past the checkpoint we resume from (they will be logged again)."""
    path = run_dir / LOG_NAME
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    write_atomic(path, "".join(line + "\n" for line in kept))


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LOG_NAME
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def check_output_dir(run_dir: Path, resume: str | None) -> None:
    """Refuse to train into a directory holding another run unless resuming."""
    if resume is None and (run_dir / METADATA_NAME).exists():
        raise ConfigError(
            f"key 'output_dir': {run_dir} already holds a run; set resume_from_checkpoint=auto "
            "to continue it, or choose another output_dir"
        )
