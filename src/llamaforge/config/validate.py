"""Value checks across a whole RunConfig. Returns messages; the loader raises them at once."""

from __future__ import annotations

import math
import re

from llamaforge.config.finetuning import FINETUNING
from llamaforge.config.sections import (
    DPOConfig,
    GenerationConfig,
    GRPOConfig,
    KTOConfig,
    OnlineRLConfig,
    ORPOConfig,
    PPOConfig,
    PretrainConfig,
    RunConfig,
    SFTConfig,
    SimPOConfig,
)
from llamaforge.config.stages import STAGES

CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "attn_implementation": (
        "sdpa",
        "eager",
        "flash_attention_2",
        "flash_attention_3",
        "flex_attention",
    ),
    "format": ("alpaca", "sharegpt", "openai", "csv", "text", "preference", "kto"),
    "finetuning": tuple(FINETUNING),
    "lr_scheduler_type": (
        "linear",
        "cosine",
        "cosine_with_restarts",
        "constant",
        "constant_with_warmup",
        "polynomial",
    ),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "report_to": ("tensorboard", "wandb"),
}


def _choice(errors: list[str], key: str, value: object) -> None:
    if value is not None and value not in CHOICES[key]:
        errors.append(f"key '{key}': '{value}' is not one of: {', '.join(CHOICES[key])}")


def validate_generation(gen: GenerationConfig) -> list[str]:
    errors = []
    if gen.max_new_tokens < 1:
        errors.append(f"key 'max_new_tokens' must be >= 1, got {gen.max_new_tokens}")
    if gen.temperature < 0:
        errors.append(f"key 'temperature' must be >= 0 (0 = greedy), got {gen.temperature}")
    if not 0 < gen.top_p <= 1:
        errors.append(f"key 'top_p' must be in (0, 1], got {gen.top_p}")
    if gen.top_k < 0:
        errors.append(f"key 'top_k' must be >= 0 (0 = no limit), got {gen.top_k}")
    if gen.num_beams < 1:
        errors.append(f"key 'num_beams' must be >= 1, got {gen.num_beams}")
    if gen.repetition_penalty <= 0:
        errors.append(f"key 'repetition_penalty' must be > 0, got {gen.repetition_penalty}")
    if gen.do_sample and gen.temperature == 0:
        errors.append("key 'do_sample': true needs temperature > 0")
    return errors


def _best_model_checkpoint_errors(eval_steps: int | None, save_steps: int | None) -> list[str]:
    """load_best_model_at_end picks among the checkpoints saved where evaluations ran, so
    the two intervals must line up: both unset (once per epoch), or save_steps a multiple
    of eval_steps. Otherwise the Trainer raises "requires the save and eval strategy to
    match" (or "... a multiple of the evaluation steps") after the model has loaded."""
    if eval_steps == save_steps or (eval_steps and save_steps and save_steps % eval_steps == 0):
        return []
    if save_steps is None:
        problem = f"eval_steps is {eval_steps} but save_steps is unset (a checkpoint per epoch)"
        fix = f"set save_steps={eval_steps} (or a multiple of {eval_steps})"
    elif eval_steps is None:
        problem = f"save_steps is {save_steps} but eval_steps is unset (an evaluation per epoch)"
        fix = f"set eval_steps={save_steps} (or a divisor of {save_steps}), or unset save_steps"
    else:
        problem = f"save_steps {save_steps} is not a multiple of eval_steps {eval_steps}"
        fix = f"set save_steps={eval_steps * max(1, save_steps // eval_steps)}"
    return [
        f"key 'load_best_model_at_end' needs a checkpoint at every evaluation: {problem}; {fix}"
    ]


def validate_run_config(cfg: RunConfig) -> list[str]:
    errors: list[str] = []
    _choice(errors, "dtype", cfg.model.dtype)
    _choice(errors, "attn_implementation", cfg.model.attn_implementation)
    _choice(errors, "format", cfg.data.format)
    _choice(errors, "finetuning", cfg.finetuning.finetuning)
    if cfg.training.stage not in STAGES:
        errors.append(f"key 'stage': '{cfg.training.stage}' is not one of: {', '.join(STAGES)}")
    _choice(errors, "lr_scheduler_type", cfg.training.lr_scheduler_type)
    _choice(errors, "precision", cfg.training.precision)
    for item in cfg.training.report_to:
        _choice(errors, "report_to", item)
    if cfg.model.quantization_bit not in (None, 4, 8):
        errors.append(f"key 'quantization_bit': must be 4 or 8, got {cfg.model.quantization_bit}")
    if cfg.data.cutoff_len < 2:
        errors.append(f"key 'cutoff_len': must be >= 2, got {cfg.data.cutoff_len}")
    if cfg.data.val_set_size < 0:
        errors.append(f"key 'val_set_size': must be >= 0, got {cfg.data.val_set_size}")
    if cfg.data.max_samples is not None and cfg.data.max_samples < 1:
        errors.append(f"key 'max_samples': must be >= 1, got {cfg.data.max_samples}")
    ft, tr = cfg.finetuning, cfg.training
    if ft.lora_r < 1:
        errors.append(f"key 'lora_r': must be >= 1, got {ft.lora_r}")
    if not 0 <= ft.lora_dropout < 1:
        errors.append(f"key 'lora_dropout': must be in [0, 1), got {ft.lora_dropout}")
    if ft.freeze_trainable_layers < 0:
        errors.append("key 'freeze_trainable_layers': must be >= 0")
    if ft.num_virtual_tokens < 1:
        errors.append("key 'num_virtual_tokens': must be >= 1")
    if tr.micro_batch_size < 1:
        errors.append(f"key 'micro_batch_size': must be >= 1, got {tr.micro_batch_size}")
    elif tr.batch_size < tr.micro_batch_size:
        errors.append(
            f"key 'batch_size': {tr.batch_size} is smaller than micro_batch_size "
            f"{tr.micro_batch_size}; batch_size is the global batch (a multiple of micro_batch_size)"
        )
    elif tr.batch_size % tr.micro_batch_size:
        errors.append(
            f"key 'batch_size': {tr.batch_size} is not a multiple of micro_batch_size "
            f"{tr.micro_batch_size}"
        )
    if tr.learning_rate <= 0:
        errors.append(f"key 'learning_rate': must be > 0, got {tr.learning_rate}")
    if tr.num_epochs <= 0 and tr.max_steps <= 0:
        errors.append("key 'num_epochs': must be > 0 (or set max_steps)")
    if not 0 <= tr.warmup_ratio < 1:
        errors.append(f"key 'warmup_ratio': must be in [0, 1), got {tr.warmup_ratio}")
    if tr.lr_scheduler_type == "constant" and (tr.warmup_steps > 0 or tr.warmup_ratio > 0):
        key = "warmup_steps" if tr.warmup_steps > 0 else "warmup_ratio"
        errors.append(
            f"key '{key}': lr_scheduler_type constant has no warmup (the trainer would ignore "
            "it); use lr_scheduler_type constant_with_warmup"
        )
    if tr.lr_scheduler_cycles < 1:
        errors.append(f"key 'lr_scheduler_cycles': must be >= 1, got {tr.lr_scheduler_cycles}")
    elif tr.lr_scheduler_cycles != 1 and tr.lr_scheduler_type != "cosine_with_restarts":
        errors.append(
            f"key 'lr_scheduler_cycles': {tr.lr_scheduler_cycles} cycles need "
            f"lr_scheduler_type cosine_with_restarts; '{tr.lr_scheduler_type}' has no cycles"
        )
    for key in ("logging_steps", "eval_steps", "save_steps", "save_total_limit"):
        value = getattr(tr, key)
        if value is not None and value < 1:
            errors.append(f"key '{key}': must be >= 1, got {value}")
    if tr.early_stopping_patience is not None and not cfg.data.val_set_size:
        errors.append("key 'early_stopping_patience' needs a validation split (val_set_size > 0)")
    if tr.load_best_model_at_end and not cfg.data.val_set_size:
        errors.append("key 'load_best_model_at_end' needs a validation split (val_set_size > 0)")
    elif tr.load_best_model_at_end and all(
        value is None or value >= 1 for value in (tr.eval_steps, tr.save_steps)
    ):
        errors.extend(_best_model_checkpoint_errors(tr.eval_steps, tr.save_steps))
    if (
        isinstance(cfg.options, SFTConfig)
        and cfg.options.neftune_noise_alpha is not None
        and cfg.options.neftune_noise_alpha <= 0
    ):
        errors.append("key 'neftune_noise_alpha': must be > 0")
    if isinstance(cfg.options, PretrainConfig) and cfg.options.streaming:
        errors.extend(_streaming_errors(cfg))
    if isinstance(cfg.options, PretrainConfig) and cfg.options.train_new_tokens:
        if cfg.options.train_embeddings:
            errors.append(
                "key 'train_new_tokens': train_embeddings already trains every row; set one"
            )
        kind = FINETUNING.get(ft.finetuning)
        if kind is not None and kind.adapter != "lora":
            errors.append(
                f"key 'train_new_tokens': needs finetuning lora or qlora (finetuning "
                f"{ft.finetuning} {'trains every row already' if ft.finetuning == 'full' else 'has no LoRA'})"
            )
    errors.extend(validate_preference(cfg))
    errors.extend(validate_online(cfg))
    errors.extend(validate_generation(cfg.generation))
    return errors


def _streaming_errors(cfg: RunConfig) -> list[str]:
    errors = []
    if cfg.training.max_steps <= 0:
        errors.append(
            "key 'streaming': a streamed corpus has no length, so the run cannot count epochs; "
            "set max_steps (optimizer steps to train)"
        )
    if 0 < cfg.data.val_set_size < 1:
        errors.append(
            f"key 'val_set_size': {cfg.data.val_set_size} is a fraction, but a stream's size is "
            "unknown; with streaming give a count of documents (the first N are held out)"
        )
    if cfg.data.group_by_length:
        errors.append("key 'group_by_length': cannot sort a stream by length; remove it")
    return errors


PREF_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


def validate_preference(cfg: RunConfig) -> list[str]:
    """The preference stages' options, and the shared settings they cannot use."""
    options, errors = cfg.options, list[str]()
    if not isinstance(options, DPOConfig | KTOConfig | ORPOConfig | SimPOConfig):
        return errors
    if cfg.data.group_by_length:
        errors.append(
            f"key 'group_by_length': stage {cfg.training.stage} batches pairs in their own "
            "collator and has no length column; remove group_by_length"
        )
    if cfg.finetuning.finetuning in ("prefix", "prompt"):
        errors.append(
            f"key 'finetuning': {cfg.finetuning.finetuning} is not supported by stage "
            f"{cfg.training.stage} (TRL's preference trainers score positions that virtual "
            "tokens shift); use lora, qlora, freeze or full"
        )
    positive = {
        DPOConfig: ("beta",),
        KTOConfig: ("kto_beta", "desirable_weight", "undesirable_weight"),
        ORPOConfig: ("orpo_beta",),
        SimPOConfig: ("simpo_beta",),
    }[type(options)]
    errors.extend(
        f"key '{key}': must be > 0, got {getattr(options, key)}"
        for key in positive
        if getattr(options, key) <= 0
    )
    if isinstance(options, DPOConfig):
        if options.pref_loss not in PREF_LOSSES:
            errors.append(
                f"key 'pref_loss': '{options.pref_loss}' is not one of: {', '.join(PREF_LOSSES)}"
            )
        elif options.label_smoothing and options.pref_loss != "robust":
            # TRL 1.16 reads label_smoothing only in robust/exo/aot losses: with sigmoid, ipo
            # or hinge it would be accepted and silently ignored.
            errors.append(
                f"key 'label_smoothing': pref_loss {options.pref_loss} ignores it; "
                "set pref_loss: robust (robust DPO) or label_smoothing: 0"
            )
        if not 0 <= options.label_smoothing < 0.5:
            errors.append(
                f"key 'label_smoothing': must be in [0, 0.5), got {options.label_smoothing}"
            )
        if options.sft_weight < 0:
            errors.append(f"key 'sft_weight': must be >= 0, got {options.sft_weight}")
    return errors


USER_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")


def validate_online(cfg: RunConfig) -> list[str]:
    """The online RL stages' options (grpo, rloo), and the shared settings they cannot use."""
    options, errors, stage = cfg.options, list[str](), cfg.training.stage
    if not isinstance(options, OnlineRLConfig):
        return errors
    errors.extend(_reward_errors(options))
    if isinstance(options, PPOConfig):
        errors.extend(validate_ppo(cfg, options))
    elif options.num_generations < 2:
        errors.append(
            f"key 'num_generations': must be >= 2 (each completion is scored against the "
            f"others of its prompt), got {options.num_generations}"
        )
    elif cfg.training.batch_size % options.num_generations:
        errors.append(
            f"key 'batch_size': stage {stage} counts completions, {options.num_generations} "
            f"per prompt (num_generations); {cfg.training.batch_size} is not a multiple of it"
        )
    if options.max_completion_length < 1:
        errors.append(
            f"key 'max_completion_length': must be >= 1, got {options.max_completion_length}"
        )
    elif options.max_completion_length >= cfg.data.cutoff_len:
        errors.append(
            f"key 'max_completion_length': {options.max_completion_length} leaves no room for "
            f"the prompt within cutoff_len {cfg.data.cutoff_len}"
        )
    if options.rollout_temperature <= 0:
        errors.append(f"key 'rollout_temperature': must be > 0, got {options.rollout_temperature}")
    if not 0 < options.rollout_top_p <= 1:
        errors.append(f"key 'rollout_top_p': must be in (0, 1], got {options.rollout_top_p}")
    if options.rollout_top_k < 0:
        errors.append(
            f"key 'rollout_top_k': must be >= 0 (0: no limit), got {options.rollout_top_k}"
        )
    beta = getattr(options, "beta", 0.0)
    if beta < 0:
        errors.append(f"key 'beta': must be >= 0, got {beta}")
    kind = FINETUNING.get(cfg.finetuning.finetuning)
    if beta > 0 and kind is not None and kind.adapter is None:
        errors.append(
            f"key 'beta': with finetuning {cfg.finetuning.finetuning} the reference would be "
            "a second model TRL loads from the base's path (not this run's starting point); "
            "use an adapter (lora: the reference is the adapter disabled) or beta 0"
        )
    if cfg.finetuning.finetuning in ("prefix", "prompt"):
        errors.append(
            f"key 'finetuning': {cfg.finetuning.finetuning} is not supported by stage {stage} "
            "(virtual tokens shift the positions its log-probabilities are read at); use "
            "lora, qlora, freeze or full"
        )
    if isinstance(options, GRPOConfig):
        if options.loss_type not in LOSS_TYPES:
            errors.append(
                f"key 'loss_type': '{options.loss_type}' is not one of: {', '.join(LOSS_TYPES)}"
            )
        if options.scale_rewards not in SCALE_REWARDS:
            errors.append(
                f"key 'scale_rewards': '{options.scale_rewards}' is not one of: "
                f"{', '.join(SCALE_REWARDS)}"
            )
    elif cfg.finetuning.lora_dropout and kind is not None and kind.adapter == "lora":
        # TRL's RLOO samples with the training model in train mode: dropout would perturb
        # the rollouts, so it runs without (stage grpo samples with dropout off itself).
        errors.append(
            "key 'lora_dropout': stage rloo trains without dropout (its rollouts sample from "
            "the model in training mode); set lora_dropout: 0"
        )
    if cfg.data.val_set_size:
        errors.append(
            f"key 'val_set_size': stage {stage} evaluates on the held_out datasets (greedy "
            "answers scored before and after training); set held_out: [file] instead"
        )
    if cfg.data.group_by_length:
        errors.append(f"key 'group_by_length': stage {stage} has no length column; remove it")
    unused = [
        key
        for key, value in vars(cfg.generation).items()
        if value != getattr(GenerationConfig(), key)
    ]
    errors.extend(
        f"key '{key}': stage {stage} samples its rollouts with rollout_temperature, "
        "rollout_top_p, rollout_top_k and max_completion_length (the generation section is "
        "for generate, chat and serve); remove it"
        for key in unused
    )
    return errors


def _reward_errors(options: OnlineRLConfig) -> list[str]:
    errors = []
    if not options.rewards:
        errors.append("key 'rewards': give at least one reward, e.g. {exact_answer: 1.0}")
    for name, weight in options.rewards.items():
        if not math.isfinite(weight):
            errors.append(f"key 'rewards': the weight of '{name}' must be a finite number")
        if ":" in name and not USER_FUNCTION.match(name):
            errors.append(
                f"key 'rewards': '{name}' is neither module:function (a Python function of "
                "yours) nor a run directory (no ':' in it)"
            )
    if options.format_pattern is not None:
        if "format" not in options.rewards:
            errors.append(
                "key 'format_pattern': used by the reward 'format' only; add it to rewards"
            )
        try:
            re.compile(options.format_pattern)
        except re.error as e:
            errors.append(f"key 'format_pattern': not a regular expression: {e}")
    band = options.length_band
    if band and "length" not in options.rewards:
        errors.append("key 'length_band': used by the reward 'length' only; add it to rewards")
    if "length" in options.rewards and not (
        len(band) == 2 and 0 <= band[0] <= band[1] and band[1] > 0
    ):
        errors.append(
            f"key 'length_band': the reward 'length' needs [min, max] completion tokens with "
            f"0 <= min <= max and max > 0, got {list(band)}"
        )
    return errors


def validate_ppo(cfg: RunConfig, options: PPOConfig) -> list[str]:
    """Stage ppo's own options (the shared online RL ones are checked with grpo's)."""
    errors = []
    for key in ("num_generations", "rollout_size", "ppo_epochs", "kl_horizon"):
        if getattr(options, key) < 1:
            errors.append(f"key '{key}': must be >= 1, got {getattr(options, key)}")
    responses = options.rollout_size * options.num_generations
    if responses >= 1 and responses % cfg.training.batch_size:
        errors.append(
            f"key 'rollout_size': a rollout batch of {options.rollout_size} prompts × "
            f"{options.num_generations} responses must be a multiple of batch_size "
            f"({cfg.training.batch_size}): each optimizer step takes batch_size of them"
        )
    for key in ("gamma", "lam"):
        if not 0 <= getattr(options, key) <= 1:
            errors.append(f"key '{key}': must be in [0, 1], got {getattr(options, key)}")
    for key in ("kl_coef", "value_coef", "missing_eos_penalty"):
        if getattr(options, key) < 0:
            errors.append(f"key '{key}': must be >= 0, got {getattr(options, key)}")
    for key in ("clip_range", "clip_range_value"):
        if getattr(options, key) <= 0:
            errors.append(f"key '{key}': must be > 0, got {getattr(options, key)}")
    if options.kl_target is not None and options.kl_target <= 0:
        errors.append(
            f"key 'kl_target': must be > 0 (or unset: fixed kl_coef), got {options.kl_target}"
        )
    kind = FINETUNING.get(cfg.finetuning.finetuning)
    if kind is not None and kind.adapter is None:
        errors.append(
            f"key 'finetuning': stage ppo's reference is the starting model with the adapter "
            f"disabled; {cfg.finetuning.finetuning} has no adapter (use lora or qlora)"
        )
    elif cfg.finetuning.lora_dropout:
        errors.append(
            "key 'lora_dropout': stage ppo compares the policy's log-probs with the rollout's, "
            "taken without dropout; set lora_dropout: 0"
        )
    return errors
