"""Supervised fine-tuning, top to bottom: config → data → model → Trainer → harness.

Built on transformers' Trainer (see training/trainer.py for the one thing we add: loss on
trained positions only) with transformers' `DataCollatorWithFlattening` for padding-free
packing: each micro-batch becomes one row, position ids restart per example and attention
runs causally within each example (training/packing.py), so no example attends to another.
Everything that is not SFT (run directory, resume, Ctrl-C, logs, fast paths, summary) is
the harness's (training/harness.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq

from llamaforge.config.sections import RunConfig, SFTConfig
from llamaforge.data import get_template, tokenize_records
from llamaforge.models import load_model
from llamaforge.training.distributed import is_main_process
from llamaforge.training.harness import (
    plan_run,
    run_stage,
    stage_records,
    trainable_model,
    training_arguments,
)
from llamaforge.training.packing import packing_collator
from llamaforge.training.trainer import TrainedPositionsTrainer

logger = logging.getLogger(__name__)


def run_sft(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    options = cfg.stage_options(SFTConfig)
    get_template(cfg.data.template, cfg.data.templates_dir)  # unknown names fail first
    packing = cfg.data.packing
    if packing and options.neftune_noise_alpha is not None:
        # transformers scales NEFTune noise by the row length, alpha / sqrt(L * d): in a
        # packed row of n examples each would get sqrt(n) times too little (transformers#34659).
        logger.warning("neftune_noise_alpha is set: packing off so noise scales per example")
        packing = False
    plan = plan_run(cfg, packing=packing)

    # Data first: a missing or malformed dataset fails before the slow model load.
    train_records, val_records = stage_records(cfg)
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    train_set = tokenize_records(train_records, tokenizer, cfg.data)
    val_set = tokenize_records(val_records, tokenizer, cfg.data) if val_records else None

    model = trainable_model(model, cfg, plan)
    collator: Any = (
        packing_collator()
        if plan.packing
        else DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)
    )
    trainer = TrainedPositionsTrainer(
        model=model,
        args=training_arguments(
            cfg,
            plan,
            has_eval=val_set is not None,
            neftune_noise_alpha=options.neftune_noise_alpha,
        ),
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
    )
    run_stage(trainer, cfg, plan)

    if options.predict_with_generate and val_records and is_main_process():
        from llamaforge.evaluation.predict import predict_and_score

        trained: Any = trainer.model
        if trained.device.type == "cpu" and trained.dtype == torch.bfloat16:
            # Decoding is matrix-vector work, several times slower in bf16 than fp32 on CPUs.
            trained.float()
        predict_and_score(trained, tokenizer, val_records, cfg, plan.run_dir)
    return plan.run_dir
