"""Supervised fine-tuning, top to bottom: config → model → data → Trainer → run directory.

Built on transformers' Trainer (see training/trainer.py for the one thing we add: loss on
trained positions only) with transformers' `DataCollatorWithFlattening` for padding-free
packing: each micro-batch becomes one row, position ids restart per example and attention
runs causally within each example (training/packing.py), so no example attends to another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    PrinterCallback,
    set_seed,
)

from llamaforge.adapters.attach import attach_adapter, trainable_summary
from llamaforge.config.sections import RunConfig
from llamaforge.data import get_template, tokenize_records
from llamaforge.data.registry import load_dataset_records, split_validation
from llamaforge.errors import ConfigError, TrainingInterrupted
from llamaforge.models import load_model
from llamaforge.training import rundir
from llamaforge.training.callbacks import (
    CheckpointMarkerCallback,
    InterruptCallback,
    RunLogCallback,
)
from llamaforge.training.distributed import check_launch, check_world_size, is_main_process
from llamaforge.training.packing import packing_collator, use_packed_attention
from llamaforge.training.preflight import print_preflight
from llamaforge.training.prepack import prepacked_frozen_linears
from llamaforge.training.summary import write_metadata, write_summary
from llamaforge.training.trainer import (
    TrainedPositionsTrainer,
    base_weights_dtype,
    resolve_precision,
    to_training_arguments,
    world_size_from_env,
)

logger = logging.getLogger(__name__)

# Prefix/prompt tuning prepend virtual tokens, which packed position ids cannot describe.
UNPACKABLE = ("prefix", "prompt")


def check_hardware(cfg: RunConfig) -> None:
    """Fail before loading anything when the method cannot run here."""
    method, precision = cfg.finetuning.finetuning, cfg.training.precision
    check_launch()
    if (method == "qlora" or cfg.model.quantization_bit) and importlib.util.find_spec(
        "bitsandbytes"
    ) is None:
        raise ConfigError("finetuning=qlora needs bitsandbytes: pip install 'llamaforge[qlora]'")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("key 'precision': fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if precision == "bf16" and not torch.cuda.is_available():
        from llamaforge.training.trainer import cpu_supports_bf16

        if not cpu_supports_bf16():
            raise ConfigError("key 'precision': this CPU has no bf16 support; use fp32")
    if cfg.training.fsdp and not torch.cuda.is_available():
        # accelerate builds its FSDP plugin for GPU process groups only: on CPU the Trainer
        # would accept fsdp and run plain DDP (every rank holding every weight).
        raise ConfigError(
            "key 'fsdp': FSDP needs CUDA GPUs; on CPU it would silently run as plain data "
            "parallelism. Unset fsdp (torchrun alone gives data parallelism on CPU)"
        )
    if cfg.training.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("key 'deepspeed': the deepspeed package is not installed")
    if "tensorboard" in cfg.training.report_to and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("report_to tensorboard needs: pip install tensorboard")
    if "wandb" in cfg.training.report_to and importlib.util.find_spec("wandb") is None:
        raise ConfigError("report_to wandb needs: pip install wandb")
    if not cfg.data.dataset:
        raise ConfigError("key 'dataset': no dataset given (a file path or a registry name)")
    get_template(cfg.data.template, cfg.data.templates_dir)  # unknown names fail here


def default_output_dir(cfg: RunConfig) -> Path:
    if cfg.training.output_dir:
        return Path(cfg.training.output_dir)
    return Path("runs") / f"{cfg.training.stage}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_sft(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    check_hardware(cfg)
    run_dir = default_output_dir(cfg)
    resume = cfg.training.resume_from_checkpoint
    rundir.check_output_dir(run_dir, resume)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.save_config(run_dir, cfg)  # first, so a failed run still says what it was

    model_cfg = dataclasses.replace(cfg.model, dtype=base_weights_dtype(cfg))
    if cfg.finetuning.finetuning == "qlora" and model_cfg.quantization_bit is None:
        model_cfg = dataclasses.replace(model_cfg, quantization_bit=4)
    # Data first: a missing or malformed dataset fails before the slow model load.
    base_dir = Path(cfg.source).parent if cfg.source else None
    records = load_dataset_records(cfg.data, base_dir=base_dir, seed=cfg.training.seed)
    train_records, val_records = split_validation(records, cfg.data.val_set_size, cfg.training.seed)
    model, tokenizer = load_model(model_cfg, for_training=True)
    train_set = tokenize_records(train_records, tokenizer, cfg.data)
    val_set = tokenize_records(val_records, tokenizer, cfg.data) if val_records else None
    data_hash = rundir.hash_examples(train_set)
    fingerprint = rundir.run_fingerprint(cfg, data_hash)
    checkpoint = rundir.resolve_resume(run_dir, resume, fingerprint)

    packing = cfg.data.packing and cfg.finetuning.finetuning not in UNPACKABLE
    if packing and cfg.training.neftune_noise_alpha is not None:
        # transformers scales NEFTune noise by the row length, alpha / sqrt(L * d): in a
        # packed row of n examples each would get sqrt(n) times too little (transformers#34659).
        logger.warning("neftune_noise_alpha is set: packing off so noise scales per example")
        packing = False
    if packing:
        use_packed_attention(model)
    # The Trainer seeds only after the adapter exists; seed its initialisation too, or
    # LoRA A / prompt embeddings depend on whatever drew random numbers earlier.
    set_seed(cfg.training.seed)
    model = attach_adapter(
        model, cfg.finetuning, gradient_checkpointing=cfg.training.gradient_checkpointing
    )
    trainable, total = trainable_summary(model)
    world_size = world_size_from_env()
    args = to_training_arguments(
        cfg, run_dir, has_eval=val_set is not None, world_size=world_size, packing=packing
    )
    check_world_size(args.world_size)
    collator: Any = (
        packing_collator()
        if packing
        else DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)
    )
    log_callback = RunLogCallback(run_dir)
    interrupt = InterruptCallback()
    callbacks: list[Any] = [log_callback, CheckpointMarkerCallback(run_dir, fingerprint), interrupt]
    if cfg.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(cfg.training.early_stopping_patience))
    trainer = TrainedPositionsTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # RunLogCallback shows and records the logs
    precision = resolve_precision(cfg.training.precision)
    # Frozen bf16 CPU weights packed once for oneDNN (one process; see training/prepack.py),
    # before the pre-flight so that its calibration and memory figures include them.
    single_process = world_size == 1 and not (cfg.training.deepspeed or cfg.training.fsdp)
    fast_linears = (
        prepacked_frozen_linears(model)
        if single_process and precision == "bf16"
        else contextlib.nullcontext(0)
    )
    with fast_linears:
        if is_main_process():
            if checkpoint is not None:
                rundir.truncate_log(run_dir, int(checkpoint.name.split("-")[1]))
                logger.info("resuming from %s", checkpoint)
            write_metadata(
                run_dir, cfg, data_hash=data_hash, fingerprint=fingerprint, world_size=world_size
            )
            print_preflight(
                trainer,
                trainable=trainable,
                total=total,
                precision=precision,
                packing=packing,
                num_train=len(train_set),
                num_val=len(val_set) if val_set is not None else 0,
            )

        from peft.helpers import disable_input_dtype_casting

        start = time.monotonic()
        interrupt.install()
        # Under autocast the adapter's matmuls run in bf16/fp16 whatever its input's dtype, so
        # peft's copy of every adapter input to the fp32 of its weights (and fp32 dropout on the
        # copy) is pure cost: ~5 % of a LoRA step on the CPU. Safe only while autocast is on.
        no_input_cast = disable_input_dtype_casting(model, active=precision != "fp32")
        try:
            with no_input_cast:
                trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            interrupt.restore()
    if interrupt.interrupted:
        raise TrainingInterrupted(
            f"interrupted: checkpoint-{trainer.state.global_step} saved in {run_dir}; "
            "run again with resume_from_checkpoint=auto to continue"
        )
    wall = time.monotonic() - start
    tokens_per_s = log_callback.tokens_per_second(trainer.state)  # before saving, not after

    trainer.save_model(str(run_dir))  # adapter (peft) or full weights, + tokenizer
    if is_main_process():
        write_summary(run_dir, trainer, wall_s=wall, tokens_per_s=tokens_per_s)
        logger.info("run saved to %s", run_dir)
    if cfg.training.predict_with_generate and val_records and is_main_process():
        from llamaforge.evaluation.predict import predict_and_score

        trained: Any = trainer.model
        if trained.device.type == "cpu" and trained.dtype == torch.bfloat16:
            # Decoding is matrix-vector work, several times slower in bf16 than fp32 on CPUs.
            trained.float()
        predict_and_score(trained, tokenizer, val_records, cfg, run_dir)
    return run_dir
