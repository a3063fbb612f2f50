"""The reference-free pair stages (ORPO, SimPO), top to bottom: pairs → a TRL trainer.

Both read pairs rendered with our template, let TRL tokenize them (without special tokens:
TRL's ORPO and CPO trainers add BOS themselves when the prompt lacks it) and check TRL's ids
against our tokenization; they differ only in the trainer and its loss settings, which the
stage modules pass in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from llamaforge.config.sections import RunConfig
from llamaforge.data import get_template
from llamaforge.models import load_model
from llamaforge.training.harness import (
    plan_run,
    run_stage,
    stage_records,
    trainable_model,
    training_arguments,
)
from llamaforge.training.preference import check_tokenization, pair_rows


def run_reference_free(
    cfg: RunConfig,
    trainer_class: Any,
    args_class: Any,
    metrics: tuple[str, ...],
    **loss_fields: Any,
) -> Path:
    """Train ``trainer_class`` (its config ``args_class`` with ``loss_fields``) on the
    config's pairs; returns the run directory."""
    template = get_template(cfg.data.template, cfg.data.templates_dir)
    plan = plan_run(cfg, packing=False)

    train_records, val_records = stage_records(cfg)
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    train_rows = pair_rows(train_records, tokenizer, template, adds_specials=False)
    val_rows = pair_rows(val_records, tokenizer, template, adds_specials=False)

    model = trainable_model(model, cfg, plan)
    has_eval = bool(val_rows)
    args = training_arguments(
        cfg,
        plan,
        args_class,
        has_eval=has_eval,
        eval_on_start=has_eval,
        max_length=cfg.data.cutoff_len,
        disable_dropout=False,
        **loss_fields,
    )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None,
        processing_class=tokenizer,
    )
    check_tokenization(trainer.train_dataset, train_records, tokenizer, template)
    run_stage(trainer, cfg, plan, log_metrics=metrics)
    return plan.run_dir
