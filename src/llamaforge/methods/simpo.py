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

from datasets import Dataset

from llamaforge.config.sections import RunConfig, SimPOConfig
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

METRICS = ("rewards/", "logps/", "nll_loss")


def run_simpo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    with experimental_trl():
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    options = cfg.stage_options(SimPOConfig)
    template = get_template(cfg.data.template, cfg.data.templates_dir)
    plan = plan_run(cfg, packing=False)

    train_records, val_records = stage_records(cfg)
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    # CPO tokenizes without special tokens and adds BOS itself when the prompt lacks it.
    train_rows = pair_rows(train_records, tokenizer, template, adds_specials=False)
    val_rows = pair_rows(val_records, tokenizer, template, adds_specials=False)

    model = trainable_model(model, cfg, plan)
    has_eval = bool(val_rows)
    args = training_arguments(
        cfg,
        plan,
        CPOConfig,
        has_eval=has_eval,
        eval_on_start=has_eval,
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=options.simpo_beta,
        simpo_gamma=options.simpo_gamma,
        max_length=cfg.data.cutoff_len,
        disable_dropout=False,
    )
    trainer = CPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None,
        processing_class=tokenizer,
    )
    check_tokenization(trainer.train_dataset, train_records, tokenizer, template)
    run_stage(trainer, cfg, plan, log_metrics=METRICS)
    return plan.run_dir
