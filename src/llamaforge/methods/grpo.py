"""GRPO (group relative policy optimisation) on TRL's GRPOTrainer: methods/online.py.

Each prompt's ``num_generations`` completions are sampled through llamaforge's engine
(TRL's ``rollout_func``) and scored by the rewards; a completion's advantage is its reward
minus its group's mean, divided by the group's standard deviation (``scale_rewards``), and
the token losses are averaged as ``loss_type`` says. One policy update per batch of
rollouts, so TRL's clipped ratio is 1 (the objective is the plain policy gradient);
``beta`` > 0 adds the per-token KL to the reference (the adapter disabled).
"""

from __future__ import annotations

from pathlib import Path

from llamaforge.config.sections import GRPOConfig, RunConfig
from llamaforge.methods.online import run_online


def run_grpo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    options = cfg.stage_options(GRPOConfig)
    return run_online(
        cfg,
        GRPOTrainer,
        TRLGRPOConfig,
        engine_rollouts=True,
        beta=options.beta,
        loss_type=options.loss_type,
        scale_rewards=options.scale_rewards,
        disable_dropout=False,  # lora_dropout does what it says; rollouts run in eval mode
    )
