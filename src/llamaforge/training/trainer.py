"""The HF Trainer with a loss computed only where labels are trained; precision resolution.

Why a subclass: with padding-free packing most positions of a micro-batch are prompt
tokens whose labels are -100, yet `LlamaForCausalLM` projects every position through
lm_head (576 × 49152 for SmolLM2: a third of the model's FLOPs) and TRL/transformers
offer no CPU-friendly way around it (Liger's fused CE needs Triton). transformers'
public `logits_to_keep` accepts a boolean mask, so we ask the model for logits at the
trained positions only and compute the cross-entropy on those (`cross_entropy_sum`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

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


# peft adapters that prepend their virtual tokens to the input sequence (prefix tuning
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
