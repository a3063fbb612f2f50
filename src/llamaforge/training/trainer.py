"""The HF Trainer, set up from our config, with a loss computed only where labels are trained.

Why a subclass: with padding-free packing most positions of a micro-batch are prompt
tokens whose labels are -100, yet `LlamaForCausalLM` projects every position through
lm_head (576 × 49152 for SmolLM2: a third of the model's FLOPs) and TRL/transformers
offer no CPU-friendly way around it (Liger's fused CE needs Triton). transformers'
public `logits_to_keep` accepts a boolean mask, so we ask the model for logits at the
trained positions only and compute the cross-entropy on those (`cross_entropy_sum`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from llamaforge.config.sections import RunConfig
from llamaforge.training.cross_entropy import cross_entropy_sum

logger = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str) -> str:
    """auto → bf16 where the hardware runs it fast (CUDA bf16, or CPUs with AVX512-BF16/AMX)."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


# Methods that train only weights they add; the base model's own weights stay frozen.
FROZEN_BASE_METHODS = ("lora", "prefix", "prompt")


def base_weights_dtype(cfg: RunConfig) -> str:
    """The dtype to load the base model in for training.

    ``dtype: auto`` with a frozen base and bf16 training → bfloat16. Stored in fp32, every
    frozen weight would be cast to bf16 again on every forward (autocast caches casts only
    for weights that need grad): ~8 % of a LoRA step on the CPU, and twice the memory.
    peft keeps the adapter's own weights in fp32 (``autocast_adapter_dtype``), so what is
    trained still has fp32 master weights. Full and freeze training keep fp32 weights.
    """
    if (
        cfg.model.dtype == "auto"
        and cfg.finetuning.finetuning in FROZEN_BASE_METHODS
        and resolve_precision(cfg.training.precision) == "bf16"
    ):
        return "bfloat16"
    return cfg.model.dtype


# peft methods that prepend their virtual tokens to the input sequence (prefix tuning
# passes them as past keys/values instead, so the sequence keeps its length).
_PREPENDING_PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")


def virtual_tokens_prepended(model: nn.Module) -> int:
    """How many positions a peft prompt-learning model adds in front of every sequence."""
    config = getattr(model, "active_peft_config", None)
    if config is None or getattr(config, "peft_type", None) not in _PREPENDING_PEFT_TYPES:
        return 0
    return int(config.num_virtual_tokens)


class TrainedPositionsTrainer(Trainer):
    """Trainer whose loss runs lm_head + cross-entropy only on trained positions.

    Expects `labels` in every batch (padded with -100, or flattened by
    `DataCollatorWithFlattening`). The loss is the mean over trained tokens of the
    whole accumulated batch (the Trainer passes their count as `num_items_in_batch`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = True

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")  # [B, T]
        # Position t predicts token t+1: keep t where labels[t+1] is trained.
        shifted = labels[:, 1:]
        # Prompt tuning's virtual tokens come first in the model's sequence: [B, P + T].
        virtual = virtual_tokens_prepended(self.accelerator.unwrap_model(model))
        keep = F.pad(shifted != -100, (virtual, 1), value=False)  # [B, P + T] bool
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])  # [K, V]
        targets = shifted[shifted != -100]  # [K], same row-major order as `keep`
        loss = cross_entropy_sum(logits, targets)
        if num_items_in_batch is None or not model.training:
            loss = loss / max(targets.numel(), 1)
        else:
            loss = loss / num_items_in_batch
            # DDP averages gradients over ranks while num_items_in_batch counts all ranks.
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size
        return (loss, outputs) if return_outputs else loss


def to_training_arguments(
    cfg: RunConfig, run_dir: Path, *, has_eval: bool, world_size: int, packing: bool = False
) -> TrainingArguments:
    """Our TrainingConfig → transformers.TrainingArguments (the only place they meet)."""
    tr = cfg.training
    precision = resolve_precision(tr.precision)
    accumulation = max(1, tr.batch_size // (tr.micro_batch_size * world_size))
    if tr.batch_size % (tr.micro_batch_size * world_size):
        logger.warning(
            "batch_size %d is not a multiple of micro_batch_size %d × %d processes; "
            "the effective global batch is %d",
            tr.batch_size,
            tr.micro_batch_size,
            world_size,
            accumulation * tr.micro_batch_size * world_size,
        )
    save_strategy = "steps" if tr.save_steps else "epoch"
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if tr.eval_steps else "epoch"
    use_cpu = not torch.cuda.is_available()
    report_to = list(tr.report_to) or "none"
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=tr.micro_batch_size,
        per_device_eval_batch_size=tr.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=tr.num_epochs,
        max_steps=tr.max_steps,
        learning_rate=tr.learning_rate,
        warmup_steps=tr.warmup_steps if tr.warmup_steps > 0 else tr.warmup_ratio,
        lr_scheduler_type=tr.lr_scheduler_type,
        # Only cosine_with_restarts takes cycles (validate.py refuses them elsewhere); plain
        # cosine's own num_cycles (0.5: half a wave) must keep its default.
        lr_scheduler_kwargs={"num_cycles": tr.lr_scheduler_cycles}
        if tr.lr_scheduler_type == "cosine_with_restarts"
        else None,
        optim=tr.optim,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        seed=tr.seed,
        data_seed=tr.seed,
        logging_steps=tr.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=tr.eval_steps,
        save_strategy=save_strategy,
        save_steps=tr.save_steps or 500,
        save_total_limit=tr.save_total_limit,
        load_best_model_at_end=tr.load_best_model_at_end,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=use_cpu,
        activation_checkpointing=tr.gradient_checkpointing,
        torch_compile=tr.torch_compile,
        neftune_noise_alpha=tr.neftune_noise_alpha,
        report_to=report_to,
        deepspeed=tr.deepspeed,
        fsdp=tr.fsdp or "",
        ddp_backend="gloo" if use_cpu and world_size > 1 else None,
        ddp_find_unused_parameters=False if world_size > 1 else None,
        remove_unused_columns=False,
        prediction_loss_only=True,
        # Packed batches hold no padding and no attention_mask, and "non_padding" would then
        # drop every token equal to the pad id, which is often EOS / end-of-turn.
        include_num_input_tokens_seen="all" if packing else "non_padding",
        disable_tqdm=True,  # our RunLogCallback draws the one progress bar
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if cfg.data.group_by_length else "random",
        length_column_name="length",
    )


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
