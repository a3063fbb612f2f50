"""Our FinetuningConfig → what is trainable: peft LoRA/DoRA/prefix/prompt, full, or freeze.

What each kind does is read from the one table ``config.finetuning.FINETUNING``.

`attach_adapter(model, cfg)` returns the model to train. Every parameter is either
trainable or frozen after it; `trainable_summary` reports the split. The translation to
peft's config classes happens only in `to_peft_config`, so an upstream rename touches
one place.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from llamaforge.adapters.dropout import use_fast_lora_dropout
from llamaforge.config.finetuning import FINETUNING
from llamaforge.config.sections import FinetuningConfig
from llamaforge.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

# The task peft is told per head (models/loader.py HEADS), and the head's own layer, which a
# peft model must save in full: a one-output score head is new, randomly initialised, and
# would be initialised again at load if it were not part of the adapter.
PEFT_TASKS = {"causal_lm": ("CAUSAL_LM", ()), "score": ("SEQ_CLS", ("score",))}


def _check_target_modules(model: nn.Module, targets: tuple[str, ...] | str) -> None:
    if isinstance(targets, str):
        return  # "all-linear" — peft resolves it
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(
            f"key 'lora_target_modules': {missing} not found in the model; "
            f"its linear layers are: {', '.join(linear)} (or use all-linear)"
        )


def to_peft_config(
    model: nn.Module,
    cfg: FinetuningConfig,
    *,
    head: str = "causal_lm",
    modules_to_save: tuple[str, ...] = (),
    trainable_tokens: tuple[int, ...] = (),
) -> Any:
    """The peft config for a finetuning kind that adds an adapter (``FINETUNING[...].adapter``).
    ``trainable_tokens``: token ids whose embedding rows LoRA also trains (peft's trainable
    tokens; a tied lm_head follows them)."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    task, head_modules = PEFT_TASKS[head]
    task_type = TaskType[task]
    saved = [*head_modules, *modules_to_save] or None
    adapter = FINETUNING[cfg.finetuning].adapter
    if adapter == "lora":
        _check_target_modules(model, cfg.lora_target_modules)
        targets = (
            list(cfg.lora_target_modules)
            if isinstance(cfg.lora_target_modules, tuple)
            else cfg.lora_target_modules
        )
        return LoraConfig(
            task_type=task_type,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            use_rslora=cfg.use_rslora,
            use_dora=cfg.use_dora,
            bias="none",
            modules_to_save=saved,
            trainable_token_indices=list(trainable_tokens) or None,
        )
    if modules_to_save or trainable_tokens:
        trained = ", ".join(modules_to_save) or "embedding rows"
        raise ConfigError(
            f"finetuning={cfg.finetuning} cannot also train {trained}; use finetuning=lora "
            "(or full)"
        )
    builders = {"prefix": PrefixTuningConfig, "prompt": PromptTuningConfig}
    if adapter not in builders:
        raise ValueError(f"finetuning={cfg.finetuning} adds no peft adapter")
    return builders[adapter](
        task_type=task_type,
        num_virtual_tokens=cfg.num_virtual_tokens,
        modules_to_save=list(head_modules) or None,
    )


def _freeze(model: nn.Module, cfg: FinetuningConfig) -> None:
    """Train only the last N decoder layers, or parameters whose names match."""
    model.requires_grad_(False)
    if cfg.freeze_trainable_modules:
        patterns = cfg.freeze_trainable_modules
    else:
        n_layers = model.config.num_hidden_layers
        if cfg.freeze_trainable_layers > n_layers:
            raise ConfigError(
                f"key 'freeze_trainable_layers': {cfg.freeze_trainable_layers} > the model's "
                f"{n_layers} layers"
            )
        first = n_layers - cfg.freeze_trainable_layers
        patterns = tuple(f".layers.{i}." for i in range(first, n_layers))
    matched = 0
    for name, param in model.named_parameters():
        if any(p in name for p in patterns):
            param.requires_grad_(True)
            matched += 1
    if not matched:
        raise ConfigError(
            f"key 'freeze_trainable_modules': no parameter name contains any of {list(patterns)}"
        )


def _keep_4bit_weights_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes from switching 4-bit weights to its inference-only CPU layout.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a ``Linear4bit`` weight on its
    first eval-mode forward without grad (an evaluation, a ``generate()``); from then on
    its matmul bypasses autograd, so LoRA gets no gradient and the loss freezes (QLoRA
    with ``val_set_size`` trained nothing after the first evaluation: grad_norm 0.0).
    The instance flag below is the only switch; tests/training/test_qlora.py fails if
    an upstream change makes it stop working. Costs only eval speed.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            raise ModelError(
                f"{name}: this 4-bit model already ran inference on CPU, which repacked its "
                "weights for inference only; load a fresh model to train it"
            )
        module.support_avx512bf16_for_cpu = False


def attach_adapter(
    model: nn.Module,
    cfg: FinetuningConfig,
    *,
    gradient_checkpointing: bool = False,
    head: str = "causal_lm",
    modules_to_save: tuple[str, ...] = (),
    trainable_tokens: tuple[int, ...] = (),
) -> nn.Module:
    """Make `model` trainable according to `cfg`; returns the model to train.

    ``head`` is the head the model was loaded with (``causal_lm`` or ``score``);
    ``modules_to_save`` names base modules an adapter trains in full (e.g. embeddings);
    ``trainable_tokens`` token ids whose embedding rows it trains.
    """
    kind = FINETUNING[cfg.finetuning]
    if kind.adapter is None:
        if kind.partial:
            _freeze(model, cfg)
            for name, param in model.named_parameters():
                if any(f"{module}." in name for module in modules_to_save):
                    param.requires_grad_(True)
        else:
            model.requires_grad_(True)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(
        model, "is_loaded_in_8bit", False
    )
    if getattr(model, "is_loaded_in_4bit", False):
        _keep_4bit_weights_trainable(model)
    if quantized:
        # Casts norms to fp32 and enables input grads; must come before get_peft_model.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    peft_config = to_peft_config(
        model, cfg, head=head, modules_to_save=modules_to_save, trainable_tokens=trainable_tokens
    )
    model = get_peft_model(model, peft_config)
    use_fast_lora_dropout(model)
    return model


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights counted by elements."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.dtype == torch.uint8 and hasattr(param, "quant_state"):
            n *= 2  # bitsandbytes packs two 4-bit values per byte
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
