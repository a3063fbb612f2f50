"""PPO for a causal LM as a transformers ``Trainer``: rollouts, rewards and advantages per
rollout batch, one optimizer step per minibatch of it.

Why a Trainer subclass and not a loop of our own: the stage harness (run directory, exact
resume, Ctrl-C checkpoint, logs, plot, summary; training/harness.py) runs any Trainer, so
PPO gets all of it by fitting the Trainer's shape. The shape: the training "dataset" is a
schedule (``rollout_schedule``) of rows ``{rollout, prompt}``: rollout batch ``r``'s
prompts, once per PPO epoch, each epoch in its own order, read sequentially. The first
micro-batch of a rollout batch generates its responses with the live policy, scores them,
and computes old log-probs, reference log-probs, values, per-token rewards and advantages
for the whole batch (``make_rollout``); every micro-batch then takes its rows of that
buffer and returns PPO's loss. The buffer, the KL coefficient, the score statistics and
the value head are saved with each checkpoint (``save_model``) and read back on resume
(``train``), and each rollout batch samples from its own seed, so a resumed run repeats
an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer

from llamaforge.methods.ppo_objective import (
    KLController,
    RunningMoments,
    explained_variance,
    gae,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
STATE_FILE = "ppo_state.pt"

# Samples a response (token ids) for each prompt (by index) from the live policy.
SampleFunction = Callable[[Sequence[int]], list[list[int]]]
# Scores the responses (decoded text, and ids) to prompts (by index) → one float each.
ScoreFunction = Callable[[Sequence[int], Sequence[str], Sequence[list[int]]], Sequence[float]]


def rollout_schedule(
    num_prompts: int, rollout_size: int, samples: int, ppo_epochs: int, rollouts: int, seed: int
) -> tuple[list[dict[str, int]], list[list[int]]]:
    """(schedule rows ``{rollout, row}``, each rollout batch's prompt per row): ``rollouts``
    batches of ``rollout_size`` prompts drawn without replacement from a seeded shuffle
    (reshuffled at each pass over the prompts), each prompt sampled ``samples`` times, and
    each batch's rows repeated ``ppo_epochs`` times in a fresh order."""
    if rollout_size > num_prompts:
        raise ValueError(
            f"a rollout batch of {rollout_size} prompts needs that many; there are {num_prompts}"
        )
    rows: list[dict[str, int]] = []
    prompts: list[list[int]] = []
    order: list[int] = []
    generator = torch.Generator().manual_seed(seed)
    for rollout in range(rollouts):
        if len(order) < rollout_size:  # a new pass over the prompts; the rest is dropped
            order = torch.randperm(num_prompts, generator=generator).tolist()
        batch, order = order[:rollout_size], order[rollout_size:]
        prompts.append([p for p in batch for _ in range(samples)])
        for _ in range(ppo_epochs):
            shuffled = torch.randperm(len(prompts[-1]), generator=generator).tolist()
            rows += [{"rollout": rollout, "row": j} for j in shuffled]
    return rows, prompts


def schedule_rows(features: list[dict[str, int]]) -> list[dict[str, int]]:
    """The collator: a micro-batch is its schedule rows."""
    return list(features)


@dataclasses.dataclass
class PPOSettings:
    """What PPOTrainer needs beyond TrainingArguments (methods/ppo.py fills it from the
    config)."""

    temperature: float
    """The sampling temperature, which also divides the logits of the log-probs."""
    kl_coef: float
    kl_target: float | None
    kl_horizon: int
    gamma: float
    lam: float
    clip_range: float
    clip_range_value: float
    value_coef: float
    missing_eos_penalty: float
    normalize_rewards: bool
    stop_token_ids: tuple[int, ...]
    pad_token_id: int


@dataclasses.dataclass
class Rollout:
    """One rollout batch: a response per row (``prompts``: the prompt index of each)."""

    index: int
    prompts: list[int]
    sequences: torch.Tensor  # [R, P + T] left-padded prompt, response, right padding
    attention_mask: torch.Tensor  # [R, P + T]
    mask: torch.Tensor  # [R, T] response tokens up to and including the stop token
    old_logprobs: torch.Tensor  # [R, T]
    old_values: torch.Tensor  # [R, T]
    advantages: torch.Tensor  # [R, T]
    returns: torch.Tensor  # [R, T]

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PPOTrainer(Trainer):
    """PPO on ``prompts`` (token ids, chat template applied) with rewards from ``score``;
    ``model`` is the policy (a peft model: the reference is its adapter disabled),
    ``value_head`` a linear layer over its last hidden state, ``sample`` draws responses
    from ``model`` (called in eval mode, no dropout, under a seed of its rollout batch's
    own)."""

    def __init__(
        self,
        *args: Any,
        prompts: Sequence[list[int]],
        rollout_prompts: Sequence[list[int]],
        sample: SampleFunction,
        score: ScoreFunction,
        value_head: nn.Linear,
        settings: PPOSettings,
        seed: int,
        **kwargs: Any,
    ) -> None:
        # Batches are the schedule rows as they are (not tensors): the pre-flight then knows
        # they are rollouts to sample, as GRPO's prompts, and does not time a step with them.
        super().__init__(*args, data_collator=schedule_rows, **kwargs)
        self.loss_is_scaled_for_ga = False  # the Trainer divides by the accumulation steps
        self.prompts = [list(p) for p in prompts]
        self.sample = sample
        self.score = score
        self.value_head = value_head
        self.settings = settings
        self.seed = seed
        self.kl = KLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
        self.moments = RunningMoments()
        self.rollout: Rollout | None = None
        self.metrics: dict[str, list[float]] = defaultdict(list)
        self.rollout_prompts = [list(p) for p in rollout_prompts]

    # -- the optimizer, saving and resuming also cover the value head and the PPO state --

    def create_optimizer(self, model: Any = None) -> Any:
        """The Trainer's optimizer plus a group for the value head, whose gradients are
        cleared after each step (the Trainer clears only the model's)."""
        optimizer = super().create_optimizer(model)
        head = list(self.value_head.parameters())
        if not any(p is head[0] for g in optimizer.param_groups for p in g["params"]):
            optimizer.add_param_group({"params": head, "weight_decay": 0.0})
            optimizer.register_step_post_hook(
                lambda *_: self.value_head.zero_grad(set_to_none=True)
            )
        return optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        directory = Path(output_dir or self.args.output_dir)
        if not self.is_world_process_zero():
            return
        save_file(
            {k: v.contiguous() for k, v in self.value_head.state_dict().items()},
            directory / VALUE_HEAD_FILE,
        )
        state = {
            "kl_coef": self.kl.coef,
            "moments": dataclasses.asdict(self.moments),
            "rollout": self.rollout.to_state() if self.rollout is not None else None,
        }
        torch.save(state, directory / STATE_FILE)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, str):
            directory = Path(resume_from_checkpoint)
            self.value_head.load_state_dict(load_file(directory / VALUE_HEAD_FILE))
            state = torch.load(directory / STATE_FILE, weights_only=True)
            self.kl.coef = state["kl_coef"]
            self.moments = RunningMoments(**state["moments"])
            self.rollout = Rollout(**state["rollout"]) if state["rollout"] else None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # -- rollouts --

    def forward_response(
        self, model: Any, rollout_or_rows: tuple[torch.Tensor, torch.Tensor], width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs of the response tokens, values before each, logits) for sequences whose
        last ``width`` positions are the response."""
        sequences, attention = rollout_or_rows
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding, as in generate
        out = model(
            input_ids=sequences,
            attention_mask=attention,
            position_ids=positions,
            logits_to_keep=width + 1,
            output_hidden_states=True,
            use_cache=False,
        )
        logits = out.logits[:, :-1].float() / self.settings.temperature  # [B, T, V]
        targets = sequences[:, -width:]
        logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
        hidden = out.hidden_states[-1][:, -width - 1 : -1]
        values = self.value_head(hidden.detach().float()).squeeze(-1)
        return logprobs, values, logits

    @torch.no_grad()
    def make_rollout(self, index: int) -> Rollout:
        s = self.settings
        prompt_ids = self.rollout_prompts[index]
        prompts = [self.prompts[i] for i in prompt_ids]
        model = self.model
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100003 + index)
            responses = self.sample(prompt_ids)
        model.train(was_training)
        tokenizer = self.processing_class
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = torch.tensor([float(x) for x in self.score(prompt_ids, texts, responses)])
        if len(scores) != len(prompts):
            raise RuntimeError(f"the reward gave {len(scores)} scores for {len(prompts)} responses")
        ended = torch.tensor([bool(r) and r[-1] in s.stop_token_ids for r in responses])
        if s.missing_eos_penalty:
            scores = torch.where(ended, scores, scores - s.missing_eos_penalty)
        raw_scores = scores.clone()
        if s.normalize_rewards:
            self.moments.update(scores)
            scores = self.moments.normalise(scores)

        width_p = max(len(p) for p in prompts)
        width_r = max(max(len(r) for r in responses), 1)
        rows, attention, mask = [], [], []
        for p, r in zip(prompts, responses, strict=True):
            left, right = width_p - len(p), width_r - len(r)
            rows.append([s.pad_token_id] * left + p + r + [s.pad_token_id] * right)
            attention.append([0] * left + [1] * (len(p) + len(r)) + [0] * right)
            mask.append([1.0] * len(r) + [0.0] * right)
        sequences, attention_mask = torch.tensor(rows), torch.tensor(attention)
        response_mask = torch.tensor(mask)
        model.eval()
        logprobs, values, _ = self.forward_response(model, (sequences, attention_mask), width_r)
        with model.disable_adapter():
            ref_logprobs, _, _ = self.forward_response(model, (sequences, attention_mask), width_r)
        model.train(was_training)
        rewards, kl = token_rewards(scores, logprobs, ref_logprobs, response_mask, self.kl.coef)
        advantages, returns = gae(rewards, values, response_mask, s.gamma, s.lam)
        advantages = masked_whiten(advantages, response_mask)
        sequence_kl = kl.sum(1).mean().item()
        self.record(
            score=raw_scores.mean().item(),
            kl=sequence_kl,
            kl_coef=self.kl.coef,
            response_length=response_mask.sum(1).mean().item(),
            ended=ended.float().mean().item(),
        )
        self.kl.update(sequence_kl, len(prompts))
        return Rollout(
            index, prompt_ids, sequences, attention_mask, response_mask,
            logprobs, values * response_mask, advantages, returns,
        )  # fmt: skip

    # -- the loss --

    def compute_loss(
        self,
        model: nn.Module,
        inputs: list[dict[str, int]],  # type: ignore[override]
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        index = int(inputs[0]["rollout"])
        if any(row["rollout"] != index for row in inputs):
            raise RuntimeError("a micro-batch spans two rollout batches; check the schedule")
        if self.rollout is None or self.rollout.index != index:
            self.rollout = self.make_rollout(index)
        rollout = self.rollout
        rows = torch.tensor([row["row"] for row in inputs])
        mask = rollout.mask[rows]
        width = mask.shape[1]
        logprobs, values, logits = self.forward_response(
            model, (rollout.sequences[rows], rollout.attention_mask[rows]), width
        )
        pg = policy_loss(
            logprobs,
            rollout.old_logprobs[rows],
            rollout.advantages[rows],
            mask,
            self.settings.clip_range,
        )
        vf = value_loss(
            values,
            rollout.old_values[rows],
            rollout.returns[rows],
            mask,
            self.settings.clip_range_value,
        )
        loss = pg.loss + self.settings.value_coef * vf.loss
        with torch.no_grad():
            entropy = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)
            self.record(
                policy_loss=pg.loss.item(),
                value_loss=vf.loss.item(),
                clip_fraction=pg.clip_fraction.item(),
                value_clip_fraction=vf.clip_fraction.item(),
                entropy=masked_mean(entropy, mask).item(),
                approx_kl=masked_mean(
                    0.5 * (logprobs - rollout.old_logprobs[rows]) ** 2, mask
                ).item(),
                explained_variance=explained_variance(values, rollout.returns[rows], mask),
            )
        return (loss, None) if return_outputs else loss

    def record(self, **values: float) -> None:
        for name, value in values.items():
            self.metrics[name].append(value)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The PPO metrics (means since the last log) go out with the Trainer's own."""
        if "loss" in logs:
            for name, values in self.metrics.items():
                finite = [v for v in values if not math.isnan(v)]
                if finite:
                    logs[f"ppo/{name}"] = sum(finite) / len(finite)
            self.metrics.clear()
        super().log(logs, *args, **kwargs)
