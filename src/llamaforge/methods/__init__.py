"""Training stages, one module each; ``config.stages.STAGES`` maps ``stage`` to its entry."""

from __future__ import annotations

import importlib
from pathlib import Path

from llamaforge.config.sections import RunConfig
from llamaforge.config.stages import STAGES


def run_training(cfg: RunConfig) -> Path:
    """Run the stage named by `cfg.training.stage`; returns the run directory."""
    module, _, function = STAGES[cfg.training.stage].entry.partition(":")
    run = getattr(importlib.import_module(module), function)
    return Path(run(cfg))
