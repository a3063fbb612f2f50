"""Trainer callbacks: one progress bar, the JSONL log + plot, checkpoint markers, Ctrl-C/SIGTERM.

All file writing happens on the main process only (``state.is_world_process_zero``).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llamaforge.rundir import LOG_NAME, mark_checkpoint
from llamaforge.training.plot import plot_losses

logger = logging.getLogger(__name__)

_LOGGED_KEYS: tuple[str, ...] = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch")
# Reward models (TRL's RewardTrainer): share of pairs ranked right, mean chosen - rejected.
_LOGGED_KEYS += ("accuracy", "margin", "eval_accuracy", "eval_margin", "eval_mean_reward")


class RunLogCallback(TrainerCallback):
    """Appends each log event to trainer_log.jsonl, redraws loss.png, shows a progress bar."""

    def __init__(
        self,
        run_dir: Path,
        plot_every_s: float = 10.0,
        *,
        log_perplexity: bool = False,
        log_metrics: tuple[str, ...] = (),
    ) -> None:
        self.run_dir = run_dir
        self.log_perplexity = log_perplexity
        # A stage's own metrics (TRL's rewards/margins, ...), training and evaluation ones.
        self.metric_prefixes = (*log_metrics, *(f"eval_{p}" for p in log_metrics))
        self.plot_every_s = plot_every_s
        self._last_plot = 0.0
        self._bar: tqdm | None = None
        self._start = 0.0
        self._start_tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._start = time.monotonic()
        self._start_tokens = state.num_input_tokens_seen
        if state.is_world_process_zero:
            self._bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="training", unit="step"
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)

    def tokens_per_second(self, state: TrainerState) -> float:
        elapsed = time.monotonic() - self._start
        return (state.num_input_tokens_seen - self._start_tokens) / elapsed if elapsed > 0 else 0.0

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": state.global_step}
        record.update({k: logs[k] for k in _LOGGED_KEYS if k in logs})
        if self.metric_prefixes:
            record.update({k: v for k, v in logs.items() if k.startswith(self.metric_prefixes)})
        if "loss" not in record and "eval_loss" not in record:
            return  # the end-of-training summary log; summary.json holds it
        if self.log_perplexity and "eval_loss" in record:
            # exp of the mean per-token loss; capped where exp() would overflow.
            record["eval_perplexity"] = math.exp(min(record["eval_loss"], 700.0))
        record["tokens_seen"] = state.num_input_tokens_seen
        record["tokens_per_s"] = round(self.tokens_per_second(state), 2)
        with (self.run_dir / LOG_NAME).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._bar is not None:
            postfix = {
                k: f"{record[k]:.4g}" for k in ("loss", "eval_loss", "learning_rate") if k in record
            }
            postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
            self._bar.set_postfix(postfix)
        if time.monotonic() - self._last_plot > self.plot_every_s or "eval_loss" in record:
            self._last_plot = time.monotonic()
            plot_losses(self.run_dir)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if state.is_world_process_zero:
            plot_losses(self.run_dir)


class CheckpointMarkerCallback(TrainerCallback):
    """Marks a checkpoint valid after the Trainer has completely written it."""

    def __init__(self, run_dir: Path, fingerprint: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.fingerprint = fingerprint

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            checkpoint = self.run_dir / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                mark_checkpoint(checkpoint, state.global_step, self.fingerprint)


class InterruptCallback(TrainerCallback):
    """First Ctrl-C / SIGTERM: finish the current step, save a checkpoint, stop.

    A second signal falls back to the default behaviour (immediate KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True
        logger.warning(
            "%s received: saving a checkpoint after this step", signal.Signals(signum).name
        )
        self.restore()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
