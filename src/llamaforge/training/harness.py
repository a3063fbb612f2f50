"""The stage harness: everything about a training run that is not the stage's own.

A stage (``methods/<stage>.py``) reads top to bottom as::

    plan = plan_run(cfg, packing=...)              # checks, derived settings, run dir
    records = ...; model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    model = trainable_model(model, cfg, plan)      # packed attention, seeded adapter
    args = training_arguments(cfg, plan, SomeTrainerConfig, has_eval=..., **stage_fields)
    trainer = SomeTrainer(model=model, args=args, ...)
    run_stage(trainer, cfg, plan)                  # resume, callbacks, Ctrl-C, pre-flight,
                                                   # CPU fast paths, save, summary

A run directory as ``model`` (``model: runs/my-sft``) starts this run from that run's
weights: a stage other than the run's own folds its adapter into the base in memory and
attaches a new adapter (so a DPO reference or a reward model starts from the SFT model,
and disabling the new adapter gives the SFT model back); the same stage with an adapter
kind keeps training that run's adapter. Either way ``config.yaml`` records the run
directory as the base, which is what ``export merge`` rebuilds.

Derived settings (precision, the base model's dtype and quantization, packing, world size,
run directory) are resolved once, in :class:`RunPlan`, which is also written to
``run_metadata.json``. Our config decides ``bf16``/``fp16`` and gradient checkpointing on
every stage: TRL's configs default both to True, which on a CPU means slow fp32 emulation
or an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import EarlyStoppingCallback, PrinterCallback, TrainingArguments, set_seed

from llamaforge import rundir
from llamaforge.adapters.attach import attach_adapter, trainable_summary
from llamaforge.adapters.dropout import use_fast_lora_dropout
from llamaforge.config.finetuning import FINETUNING
from llamaforge.config.sections import ModelConfig, RunConfig
from llamaforge.data.formats import Record
from llamaforge.data.registry import load_dataset_records, split_validation
from llamaforge.errors import ConfigError, TrainingInterrupted
from llamaforge.training.callbacks import (
    CheckpointMarkerCallback,
    InterruptCallback,
    RunLogCallback,
)
from llamaforge.training.distributed import check_launch, check_world_size, is_main_process
from llamaforge.training.packing import use_packed_attention
from llamaforge.training.preflight import print_preflight
from llamaforge.training.prepack import prepacked_frozen_linears
from llamaforge.training.summary import write_metadata, write_summary
from llamaforge.training.trainer import cpu_supports_bf16, resolve_precision

logger = logging.getLogger(__name__)

Args = TypeVar("Args", bound=TrainingArguments)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will do, resolved from its config and the machine once."""

    stage: str
    run_dir: Path
    precision: str
    """fp32 | bf16 | fp16 (``auto`` resolved for this machine)."""
    base_dtype: str
    """The dtype the base model is loaded in (bfloat16 for a frozen base at bf16)."""
    quantization_bit: int | None
    packing: bool
    world_size: int
    resume: str | None
    sharded: bool
    """DeepSpeed or FSDP wraps the model (our single-process CPU fast paths stay off)."""
    continues_adapter: bool = False
    """``model`` (or ``adapter``) is a run of this same stage whose adapter keeps training;
    otherwise a loaded adapter is folded into the base and a new one attached."""

    @property
    def single_process(self) -> bool:
        return self.world_size == 1 and not self.sharded

    def model_config(self, cfg: RunConfig) -> ModelConfig:
        """``cfg.model`` with the planned dtype and quantization."""
        return dataclasses.replace(
            cfg.model, dtype=self.base_dtype, quantization_bit=self.quantization_bit
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "run_dir": str(self.run_dir)}


def check_hardware(cfg: RunConfig) -> None:
    """Fail before loading anything when the run cannot happen on this machine."""
    precision, tr = cfg.training.precision, cfg.training
    check_launch()
    quantized = cfg.model.quantization_bit or FINETUNING[cfg.finetuning.finetuning].quantization_bit
    if quantized and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"finetuning={cfg.finetuning.finetuning} with {quantized}-bit weights needs "
            "bitsandbytes: pip install 'llamaforge[qlora]'"
        )
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("key 'precision': fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if precision == "bf16" and not torch.cuda.is_available() and not cpu_supports_bf16():
        raise ConfigError("key 'precision': this CPU has no bf16 support; use fp32")
    if tr.fsdp and not torch.cuda.is_available():
        # accelerate builds its FSDP plugin for GPU process groups only: on CPU the Trainer
        # would accept fsdp and run plain DDP (every rank holding every weight).
        raise ConfigError(
            "key 'fsdp': FSDP needs CUDA GPUs; on CPU it would silently run as plain data "
            "parallelism. Unset fsdp (torchrun alone gives data parallelism on CPU)"
        )
    if tr.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("key 'deepspeed': the deepspeed package is not installed")
    for logger_name in tr.report_to:
        if importlib.util.find_spec(logger_name) is None:
            raise ConfigError(f"report_to {logger_name} needs: pip install {logger_name}")
    if not cfg.data.dataset:
        raise ConfigError("key 'dataset': no dataset given (a file path or a registry name)")


def stage_records(cfg: RunConfig) -> tuple[list[Record], list[Record]]:
    """(train, validation) records of ``cfg.dataset``: relative paths start next to the
    config file, several datasets are mixed and the split is drawn with ``cfg.training.seed``."""
    base_dir = Path(cfg.source).parent if cfg.source else None
    records = load_dataset_records(cfg.data, base_dir=base_dir, seed=cfg.training.seed)
    return split_validation(records, cfg.data.val_set_size, cfg.training.seed)


def base_weights_dtype(cfg: RunConfig, precision: str) -> str:
    """The dtype to load the base model in for training.

    ``dtype: auto`` with a frozen, unquantized base and bf16 training → bfloat16. Stored in
    fp32, every frozen weight would be cast to bf16 again on every forward (autocast caches
    casts only for weights that need grad): ~8 % of a LoRA step on the CPU, and twice the
    memory. peft keeps the adapter's own weights in fp32 (``autocast_adapter_dtype``), so
    what is trained still has fp32 master weights. Full and freeze training keep fp32.
    """
    kind = FINETUNING[cfg.finetuning.finetuning]
    if (
        cfg.model.dtype == "auto"
        and kind.frozen_base
        and kind.quantization_bit is None
        and precision == "bf16"
    ):
        return "bfloat16"
    return cfg.model.dtype


def source_adapter(cfg: RunConfig) -> Path | None:
    """The adapter (or run) directory the model is loaded with, if any."""
    if cfg.model.adapter:
        return Path(cfg.model.adapter).expanduser()
    path = Path(cfg.model.model).expanduser()
    return path if (path / "adapter_config.json").is_file() else None


def continues_adapter(cfg: RunConfig) -> bool:
    """Whether this run keeps training the adapter it loads (see the module docstring): the
    loaded run has this stage (an adapter without a config.yaml counts as an SFT one) and
    ``finetuning`` adds an adapter."""
    source = source_adapter(cfg)
    if source is None or FINETUNING[cfg.finetuning.finetuning].adapter is None:
        return False
    stage = rundir.run_config_value(rundir.read_run_config(source), "training", "stage")
    return (stage or "sft") == cfg.training.stage


def plan_run(cfg: RunConfig, *, packing: bool) -> RunPlan:
    """Check the machine, resolve derived settings, create the run directory and save the
    config in it first (so a failed run still says what it was). ``packing``: whether the
    stage packs examples; kinds that cannot be packed (prompt, prefix) turn it off."""
    check_hardware(cfg)
    tr = cfg.training
    kind = FINETUNING[cfg.finetuning.finetuning]
    run_dir = (
        Path(tr.output_dir)
        if tr.output_dir
        else Path("runs") / f"{tr.stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    rundir.check_output_dir(run_dir, tr.resume_from_checkpoint)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.save_config(run_dir, cfg)
    precision = resolve_precision(tr.precision)
    return RunPlan(
        stage=tr.stage,
        run_dir=run_dir,
        precision=precision,
        base_dtype=base_weights_dtype(cfg, precision),
        quantization_bit=cfg.model.quantization_bit or kind.quantization_bit,
        packing=packing and kind.packable,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        resume=tr.resume_from_checkpoint,
        sharded=bool(tr.deepspeed or tr.fsdp),
        continues_adapter=continues_adapter(cfg),
    )


def trainable_model(
    model: Any, cfg: RunConfig, plan: RunPlan, *, head: str = "causal_lm", **attach: Any
) -> Any:
    """The loaded model made trainable: packed attention when packing, then the adapter
    (or freeze/full) of ``cfg.finetuning``, initialised from ``cfg.training.seed``."""
    from peft import PeftModel

    if plan.packing:
        use_packed_attention(model)
    if isinstance(model, PeftModel):
        source = source_adapter(cfg)
        if plan.continues_adapter:
            logger.info("continuing to train the adapter of %s (its own r, alpha, targets)", source)
            use_fast_lora_dropout(model)
            return model
        if plan.quantization_bit:
            raise ConfigError(
                f"key 'model': starting stage {plan.stage} from {source} folds its adapter into "
                f"{plan.quantization_bit}-bit weights, which loses it to rounding; merge it "
                "first (llamaforge export merge) and train on the merged model"
            )
        logger.info(
            "folding the adapter of %s into the base; stage %s attaches a new one",
            source,
            plan.stage,
        )
        model = model.merge_and_unload()
    # The Trainer seeds only after the adapter exists; seed its initialisation too, or
    # LoRA A / prompt embeddings depend on whatever drew random numbers earlier.
    set_seed(cfg.training.seed)
    return attach_adapter(
        model,
        cfg.finetuning,
        gradient_checkpointing=cfg.training.gradient_checkpointing,
        head=head,
        **attach,
    )


def training_arguments(
    cfg: RunConfig,
    plan: RunPlan,
    args_class: type[Args] = TrainingArguments,  # type: ignore[assignment]
    *,
    has_eval: bool,
    **stage_fields: Any,
) -> Args:
    """Our config → ``args_class`` (TrainingArguments or a TRL ``*Config``): the only place
    they meet. ``stage_fields`` are the stage's own fields (``beta=...``, ``neftune_...``)."""
    tr = cfg.training
    world = plan.world_size
    accumulation = max(1, tr.batch_size // (tr.micro_batch_size * world))
    if tr.batch_size % (tr.micro_batch_size * world):
        logger.warning(
            "batch_size %d is not a multiple of micro_batch_size %d × %d processes; "
            "the effective global batch is %d",
            tr.batch_size,
            tr.micro_batch_size,
            world,
            accumulation * tr.micro_batch_size * world,
        )
    eval_strategy = ("steps" if tr.eval_steps else "epoch") if has_eval else "no"
    use_cpu = not torch.cuda.is_available()
    fields: dict[str, Any] = {
        "output_dir": str(plan.run_dir),
        "per_device_train_batch_size": tr.micro_batch_size,
        "per_device_eval_batch_size": tr.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "num_train_epochs": tr.num_epochs,
        "max_steps": tr.max_steps,
        "learning_rate": tr.learning_rate,
        "warmup_steps": tr.warmup_steps if tr.warmup_steps > 0 else tr.warmup_ratio,
        "lr_scheduler_type": tr.lr_scheduler_type,
        # Only cosine_with_restarts takes cycles (validate.py refuses them elsewhere); plain
        # cosine's own num_cycles (0.5: half a wave) must keep its default.
        "lr_scheduler_kwargs": {"num_cycles": tr.lr_scheduler_cycles}
        if tr.lr_scheduler_type == "cosine_with_restarts"
        else None,
        "optim": tr.optim,
        "weight_decay": tr.weight_decay,
        "max_grad_norm": tr.max_grad_norm,
        "seed": tr.seed,
        "data_seed": tr.seed,
        "logging_steps": tr.logging_steps,
        "logging_first_step": True,
        "eval_strategy": eval_strategy,
        "eval_steps": tr.eval_steps,
        "save_strategy": "steps" if tr.save_steps else "epoch",
        "save_steps": tr.save_steps or 500,
        "save_total_limit": tr.save_total_limit,
        "load_best_model_at_end": tr.load_best_model_at_end,
        "metric_for_best_model": "eval_loss" if has_eval else None,
        "greater_is_better": False if has_eval else None,
        # Always set explicitly: TRL's configs default both bf16 and checkpointing to True.
        "bf16": plan.precision == "bf16",
        "fp16": plan.precision == "fp16",
        "activation_checkpointing": tr.gradient_checkpointing,
        "gradient_checkpointing": tr.gradient_checkpointing,
        "use_cpu": use_cpu,
        "torch_compile": tr.torch_compile,
        "report_to": list(tr.report_to) or "none",
        "deepspeed": tr.deepspeed,
        "fsdp": tr.fsdp or "",
        "ddp_backend": "gloo" if use_cpu and world > 1 else None,
        "ddp_find_unused_parameters": False if world > 1 else None,
        "remove_unused_columns": False,
        "prediction_loss_only": True,
        # Packed batches hold no padding and no attention_mask, and "non_padding" would then
        # drop every token equal to the pad id, which is often EOS / end-of-turn.
        "include_num_input_tokens_seen": "all" if plan.packing else "non_padding",
        "disable_tqdm": True,  # our RunLogCallback draws the one progress bar
        "dataloader_num_workers": 0,
        # For a stream (IterableDataset) accelerate would otherwise fetch batches on one
        # process and slice every tensor along dim 0 for each: a packed batch's single row
        # and its cu_seq_lens boundaries do not survive that slicing.
        "accelerator_config": {"dispatch_batches": False},
        "train_sampling_strategy": "group_by_length" if cfg.data.group_by_length else "random",
        "length_column_name": "length",
    }
    return args_class(**{**fields, **stage_fields})


def stage_callbacks(
    cfg: RunConfig,
    plan: RunPlan,
    fingerprint: dict[str, Any],
    *,
    log_perplexity: bool,
    log_metrics: tuple[str, ...] = (),
) -> tuple[RunLogCallback, InterruptCallback, list[Any]]:
    """The log/progress callback, the Ctrl-C callback, and every callback to add."""
    log = RunLogCallback(plan.run_dir, log_perplexity=log_perplexity, log_metrics=log_metrics)
    interrupt = InterruptCallback()
    callbacks: list[Any] = [log, CheckpointMarkerCallback(plan.run_dir, fingerprint), interrupt]
    if cfg.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(cfg.training.early_stopping_patience))
    return log, interrupt, callbacks


def run_stage(
    trainer: Any,
    cfg: RunConfig,
    plan: RunPlan,
    *,
    log_perplexity: bool = False,
    log_metrics: tuple[str, ...] = (),
) -> None:
    """Train ``trainer`` into the run directory: resume exactly (refusing a changed config or
    data), log to trainer_log.jsonl + loss.png with one progress bar, save a resumable
    checkpoint on Ctrl-C/SIGTERM, print the pre-flight estimate, use the CPU fast paths,
    then save the model and write summary.json. ``log_metrics``: name prefixes of the
    trainer's own metrics to log too (``rewards/`` logs rewards/margins, eval_rewards/...)."""
    run_dir = plan.run_dir
    dataset = trainer.train_dataset
    # A stream (data/streaming.py) is hashed by its files, not by reading the whole corpus.
    content_hash = getattr(dataset, "content_hash", None)
    data_hash = content_hash() if content_hash else rundir.hash_examples(dataset)
    fingerprint = rundir.run_fingerprint(cfg, data_hash)
    checkpoint = rundir.resolve_resume(run_dir, plan.resume, fingerprint)
    check_world_size(trainer.args.world_size)
    log, interrupt, callbacks = stage_callbacks(
        cfg, plan, fingerprint, log_perplexity=log_perplexity, log_metrics=log_metrics
    )
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.remove_callback(PrinterCallback)  # RunLogCallback shows and records the logs
    model = trainer.model
    # Frozen bf16 CPU weights packed once for oneDNN (one process; see training/prepack.py),
    # before the pre-flight so that its calibration and memory figures include them.
    fast_linears = (
        prepacked_frozen_linears(model)
        if plan.single_process and plan.precision == "bf16"
        else contextlib.nullcontext(0)
    )
    with fast_linears:
        if is_main_process():
            if checkpoint is not None:
                rundir.truncate_log(run_dir, int(checkpoint.name.split("-")[1]))
                logger.info("resuming from %s", checkpoint)
            write_metadata(
                run_dir, cfg, data_hash=data_hash, fingerprint=fingerprint, plan=plan.to_dict()
            )
            trainable, total = trainable_summary(model)
            print_preflight(
                trainer,
                trainable=trainable,
                total=total,
                precision=plan.precision,
                packing=plan.packing,
            )

        start = time.monotonic()
        interrupt.install()
        # Under autocast the adapter's matmuls run in bf16/fp16 whatever its input's dtype, so
        # peft's copy of every adapter input to the fp32 of its weights (and fp32 dropout on the
        # copy) is pure cost: ~5 % of a LoRA step on the CPU. Safe only while autocast is on.
        no_input_cast = no_adapter_input_cast(model, active=plan.precision != "fp32")
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
    tokens_per_s = log.tokens_per_second(trainer.state)  # before saving, not after
    trainer.save_model(str(run_dir))  # adapter (peft) or full weights, + tokenizer
    if is_main_process():
        write_summary(run_dir, trainer, wall_s=wall, tokens_per_s=tokens_per_s)
        logger.info("run saved to %s", run_dir)


@contextlib.contextmanager
def no_adapter_input_cast(model: Any, *, active: bool) -> Iterator[None]:
    """``peft.helpers.disable_input_dtype_casting`` for the layers that have the switch:
    peft's own (0.21) raises AttributeError on a TrainableTokensLayer (``train_new_tokens``),
    which has none."""
    switched = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    layers = switched if active else []
    saved = [m.cast_input_dtype_enabled for m in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.cast_input_dtype_enabled = value
