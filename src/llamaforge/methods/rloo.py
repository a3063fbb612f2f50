"""RLOO (REINFORCE leave-one-out) on TRL's RLOOTrainer: methods/online.py.

Each prompt's ``num_generations`` completions are scored by the rewards minus ``beta`` ×
their summed KL to the reference (the adapter disabled); a completion's advantage is its
reward minus the mean reward of the group's other completions (Ahmadian et al., 2024),
optionally scaled to unit variance (``normalize_advantages``). TRL samples with
``model.generate`` on the training model, so the stage runs without dropout.
"""

from __future__ import annotations

from pathlib import Path

from llamaforge.config.sections import RLOOConfig, RunConfig
from llamaforge.methods.online import run_online


def run_rloo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    from trl import RLOOConfig as TRLRLOOConfig
    from trl import RLOOTrainer

    options = cfg.stage_options(RLOOConfig)
    return run_online(
        cfg,
        RLOOTrainer,
        TRLRLOOConfig,
        engine_rollouts=False,
        beta=options.beta,
        normalize_advantages=options.normalize_advantages,
        disable_dropout=True,  # TRL samples in training mode: no dropout in the rollouts
    )
