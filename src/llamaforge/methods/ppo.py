"""PPO (RLHF with a reward model), top to bottom: prompts → rollouts → rewards → PPO updates.

Ours, because no maintained library has one for HF models any more: TRL moved its
PPOTrainer to ``trl.experimental`` in 1.10 and deleted it (and its value-head model) in 1.16.
The update rule is ``methods/ppo_objective.py``, the Trainer that runs it
``methods/ppo_trainer.py``; this module builds the pieces from the config.

- policy: ``model`` (typically an SFT run directory, its adapter folded into the base) with
  a new LoRA; the reference is the same weights with that adapter disabled, so the KL is to
  the SFT model and there is one copy of the base in memory;
- rewards: ``rewards`` (llamaforge.rewards), typically the run directory of a ``stage: rm``
  run, which scores prompt + response exactly as it scored pairs in training;
- rollouts: ``rollout_size`` prompts × ``num_generations`` responses sampled through
  llamaforge's generation engine on the live policy weights;
- value function: a linear head over the policy's final hidden state, input detached (the
  value loss never moves the policy's features, and no second model body is needed),
  zero-initialised: with rewards normalised to mean 0 that is the right first guess, and
  the advantages start as plain reward-to-go.

Kept from Huang et al., "The N+ Implementation Details of RLHF with PPO" (2024): dropout off
while sampling and scoring the rollouts; responses end at the first end-of-turn token
(padding after it); ``missing_eos_penalty`` is taken off the reward of a response that
never ends; the sampling temperature divides the logits again when the log-probs are
computed; rewards normalised (running mean and standard deviation of the scores); a
per-token KL penalty (k1 estimate) with the score on the last token; GAE (``gamma``,
``lam``); advantages whitened over the rollout batch; clipped policy and value losses;
``ppo_epochs`` passes over each rollout batch, one optimizer step per minibatch; a fixed
or adaptive (``kl_target``; Ziegler et al. 2019) KL coefficient. Not kept: a separate value
network initialised from the reward model (a second model body in memory), and the reward
model's bias computed on SFT demonstrations (the running statistics do its job).

Held-out prompts (``held_out``): greedy answers before and after training, scored by the
same rewards; the means go to summary.json (``held_out``), the answers to
held_out_answers.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from llamaforge.config.sections import GenerationConfig, PPOConfig, RunConfig
from llamaforge.data import Conversation, Message, Preference, load_dataset_records
from llamaforge.data.formats import Feedback
from llamaforge.errors import DataError
from llamaforge.inference.engine import GenerationEngine
from llamaforge.methods.ppo_trainer import PPOSettings, PPOTrainer, rollout_schedule
from llamaforge.models import load_model
from llamaforge.rewards import Reward, build_rewards, weighted_rewards
from llamaforge.rundir import write_atomic
from llamaforge.training.distributed import is_main_process
from llamaforge.training.harness import (
    plan_run,
    run_stage,
    stage_records,
    trainable_model,
    training_arguments,
)
from llamaforge.training.summary import add_to_summary

logger = logging.getLogger(__name__)

METRICS = ("ppo/",)
HELD_OUT_ANSWERS_NAME = "held_out_answers.jsonl"


@dataclasses.dataclass(frozen=True)
class Prompts:
    """The prompts of some records and what the rewards are called with for them."""

    messages: list[tuple[Message, ...]]
    answers: list[str]
    """The record's own answer (the reference for exact_answer), or ''."""
    sources: list[str]

    def reward_columns(
        self, indices: Sequence[int], engine: GenerationEngine, completion_ids: Sequence[list[int]]
    ) -> dict[str, Any]:
        """What a reward function is called with besides the completions (TRL's names)."""
        return {
            "prompts": [engine.format_prompt(self.messages[i]) for i in indices],
            "completion_ids": list(completion_ids),
            "messages": [[vars(m) for m in self.messages[i]] for i in indices],
            "answer": [self.answers[i] for i in indices],
        }


def read_prompts(records: Sequence[Any], needs_answer: bool) -> Prompts:
    """Each record's conversation before its answer: pairs and labelled answers give their
    prompt, conversations everything before a final assistant turn (which is kept as the
    record's answer)."""
    messages, answers, sources = [], [], []
    for record in records:
        answer = ""
        if isinstance(record, Preference | Feedback):
            prompt = tuple(record.prompt)
        elif isinstance(record, Conversation) and record.messages[-1].role == "assistant":
            prompt, answer = record.messages[:-1], record.messages[-1].content
        elif isinstance(record, Conversation):
            prompt = record.messages
        else:
            raise DataError(
                f"{record.source}: stage ppo samples answers to prompts; no prompt here"
            )
        if needs_answer and not answer:
            raise DataError(
                f"{record.source}: reward exact_answer needs the record's reference answer "
                "(a conversation ending with it, e.g. alpaca instruction + output)"
            )
        messages.append(tuple(prompt))
        answers.append(answer)
        sources.append(record.source)
    return Prompts(messages, answers, sources)


def held_out_rewards(
    engine: GenerationEngine, prompts: Prompts, rewards: list[Reward], max_new_tokens: int
) -> dict[str, Any]:
    """Greedy answers to the held-out prompts and their mean reward."""
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, do_sample=False)
    model = engine.model
    was_training = model.training
    model.eval()
    try:
        results = engine.generate(prompts.messages, greedy)
    finally:
        model.train(was_training)
    answers = [r.text for r in results]
    columns = prompts.reward_columns(
        range(len(answers)), engine, [list(r.token_ids) for r in results]
    )
    totals, _ = weighted_rewards(rewards, answers, **columns)
    return {"reward": sum(totals) / max(len(totals), 1), "answers": answers, "rewards": totals}


def run_ppo(cfg: RunConfig) -> Path:
    """Train according to `cfg`; returns the run directory."""
    from transformers import TrainingArguments

    options = cfg.stage_options(PPOConfig)
    plan = plan_run(cfg, packing=False)
    tr = cfg.training
    base_dir = Path(cfg.source).parent if cfg.source else None

    rewards = build_rewards(
        options.rewards,
        base_dir=base_dir,
        format_pattern=options.format_pattern,
        length_band=options.length_band,
    )
    needs_answer = "exact_answer" in options.rewards
    train_records, _ = stage_records(cfg)
    prompts = read_prompts(train_records, needs_answer)
    held_out = None
    if options.held_out:
        data = dataclasses.replace(cfg.data, dataset=options.held_out, max_samples=None)
        held_out = read_prompts(load_dataset_records(data, base_dir, tr.seed), needs_answer)

    model, tokenizer = load_model(plan.model_config(cfg), for_training=True)
    model = trainable_model(model, cfg, plan)
    engine = GenerationEngine(
        model,
        tokenizer,
        template=cfg.data.template or "chat",
        system_prompt=cfg.data.system_prompt,
        templates_dir=cfg.data.templates_dir,
    )
    prompt_ids = [engine.encode(m) for m in prompts.messages]
    for ids, source in zip(prompt_ids, prompts.sources, strict=True):
        if len(ids) + options.max_completion_length > cfg.data.cutoff_len:
            raise DataError(
                f"{source}: the prompt has {len(ids)} tokens, and with max_completion_length "
                f"{options.max_completion_length} the sequence exceeds cutoff_len "
                f"{cfg.data.cutoff_len}; raise cutoff_len or shorten the prompt"
            )

    sampling = GenerationConfig(
        max_new_tokens=options.max_completion_length,
        temperature=options.rollout_temperature,
        top_p=options.rollout_top_p,
        top_k=options.rollout_top_k,
        do_sample=True,
    )

    def sample(indices: Sequence[int]) -> list[list[int]]:
        results = engine.generate([prompts.messages[i] for i in indices], sampling)
        return [list(r.token_ids) for r in results]

    def score(
        indices: Sequence[int], texts: Sequence[str], ids: Sequence[list[int]]
    ) -> list[float]:
        totals, _ = weighted_rewards(rewards, texts, **prompts.reward_columns(indices, engine, ids))
        return totals

    before = None
    if held_out is not None and is_main_process():
        before = held_out_rewards(engine, held_out, rewards, options.max_completion_length)
        logger.info("held-out mean reward before training: %.4f", before["reward"])

    responses = options.rollout_size * options.num_generations
    steps_per_rollout = options.ppo_epochs * responses // tr.batch_size
    if tr.max_steps:
        rollouts = -(-tr.max_steps // steps_per_rollout)
    else:
        rollouts = len(prompt_ids) // options.rollout_size * max(1, round(tr.num_epochs))
    schedule, rollout_prompts = rollout_schedule(
        len(prompt_ids), options.rollout_size, options.num_generations, options.ppo_epochs,
        rollouts, tr.seed,
    )  # fmt: skip
    value_head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    trainer = PPOTrainer(
        model=model,
        args=training_arguments(
            cfg,
            plan,
            TrainingArguments,
            has_eval=False,
            remove_unused_columns=False,
            train_sampling_strategy="sequential",  # the schedule is the order
        ),
        train_dataset=Dataset.from_list(schedule),
        processing_class=tokenizer,
        prompts=prompt_ids,
        rollout_prompts=rollout_prompts,
        sample=sample,
        score=score,
        value_head=value_head,
        settings=PPOSettings(
            temperature=options.rollout_temperature,
            kl_coef=options.kl_coef,
            kl_target=options.kl_target,
            kl_horizon=options.kl_horizon,
            gamma=options.gamma,
            lam=options.lam,
            clip_range=options.clip_range,
            clip_range_value=options.clip_range_value,
            value_coef=options.value_coef,
            missing_eos_penalty=options.missing_eos_penalty,
            normalize_rewards=options.normalize_rewards,
            stop_token_ids=tuple(sorted(engine.stop_token_ids)),
            pad_token_id=tokenizer.pad_token_id,
        ),
        seed=tr.seed,
    )
    run_stage(trainer, cfg, plan, log_metrics=METRICS)

    if held_out is not None and before is not None and is_main_process():
        after = held_out_rewards(engine, held_out, rewards, options.max_completion_length)
        lines = [
            json.dumps(
                {
                    "prompt": messages[-1].content,
                    "before": before["answers"][i],
                    "before_reward": before["rewards"][i],
                    "after": after["answers"][i],
                    "after_reward": after["rewards"][i],
                },
                ensure_ascii=False,
            )
            for i, messages in enumerate(held_out.messages)
        ]
        write_atomic(plan.run_dir / HELD_OUT_ANSWERS_NAME, "".join(x + "\n" for x in lines))
        add_to_summary(
            plan.run_dir,
            held_out={
                "records": len(held_out.messages),
                "reward_before": before["reward"],
                "reward_after": after["reward"],
            },
        )
        logger.info(
            "held-out mean reward: %.4f before, %.4f after training",
            before["reward"],
            after["reward"],
        )
    return plan.run_dir
