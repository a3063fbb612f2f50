"""Direct preference optimisation, top to bottom: pairs → texts → TRL's DPOTrainer → harness.

Pairs (prompt, chosen, rejected) are rendered with our template and handed to TRL as plain
text, which TRL tokenizes; the ids are checked against our SFT tokenization before
training (training/preference.py). The loss is ``pref_loss``: sigmoid (DPO), ipo, hinge or
robust (with ``label_smoothing``), plus ``sft_weight`` × the chosen answers' NLL (RPO).
The reference model: with LoRA the same weights with the adapter disabled (no second
copy); with full or freeze fine-tuning a frozen copy, or none when
``precompute_ref_log_probs`` scores every pair with the reference before training.
With ``packing`` (default) each pair is scored in one row with its prompt computed once and
only answer positions through the LM head (training/preference_scoring.py). TRL's metrics
(rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/...) go to
trainer_log.jsonl and summary.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset

from llamaforge.config.finetuning import FINETUNING
from llamaforge.config.sections import DPOConfig, RunConfig
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
    frozen_copy,
    pair_rows,
)
from llamaforge.training.preference_scoring import share_prompt_scoring

logger = logging.getLogger(__name__)

METRICS = ("rewards/", "logps/")


def run_dpo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    options = cfg.stage_options(DPOConfig)
    template = get_template(cfg.data.template, cfg.data.templates_dir)
    # TRL pads each pair into two rows; the padding-free scoring is ours (below).
    plan = plan_run(cfg, packing=False)

    train_records, val_records = stage_records(cfg)
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    train_rows = pair_rows(train_records, tokenizer, template, adds_specials=True)
    val_rows = pair_rows(val_records, tokenizer, template, adds_specials=True)

    frozen_base = FINETUNING[cfg.finetuning.finetuning].frozen_base
    reference = None if frozen_base or options.precompute_ref_log_probs else frozen_copy(model)
    model = trainable_model(model, cfg, plan)
    has_eval = bool(val_rows)
    args = training_arguments(
        cfg,
        plan,
        TRLDPOConfig,
        has_eval=has_eval,
        eval_on_start=has_eval,  # the margin before training is the baseline
        # TRL's "sft" term reads the same per-token log-probs, so the shared-prompt path
        # serves it too.
        loss_type=[options.pref_loss, "sft"] if options.sft_weight else [options.pref_loss],
        loss_weights=[1.0, options.sft_weight] if options.sft_weight else None,
        beta=options.beta,
        label_smoothing=options.label_smoothing,
        precompute_ref_log_probs=options.precompute_ref_log_probs,
        max_length=cfg.data.cutoff_len,
        disable_dropout=False,  # lora_dropout does what the config says
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None,
        processing_class=tokenizer,
    )
    drop_reference_adapter(trainer.model)
    check_tokenization(trainer.train_dataset, train_records, tokenizer, template)
    if cfg.data.packing:  # after TRL's own reference pass (precompute_ref_log_probs)
        trained: Any = trainer.model
        policy = trained.get_base_model() if frozen_base else trained
        scored = [share_prompt_scoring(m) for m in (policy, trainer.ref_model) if m is not None]
        logger.info("pairs scored with a shared prompt: %s", all(scored))
    run_stage(trainer, cfg, plan, log_metrics=METRICS)
    return plan.run_dir
