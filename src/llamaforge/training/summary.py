"""run_metadata.json (what ran) and summary.json (what it achieved)."""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from llamaforge.config.sections import RunConfig
from llamaforge.rundir import METADATA_NAME, SUMMARY_NAME, read_log, write_atomic

_PACKAGES = (
    "llamaforge",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "bitsandbytes",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def peak_memory_bytes() -> int:
    """Peak device memory on CUDA, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def write_metadata(
    run_dir: Path,
    cfg: RunConfig,
    *,
    data_hash: str,
    fingerprint: dict[str, Any],
    plan: dict[str, Any],
) -> None:
    metadata = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "versions": package_versions(),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "world_size": plan["world_size"],
        "plan": plan,
        "seed": cfg.training.seed,
        "data_hash": data_hash,
        "fingerprint": fingerprint,
    }
    write_atomic(run_dir / METADATA_NAME, json.dumps(metadata, indent=2))


# What every stage logs; anything else in the log is a stage's own metric.
_BASE_LOG_KEYS = {
    "step",
    "loss",
    "eval_loss",
    "eval_perplexity",
    "learning_rate",
    "grad_norm",
    "epoch",
    "tokens_seen",
    "tokens_per_s",
}


def write_summary(
    run_dir: Path, trainer: Trainer, *, wall_s: float, tokens_per_s: float
) -> dict[str, Any]:
    state = trainer.state
    log = read_log(run_dir)
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    losses = [r["loss"] for r in log if "loss" in r]
    summary = {
        "global_step": state.global_step,
        "epochs": state.epoch,
        "tokens_trained": state.num_input_tokens_seen,
        "wall_time_s": round(wall_s, 2),
        "tokens_per_s": round(tokens_per_s, 2),
        "peak_memory_bytes": peak_memory_bytes(),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None,
        "best_checkpoint": state.best_model_checkpoint,
        # A stage's own logged metrics (rewards/margins, eval_rewards/accuracies, ...): last values.
        "final_metrics": {k: v for r in log for k, v in r.items() if k not in _BASE_LOG_KEYS},
    }
    write_atomic(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2))
    return summary


def add_to_summary(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Add a stage's own results computed after training (e.g. held-out accuracy before and
    after) to the summary.json the harness wrote."""
    path = run_dir / SUMMARY_NAME
    summary = {**json.loads(path.read_text(encoding="utf-8")), **fields}
    write_atomic(path, json.dumps(summary, indent=2))
    return summary
