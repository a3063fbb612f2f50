"""SimPO (simple preference optimisation), top to bottom: pairs → TRL's CPOTrainer.

Reference-free: the reward of an answer is ``simpo_beta`` times its mean per-token
log-probability, and the loss asks the chosen answer's reward to beat the rejected one's by
the margin ``simpo_gamma`` (TRL's CPOTrainer with ``loss_type="simpo"`` and ``cpo_alpha=0``:
no extra NLL term, as in the SimPO paper). CPOTrainer lives in ``trl.experimental``; it is
imported with its instability warning silenced (training/preference.py). Pairs rendered with
our template, tokenized by TRL and checked against our tokenization.
"""

from __future__ import annotations

from pathlib import Path

from llamaforge.config.sections import RunConfig, SimPOConfig
from llamaforge.methods.reference_free import run_reference_free
from llamaforge.training.preference import experimental_trl

METRICS = ("rewards/", "logps/", "nll_loss")


def run_simpo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    with experimental_trl():
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    options = cfg.stage_options(SimPOConfig)
    return run_reference_free(
        cfg,
        CPOTrainer,
        CPOConfig,
        METRICS,
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=options.simpo_beta,
        simpo_gamma=options.simpo_gamma,
    )
