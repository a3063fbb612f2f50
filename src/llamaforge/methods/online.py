"""The online RL stages (GRPO, RLOO), top to bottom: problems → prompts → TRL's trainer.

Each training record is a conversation whose last answer is the reference (``answer``
column, for ``exact_answer`` and the user's functions); the prompt before it is rendered
with our template (the text TRL hands to reward functions, and tokenizes itself for RLOO:
its ids are checked against ours, the ones generation and SFT use). Each optimizer step
samples ``num_generations`` completions for each of ``batch_size / num_generations``
prompts, scores them with the configured rewards (llamaforge.rewards, weights summed by
TRL's ``reward_weights``) and updates the policy on their advantages; TRL's own metrics
(reward, rewards/<name>/mean, completions/mean_length, kl, entropy, ...) go to
trainer_log.jsonl and summary.json.

Rollouts. GRPO samples through llamaforge's generation engine, the live policy weights
(no copy), the model in eval mode (no adapter dropout) while it generates, passed to TRL as
its ``rollout_func``; TRL's RLOO has no such hook and generates with ``model.generate`` in
training mode, so that stage runs without dropout (validation refuses lora_dropout > 0).
Either way sampling draws from torch's global generator, which every checkpoint saves and
a resumed run restores: a resumed run samples the same completions.

Reference: with LoRA the same weights with the adapter disabled (TRL's own "ref" adapter
copy is deleted: training/preference.py), used only when ``beta`` > 0.

Held-out set (``held_out``): greedy answers before and after training, scored like
``exact_answer`` (llamaforge.rewards.held_out); the accuracies go to held_out.json and
summary.json (``held_out``), the answers to held_out_answers.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from llamaforge.config.sections import GenerationConfig, OnlineRLConfig, RunConfig
from llamaforge.data import Conversation, Message, load_dataset_records
from llamaforge.errors import ConfigError, DataError
from llamaforge.inference.engine import GenerationEngine
from llamaforge.models import load_model
from llamaforge.rewards import Reward, build_rewards, reference_answer
from llamaforge.rewards.held_out import HeldOutScore, problems, score_held_out
from llamaforge.rundir import write_atomic
from llamaforge.training.distributed import is_main_process
from llamaforge.training.harness import (
    plan_run,
    run_stage,
    stage_records,
    trainable_model,
    training_arguments,
)
from llamaforge.training.preference import drop_reference_adapter
from llamaforge.training.summary import add_to_summary

logger = logging.getLogger(__name__)

METRICS = ("reward", "completions/", "kl", "entropy", "frac_reward_zero_std")
HELD_OUT_NAME = "held_out.json"
HELD_OUT_ANSWERS_NAME = "held_out_answers.jsonl"


@dataclasses.dataclass(frozen=True)
class Prompt:
    messages: tuple[Message, ...]
    ids: list[int]


def prompt_rows(
    records: Sequence[Any], engine: GenerationEngine, cutoff_len: int, options: OnlineRLConfig
) -> tuple[list[dict[str, Any]], dict[str, Prompt]]:
    """Dataset rows ``{prompt, answer, messages}`` and each prompt text's messages and ids."""
    rows, prompts = [], {}
    needs_answer = "exact_answer" in options.rewards
    for record in records:
        if not isinstance(record, Conversation) or record.messages[-1].role != "assistant":
            raise DataError(
                f"{getattr(record, 'source', record)}: stage grpo/rloo trains on problems with "
                "a reference answer (a conversation ending with it, e.g. alpaca instruction + "
                "output)"
            )
        messages, answer = record.messages[:-1], record.messages[-1].content
        if needs_answer and reference_answer(answer) is None:
            raise DataError(
                f"{record.source}: reward exact_answer needs a number or an option letter in "
                f"the reference answer, got {answer[:60]!r}"
            )
        text, ids = engine.format_prompt(messages), engine.encode(messages)
        if engine.tokenizer(text)["input_ids"] != ids:
            raise ConfigError(
                f"{record.source}: the tokenizer splits the rendered prompt differently from "
                "generation's segment-wise tokenization; use a chat template (template: chat)"
            )
        if len(ids) + options.max_completion_length > cutoff_len:
            raise DataError(
                f"{record.source}: the prompt has {len(ids)} tokens, and with "
                f"max_completion_length {options.max_completion_length} the sequence exceeds "
                f"cutoff_len {cutoff_len}; raise cutoff_len or shorten the prompt"
            )
        prompts[text] = Prompt(tuple(messages), ids)
        rows.append({"prompt": text, "answer": answer, "messages": [vars(m) for m in messages]})
    return rows, prompts


class EngineRollouts:
    """TRL's ``rollout_func``: the prompts' completions sampled by llamaforge's engine from
    the live policy in eval mode (module docstring); returns TRL's ``prompt_ids``,
    ``completion_ids`` (each ending with its end-of-turn token unless cut at the length
    limit) and ``logprobs`` (None: TRL scores the tokens itself)."""

    def __init__(
        self, engine: GenerationEngine, prompts: dict[str, Prompt], gen: GenerationConfig
    ) -> None:
        self.engine, self.prompts, self.gen = engine, prompts, gen

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        model = self.engine.model
        was_training = model.training
        model.eval()
        try:
            results = self.engine.generate([self.prompts[p].messages for p in prompts], self.gen)
        finally:
            model.train(was_training)
        return {
            "prompt_ids": [self.prompts[p].ids for p in prompts],
            "completion_ids": [list(r.token_ids) for r in results],
            "logprobs": None,
        }


def held_out_problems(
    cfg: RunConfig, options: OnlineRLConfig
) -> tuple[list[list[Message]], list[str]]:
    if not options.held_out:
        return [], []
    data = dataclasses.replace(cfg.data, dataset=options.held_out, max_samples=None)
    base_dir = Path(cfg.source).parent if cfg.source else None
    records = load_dataset_records(data, base_dir=base_dir, seed=cfg.training.seed)
    return problems(records)


def write_held_out(
    run_dir: Path,
    prompts: Sequence[Sequence[Message]],
    references: Sequence[str],
    scores: dict[str, HeldOutScore],
) -> None:
    """held_out.json (accuracy before/after) and held_out_answers.jsonl (every answer)."""
    write_atomic(
        run_dir / HELD_OUT_NAME,
        json.dumps({when: s.to_dict() for when, s in scores.items()}, indent=2),
    )
    lines = []
    for i, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
        line: dict[str, Any] = {"prompt": prompt[-1].content, "reference": reference}
        for when, score in scores.items():
            line[when] = score.answers[i]
            line[f"{when}_correct"] = score.correct[i]
        lines.append(json.dumps(line, ensure_ascii=False))
    write_atomic(run_dir / HELD_OUT_ANSWERS_NAME, "".join(line + "\n" for line in lines))


def run_online(
    cfg: RunConfig,
    trainer_class: Any,
    args_class: Any,
    *,
    engine_rollouts: bool,
    **algorithm_fields: Any,
) -> Path:
    """Train ``trainer_class`` (its config ``args_class`` with ``algorithm_fields``) on the
    config's problems; ``engine_rollouts``: sample through our engine (TRL's rollout_func)."""
    options = cfg.stage_options(OnlineRLConfig)
    plan = plan_run(cfg, packing=False)  # one sampled completion per row: nothing to pack

    train_records, _ = stage_records(cfg)
    held_prompts, held_references = held_out_problems(cfg, options)
    base_dir = Path(cfg.source).parent if cfg.source else None
    rewards: list[Reward] = build_rewards(
        options.rewards,
        base_dir=base_dir,
        format_pattern=options.format_pattern,
        length_band=options.length_band,
    )
    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    model = trainable_model(model, cfg, plan)
    engine = GenerationEngine(
        model,
        tokenizer,
        template=cfg.data.template or "chat",
        system_prompt=cfg.data.system_prompt,
        templates_dir=cfg.data.templates_dir,
    )
    rows, prompts = prompt_rows(train_records, engine, cfg.data.cutoff_len, options)

    scores: dict[str, HeldOutScore] = {}
    if held_prompts and is_main_process():
        # The adapter is new (LoRA B = 0): this is the model training starts from, also
        # when resuming (the checkpoint's weights load inside train()).
        scores["before"] = score_held_out(
            engine, held_prompts, held_references, options.max_completion_length
        )
        logger.info("held-out accuracy before training: %.4f", scores["before"].accuracy)
        write_held_out(plan.run_dir, held_prompts, held_references, scores)

    args = training_arguments(
        cfg,
        plan,
        args_class,
        has_eval=False,
        num_generations=options.num_generations,
        max_completion_length=options.max_completion_length,
        temperature=options.rollout_temperature,
        top_p=options.rollout_top_p,
        top_k=options.rollout_top_k,
        reward_weights=[r.weight for r in rewards],
        log_completions=False,
        include_num_input_tokens_seen="no",  # the trainer counts prompt + completion tokens
        **algorithm_fields,
    )
    rollout = {}
    if engine_rollouts:
        sampling = GenerationConfig(
            max_new_tokens=options.max_completion_length,
            temperature=options.rollout_temperature,
            top_p=options.rollout_top_p,
            top_k=options.rollout_top_k,
            do_sample=True,
        )
        rollout["rollout_func"] = EngineRollouts(engine, prompts, sampling)
    with warnings.catch_warnings():
        # rollout_func is marked experimental; TRL is pinned and this path is tested.
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
        trainer = trainer_class(
            model=model,
            reward_funcs=[r.function for r in rewards],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            **rollout,
        )
    drop_reference_adapter(trainer.model)
    run_stage(trainer, cfg, plan, log_metrics=METRICS)

    if held_prompts and is_main_process():
        scores["after"] = score_held_out(
            engine, held_prompts, held_references, options.max_completion_length
        )
        write_held_out(plan.run_dir, held_prompts, held_references, scores)
        add_to_summary(
            plan.run_dir,
            held_out={
                "records": len(held_prompts),
                "accuracy_before": scores["before"].accuracy,
                "accuracy_after": scores["after"].accuracy,
            },
        )
        logger.info(
            "held-out accuracy: %.4f before, %.4f after training",
            scores["before"].accuracy,
            scores["after"].accuracy,
        )
    return plan.run_dir
