"""Pre-flight estimate printed before training: size, memory and time per epoch.

Time and activation memory are calibrated by running forward+backward on two real
micro-batches (the first warms up kernels); gradients are then discarded and the RNG
state restored, so the run that follows is exactly the one without the estimate. The
online RL stages' batches are prompts (their completions are sampled while training, and
sampling is most of a step): their time is not estimated.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from transformers import Trainer

from llamaforge.training.summary import peak_memory_bytes

logger = logging.getLogger(__name__)

_GIB = 1024**3


def available_memory_bytes() -> int:
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free) + int(torch.cuda.memory_allocated())
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 + peak_memory_bytes()
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# What TRL's trainers accumulate in compute_loss for their next log line (metrics, token
# counts): saved and put back around the calibration so it never shows in the logs.
_TRL_LOG_STATE = ("_metrics", "_stored_metrics", "_total_train_tokens")


def epoch_tokens(dataset: Any) -> int:
    """Tokens the model reads per epoch: ``input_ids`` (sft, pt), or every preference
    sequence (the prompt with each answer: DPO's two, KTO's one; ORPO/CPO's full rows)."""
    columns = dataset.column_names
    if "input_ids" in columns:
        return sum(len(ids) for ids in dataset["input_ids"])
    answers = [c for c in ("chosen_ids", "rejected_ids", "completion_ids") if c in columns]
    if "prompt_ids" in columns:
        prompts = sum(len(ids) for ids in dataset["prompt_ids"]) * len(answers)
        return prompts + sum(len(ids) for c in answers for ids in dataset[c])
    rows = [c for c in ("chosen_input_ids", "rejected_input_ids") if c in columns]
    return sum(len(ids) for c in rows for ids in dataset[c])


def _calibrate(trainer: Trainer, precision: str, batches: int = 2) -> float:
    """Seconds per micro-batch (forward + backward) measured on the first examples."""
    model, args = trainer.model, trainer.args
    log_state = {
        k: copy.deepcopy(getattr(trainer, k)) for k in _TRL_LOG_STATE if hasattr(trainer, k)
    }
    examples = _first_examples(trainer.train_dataset, batches * args.per_device_train_batch_size)
    size = min(args.per_device_train_batch_size, len(examples))
    device = next(model.parameters()).device
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    model.train()
    seconds = 0.0
    try:
        for i in range(batches):
            features = [examples[(i * size + j) % len(examples)] for j in range(size)]
            batch = {
                k: v.to(device) if torch.is_tensor(v) else v  # max_length_q etc. are ints
                for k, v in trainer.data_collator(features).items()
            }
            start = time.perf_counter()
            # The Trainer autocasts through accelerate once train() prepares the model;
            # here we do it ourselves so the estimate runs at the training precision.
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            with torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16")):
                loss = trainer.compute_loss(model, batch)
            loss.backward()
            seconds = time.perf_counter() - start
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        for key, value in log_state.items():
            setattr(trainer, key, value)
    return seconds


def _first_examples(dataset: Any, count: int) -> list[Any]:
    if isinstance(dataset, torch.utils.data.IterableDataset):  # a stream: read its head
        return list(itertools.islice(dataset, count))
    return [dataset[i] for i in range(min(count, len(dataset)))]


def samples_prompts(trainer: Trainer) -> bool:
    """Whether the trainer's batches are prompts it samples completions for (GRPO, RLOO:
    its collator hands on the rows as they are, not tensors)."""
    dataset = trainer.train_dataset
    if isinstance(dataset, torch.utils.data.IterableDataset) or not len(dataset):
        return False
    return not isinstance(trainer.data_collator([dataset[0]]), Mapping)


def _data_line(trainer: Trainer) -> tuple[str, int, str]:
    """The pre-flight's data line, the micro-batches of one epoch (of max_steps for a
    stream, which has no epochs) and what they span."""
    args, dataset = trainer.args, trainer.train_dataset
    num_val = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    if isinstance(dataset, torch.utils.data.IterableDataset):
        micro_batches = args.max_steps * args.gradient_accumulation_steps
        line = f"  data: streamed from disk / {num_val} validation examples"
        return line, micro_batches, f"the {args.max_steps} steps"
    if samples_prompts(trainer):
        completions = len(dataset) * getattr(args, "num_generations", 1)
        micro_batches = math.ceil(
            completions / (args.per_device_train_batch_size * args.world_size)
        )
        line = f"  data: {len(dataset)} prompts, {completions} sampled completions per epoch"
        return line, micro_batches, "epoch"
    tokens = epoch_tokens(dataset)
    micro_batches = math.ceil(len(dataset) / (args.per_device_train_batch_size * args.world_size))
    line = (
        f"  data: {len(dataset)} train / {num_val} validation examples, {tokens} tokens per epoch"
    )
    return line, micro_batches, "epoch"


def print_preflight(
    trainer: Trainer,
    *,
    trainable: int,
    total: int,
    precision: str,
    packing: bool,
) -> None:
    args = trainer.args
    data_line, micro_batches, span = _data_line(trainer)
    steps = max(1, micro_batches // args.gradient_accumulation_steps)
    seconds_per_micro = None if samples_prompts(trainer) else _calibrate(trainer, precision)
    # Adam keeps two fp32 moments and a gradient per trainable parameter.
    optimizer_bytes = trainable * 12
    peak = peak_memory_bytes() + optimizer_bytes
    available = available_memory_bytes()
    verdict = (
        "fits" if peak < 0.9 * available else "DOES NOT FIT — lower micro_batch_size or cutoff_len"
    )
    lines = [
        "pre-flight:",
        f"  parameters {total / 1e6:.1f} M, trainable {trainable / 1e6:.2f} M ({100 * trainable / max(total, 1):.2f} %)",
        data_line,
        f"  batch: {args.per_device_train_batch_size} per micro-batch × {args.gradient_accumulation_steps} "
        f"accumulation × {args.world_size} process(es); {steps} optimizer steps per {span}",
        f"  precision {precision}, packing {'on' if packing else 'off'}",
        f"  memory: peak ≈ {peak / _GIB:.2f} GiB of {available / _GIB:.1f} GiB available — {verdict}",
        f"  time: {seconds_per_micro:.2f} s per micro-batch → ≈ "
        f"{seconds_per_micro * micro_batches / 60:.1f} min per {span}"
        if seconds_per_micro is not None
        else "  time: not estimated (sampling completions is most of each step)",
    ]
    logger.info("\n".join(lines))
