"""KTO (Kahneman-Tversky optimisation), top to bottom: labelled answers → TRL's KTOTrainer.

Binary feedback: each record is a prompt and ONE answer labelled desirable (``label:
true``) or not (LLaMA-Factory's ``kto_tag``); preference pairs are split into their chosen
(desirable) and rejected answer. Texts rendered with our template, tokenized by TRL and
checked against our tokenization (training/preference.py). ``kto_beta``,
``desirable_weight`` and ``undesirable_weight`` are TRL's beta and weights; the reference
is the base with the adapter disabled for LoRA, a frozen copy for full/freeze. TRL's KL
estimate pairs each answer with its neighbour's prompt within a micro-batch, so the data
order is fixed (TRL's sequential sampler) after one seeded shuffle here.
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset

from llamaforge.config.finetuning import FINETUNING
from llamaforge.config.sections import KTOConfig, RunConfig
from llamaforge.data import get_template
from llamaforge.models import load_model
from llamaforge.training.harness import (
    plan_run,
    run_stage,
    stage_records,
    trainable_model,
    training_arguments,
)
from llamaforge.training.preference import (
    check_tokenization,
    drop_reference_adapter,
    feedback_rows,
    frozen_copy,
)

METRICS = ("rewards/", "logps/", "kl")


def run_kto(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    from trl import KTOConfig as TRLKTOConfig
    from trl import KTOTrainer

    options = cfg.stage_options(KTOConfig)
    template = get_template(cfg.data.template, cfg.data.templates_dir)
    plan = plan_run(cfg, packing=False)

    train_records, val_records = stage_records(cfg)
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    train_rows = feedback_rows(train_records, tokenizer, template)
    # Unpaired pairs would otherwise sit side by side, the same prompt in every KL pair.
    random.Random(cfg.training.seed).shuffle(train_rows)
    val_rows = feedback_rows(val_records, tokenizer, template)

    frozen_base = FINETUNING[cfg.finetuning.finetuning].frozen_base
    reference = None if frozen_base else frozen_copy(model)
    model = trainable_model(model, cfg, plan)
    has_eval = bool(val_rows)
    args = training_arguments(
        cfg,
        plan,
        TRLKTOConfig,
        has_eval=has_eval,
        eval_on_start=has_eval,
        beta=options.kto_beta,
        desirable_weight=options.desirable_weight,
        undesirable_weight=options.undesirable_weight,
        max_length=cfg.data.cutoff_len,
        train_sampling_strategy="sequential",  # TRL's KL pairs need the fixed order
        disable_dropout=False,  # lora_dropout does what the config says
    )
    trainer = KTOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None,
        processing_class=tokenizer,
    )
    drop_reference_adapter(trainer.model)
    check_tokenization(trainer.train_dataset, train_records, tokenizer, template)
    run_stage(trainer, cfg, plan, log_metrics=METRICS)
    return plan.run_dir
