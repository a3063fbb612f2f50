"""ORPO (odds-ratio preference optimisation), top to bottom: pairs → TRL's ORPOTrainer.

Reference-free: the loss is the chosen answer's NLL plus ``orpo_beta`` (the paper's lambda)
times the log-sigmoid of the chosen/rejected log-odds ratio, so no reference model is
kept or scored. ORPOTrainer lives in ``trl.experimental``; it is imported with its
instability warning silenced (training/preference.py). Pairs rendered with our template,
tokenized by TRL and checked against our tokenization.
"""

from __future__ import annotations

from pathlib import Path

from llamaforge.config.sections import ORPOConfig, RunConfig
from llamaforge.methods.reference_free import run_reference_free
from llamaforge.training.preference import experimental_trl

METRICS = ("rewards/", "logps/", "log_odds", "nll_loss")


def run_orpo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    with experimental_trl():
        from trl.experimental.orpo import ORPOConfig as TRLORPOConfig
        from trl.experimental.orpo import ORPOTrainer

    options = cfg.stage_options(ORPOConfig)
    return run_reference_free(cfg, ORPOTrainer, TRLORPOConfig, METRICS, beta=options.orpo_beta)
