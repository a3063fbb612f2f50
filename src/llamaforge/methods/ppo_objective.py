"""PPO's arithmetic for RLHF, as plain functions of [batch, response tokens] tensors.

Every tensor here covers the response tokens only; ``mask`` is 1 on the tokens a response
has (up to and including its EOS) and 0 on the padding after it. Nothing here knows about
models: ``methods/ppo.py`` computes log-probs, values and scores and calls these. The
choices follow Huang et al., "The N+ Implementation Details of RLHF with PPO" (2024); see
``methods/ppo.py`` for which of the details the stage keeps.
"""

from __future__ import annotations

import dataclasses
import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries."""
    count = mask.sum()
    centred = (x - masked_mean(x, mask)) * mask
    return (centred**2).sum() / (count - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``x`` scaled to unit variance over the masked entries (and centred unless told not to);
    masked-out entries come back 0."""
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last response token (rows are contiguous from 0)."""
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, kl): a per-token KL penalty ``-kl_coef * (logp - logp_ref)`` (the k1
    estimate, sampled tokens) on every response token, plus the sequence's score on its last
    token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0])
    rewards[rows, last_token_index(mask)] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation; the value after a
    response's last token is 0 (the episode ends there)."""
    rewards, values = rewards * mask, values * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


@dataclasses.dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor
    clip_fraction: torch.Tensor


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> LossParts:
    """PPO's clipped surrogate: mean over tokens of max(-A·r, -A·clip(r, 1 ± ε))."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return LossParts(loss, masked_mean((clipped > unclipped).float(), mask))


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> LossParts:
    """Clipped value loss: ½ · mean of max((V − R)², (V_clipped − R)²), V_clipped within
    ``clip_range`` of the rollout's value."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return LossParts(loss, masked_mean((clipped_error > unclipped_error).float(), mask))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R): 1 for a perfect value function, ≤ 0 for a useless one."""
    variance = masked_var(returns, mask)
    if variance.item() == 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / variance)


@dataclasses.dataclass
class KLController:
    """The KL coefficient: fixed, or adapted towards ``target`` (Ziegler et al. 2019): after
    each rollout batch ``coef *= 1 + clip(KL / target − 1, ±0.2) · n / horizon``."""

    coef: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None or math.isnan(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_samples / self.horizon


@dataclasses.dataclass
class RunningMoments:
    """Running mean and standard deviation of every score seen (Chan et al.'s parallel
    update), to normalise rewards to a steady scale whatever the reward model's offset."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-4

    def update(self, x: torch.Tensor) -> None:
        batch_mean, batch_var, n = x.mean().item(), x.var(unbiased=False).item(), x.numel()
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.var = (
            self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        ) / total
        self.count = total

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / math.sqrt(self.var + 1e-8)
