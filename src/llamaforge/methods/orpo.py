"""ORPO (odds-ratio preference optimisation), top to bottom: pairs → TRL's ORPOTrainer.

Reference-free: the loss is the chosen answer's NLL plus ``orpo_beta`` (the paper's lambda)
times the log-sigmoid of the chosen/rejected log-odds ratio, so no reference model is
kept or scored. ORPOTrainer lives in ``trl.experimental``; it is imported with its
instability warning silenced (training/preference.py). Pairs rendered with our template,
tokenized by TRL and checked against our tokenization.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from llamaforge.config.sections import ORPOConfig, RunConfig
from llamaforge.data import get_template
from llamaforge.models import load_model
from llamaforge.training.harness import (
    plan_run,
    run_stage,
    stage_records,
    trainable_model,
    training_arguments,
)
from llamaforge.training.preference import check_tokenization, experimental_trl, pair_rows

METRICS = ("rewards/", "logps/", "log_odds", "nll_loss")


def run_orpo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    with experimental_trl():
        from trl.experimental.orpo import ORPOConfig as TRLORPOConfig
        from trl.experimental.orpo import ORPOTrainer

    options = cfg.stage_options(ORPOConfig)
    template = get_template(cfg.data.template, cfg.data.templates_dir)
    plan = plan_run(cfg, packing=False)

    train_records, val_records = stage_records(cfg)
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    # ORPO tokenizes without special tokens and adds BOS itself when the prompt lacks it.
    train_rows = pair_rows(train_records, tokenizer, template, adds_specials=False)
    val_rows = pair_rows(val_records, tokenizer, template, adds_specials=False)

    model = trainable_model(model, cfg, plan)
    has_eval = bool(val_rows)
    args = training_arguments(
        cfg,
        plan,
        TRLORPOConfig,
        has_eval=has_eval,
        eval_on_start=has_eval,
        beta=options.orpo_beta,
        max_length=cfg.data.cutoff_len,
        disable_dropout=False,
    )
    trainer = ORPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None,
        processing_class=tokenizer,
    )
    check_tokenization(trainer.train_dataset, train_records, tokenizer, template)
    run_stage(trainer, cfg, plan, log_metrics=METRICS)
    return plan.run_dir
