"""Training stages, one module each; `METHODS` maps `stage` to its entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llamaforge.config.sections import RunConfig
from llamaforge.methods.sft import run_sft

METHODS: dict[str, Callable[[RunConfig], Path]] = {"sft": run_sft}


def run_training(cfg: RunConfig) -> Path:
    """Run the stage named by `cfg.training.stage`; returns the run directory."""
    return METHODS[cfg.training.stage](cfg)
