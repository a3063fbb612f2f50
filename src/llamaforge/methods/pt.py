"""Continued pretraining on raw text, top to bottom: documents → blocks → Trainer → harness.

Documents (``text`` records, ``.txt`` files, LLaMA-Factory pretraining entries) are joined
with EOS and cut into ``cutoff_len`` blocks (data/pretraining.py); every token is trained.
The validation split holds out whole documents, and its perplexity is logged
(``eval_perplexity`` in trainer_log.jsonl). With LoRA, ``train_embeddings`` also trains the
embeddings and lm_head in full, as new text (a new language, new tokens) usually needs.
"""

from __future__ import annotations

from pathlib import Path

from transformers import DataCollatorForSeq2Seq

from llamaforge.config.sections import PretrainConfig, RunConfig
from llamaforge.data.pretraining import pretraining_blocks
from llamaforge.data.registry import load_dataset_records, split_validation
from llamaforge.models import load_model
from llamaforge.training.harness import plan_run, run_stage, trainable_model, training_arguments
from llamaforge.training.packing import packing_collator
from llamaforge.training.trainer import TrainedPositionsTrainer

EMBEDDING_MODULES = ("embed_tokens", "lm_head")


def run_pt(cfg: RunConfig) -> Path:
    """Pretrain according to `cfg`; returns the run directory."""
    options = cfg.stage_options(PretrainConfig)
    plan = plan_run(cfg, packing=cfg.data.packing)

    base_dir = Path(cfg.source).parent if cfg.source else None
    documents = load_dataset_records(cfg.data, base_dir=base_dir, seed=cfg.training.seed)
    train_docs, val_docs = split_validation(documents, cfg.data.val_set_size, cfg.training.seed)
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    train_set = pretraining_blocks(train_docs, tokenizer, cfg.data.cutoff_len)
    val_set = pretraining_blocks(val_docs, tokenizer, cfg.data.cutoff_len) if val_docs else None

    model = trainable_model(
        model, cfg, plan, modules_to_save=EMBEDDING_MODULES if options.train_embeddings else ()
    )
    trainer = TrainedPositionsTrainer(
        model=model,
        # The perplexity before training is the baseline the run is judged against.
        args=training_arguments(
            cfg, plan, has_eval=val_set is not None, eval_on_start=val_set is not None
        ),
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=packing_collator()
        if plan.packing
        else DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100),
        processing_class=tokenizer,
    )
    run_stage(trainer, cfg, plan, log_perplexity=True)
    return plan.run_dir
