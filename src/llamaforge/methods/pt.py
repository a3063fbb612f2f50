"""Continued pretraining on raw text, top to bottom: documents → blocks → Trainer → harness.

Documents (``text`` records, ``.txt`` files, LLaMA-Factory pretraining entries) are joined
with EOS and cut into ``cutoff_len`` blocks (data/pretraining.py); every token is trained.
The validation split holds out whole documents, and its perplexity is logged
(``eval_perplexity`` in trainer_log.jsonl). With ``streaming`` the corpus is read from disk
as training consumes it (data/streaming.py) and the first ``val_set_size`` documents are
the validation split. With LoRA, ``train_embeddings`` also trains the
embeddings and lm_head in full, as new text (a new language, new tokens) usually needs;
``train_new_tokens`` trains only the rows of the tokens a vocabulary extension added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import DataCollatorForSeq2Seq

from llamaforge.config.sections import PretrainConfig, RunConfig
from llamaforge.data.pretraining import pretraining_blocks
from llamaforge.data.registry import resolve_dataset
from llamaforge.data.streaming import StreamedBlocks, head_documents
from llamaforge.errors import ConfigError
from llamaforge.models import load_model, resolve_model
from llamaforge.models.vocabulary import EXTENSION_RECORD, read_extension_record
from llamaforge.training.harness import (
    plan_run,
    run_stage,
    stage_records,
    trainable_model,
    training_arguments,
)
from llamaforge.training.packing import packing_collator
from llamaforge.training.trainer import TrainedPositionsTrainer

EMBEDDING_MODULES = ("embed_tokens", "lm_head")


def run_pt(cfg: RunConfig) -> Path:
    """Pretrain according to `cfg`; returns the run directory."""
    options = cfg.stage_options(PretrainConfig)
    plan = plan_run(cfg, packing=cfg.data.packing)

    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    train_set, val_set = (_streamed if options.streaming else _in_memory)(cfg, tokenizer)

    model = trainable_model(
        model,
        cfg,
        plan,
        modules_to_save=EMBEDDING_MODULES if options.train_embeddings else (),
        trainable_tokens=_added_token_ids(cfg) if options.train_new_tokens else (),
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


def _added_token_ids(cfg: RunConfig) -> tuple[int, ...]:
    """The ids ``tokenizer extend`` added to the model (its directory records them)."""
    directory = resolve_model(cfg.model.model).path
    record = read_extension_record(directory)
    if record is None:
        raise ConfigError(
            f"key 'train_new_tokens': {directory} has no {EXTENSION_RECORD}, so it was not "
            "made by `llamaforge tokenizer extend`; extend it first, or use train_embeddings"
        )
    return tuple(record.new_ids)


def _base_dir(cfg: RunConfig) -> Path | None:
    return Path(cfg.source).parent if cfg.source else None


def _in_memory(cfg: RunConfig, tokenizer: Any) -> tuple[Any, Any]:
    train_docs, val_docs = stage_records(cfg)
    train_set = pretraining_blocks(train_docs, tokenizer, cfg.data.cutoff_len)
    val_set = pretraining_blocks(val_docs, tokenizer, cfg.data.cutoff_len) if val_docs else None
    return train_set, val_set


def _streamed(cfg: RunConfig, tokenizer: Any) -> tuple[StreamedBlocks, Any]:
    if not cfg.data.dataset:
        raise ConfigError("key 'dataset' is empty; name a data file or a registry entry")
    specs = [resolve_dataset(entry, cfg.data, _base_dir(cfg)) for entry in cfg.data.dataset]
    held = int(cfg.data.val_set_size)
    if held != cfg.data.val_set_size:
        raise ConfigError(f"key 'val_set_size': {cfg.data.val_set_size} is not a whole number")
    val_docs = head_documents(specs, held, cfg.data.max_samples) if held else []
    train_set = StreamedBlocks(
        specs,
        tokenizer,
        cfg.data.cutoff_len,
        skip_documents=held,
        max_samples=cfg.data.max_samples,
    )
    val_set = pretraining_blocks(val_docs, tokenizer, cfg.data.cutoff_len) if val_docs else None
    return train_set, val_set
