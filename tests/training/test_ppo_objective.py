"""PPO's arithmetic against values worked out by hand on tiny examples."""

from __future__ import annotations

import math

import pytest
import torch

from llamaforge.methods.ppo_objective import (
    KLController,
    RunningMoments,
    explained_variance,
    gae,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_kl_penalty_on_every_token_and_the_score_on_the_last():
    rewards, kl = token_rewards(
        scores=torch.tensor([2.0, -1.0]),
        logprobs=t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]),
        ref_logprobs=t([-1.5, -2.0, -2.0], [-1.0, -2.0, -1.0]),
        mask=t([1, 1, 0], [1, 1, 1]),
        kl_coef=0.1,
    )
    # row 0: kl 0.5, 0, (padding); the score lands on token 1, its last
    # row 1: kl 0, 1, 0; the score on token 2
    assert torch.allclose(kl, t([0.5, 0.0, 0.0], [0.0, 1.0, 0.0]))
    assert torch.allclose(rewards, t([-0.05, 2.0, 0.0], [0.0, -0.1, -1.0]))


def test_gae_by_hand():
    rewards, values = t([1.0, 0.0, 2.0]), t([0.5, 0.2, 0.1])
    advantages, returns = gae(rewards, values, t([1, 1, 1]), gamma=1.0, lam=0.5)
    # t=2: δ = 2 − 0.1 = 1.9;  t=1: δ = 0 + 0.1 − 0.2 = −0.1, A = −0.1 + 0.5·1.9 = 0.85
    # t=0: δ = 1 + 0.2 − 0.5 = 0.7, A = 0.7 + 0.5·0.85 = 1.125
    assert torch.allclose(advantages, t([1.125, 0.85, 1.9]))
    assert torch.allclose(returns, t([1.625, 1.05, 2.0]))
    # discounting: γ = 0.5, λ = 1 → A_t = Σ γ^k r_{t+k} − V_t (Monte-Carlo)
    advantages, _ = gae(rewards, values, t([1, 1, 1]), gamma=0.5, lam=1.0)
    assert torch.allclose(advantages, t([1.5 - 0.5, 1.0 - 0.2, 2.0 - 0.1]))


def test_gae_stops_at_the_end_of_the_response():
    # the padding's reward and value (9.0) must not leak into the last real token
    advantages, returns = gae(t([1.0, 0.0, 9.0]), t([0.5, 0.2, 9.0]), t([1, 1, 0]), 1.0, 0.5)
    # t=1: δ = 0 + 0 − 0.2 = −0.2;  t=0: δ = 1 + 0.2 − 0.5 = 0.7, A = 0.7 + 0.5·(−0.2) = 0.6
    assert torch.allclose(advantages, t([0.6, -0.2, 0.0]))
    assert torch.allclose(returns, t([1.1, 0.0, 0.0]))


def test_clipped_policy_objective_by_hand():
    ratio = t([1.5, 0.5, 1.1])
    parts = policy_loss(
        logprobs=ratio.log(),
        old_logprobs=torch.zeros(1, 3),
        advantages=t([1.0, 1.0, -1.0]),
        mask=t([1, 1, 1]),
        clip_range=0.2,
    )
    # token 0: max(−1.5, −1.2) = −1.2 (clipped); token 1: max(−0.5, −0.8) = −0.5;
    # token 2: A < 0, r inside the range: 1.1
    assert parts.loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert parts.clip_fraction.item() == pytest.approx(1 / 3)


def test_clipped_policy_objective_gradient_vanishes_where_clipped():
    logprobs = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    policy_loss(logprobs, torch.zeros(1, 2), t([1.0, 1.0]), t([1, 1]), 0.2).loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0, 0].item() == 0.0  # ratio 1.5 > 1.2 with A > 0: no push further
    assert logprobs.grad[0, 1].item() == pytest.approx(-1.1 / 2)  # d(−A·r)/dlogp = −A·r


def test_clipped_value_loss_by_hand():
    parts = value_loss(
        values=t([1.0, 0.0]),
        old_values=t([0.5, 0.0]),
        returns=t([2.0, 1.0]),
        mask=t([1, 1]),
        clip_range=0.2,
    )
    # token 0: V_clip = 0.7, max((1 − 2)², (0.7 − 2)²) = 1.69 (clipped); token 1: 1
    assert parts.loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert parts.clip_fraction.item() == pytest.approx(0.5)


def test_whitening_ignores_padding():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    white = masked_whiten(x, mask)
    assert torch.allclose(white, t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6)  # unbiased std 1
    assert torch.allclose(masked_whiten(x, mask, shift_mean=False), t([1.0, 2.0, 3.0, 0.0]))


def test_explained_variance():
    returns, mask = t([1.0, 2.0, 3.0]), t([1, 1, 1])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3), returns, mask) == pytest.approx(0.0)
    assert explained_variance(t([3.0, 2.0, 1.0]), returns, mask) == pytest.approx(-3.0)


def test_adaptive_kl_coefficient():
    fixed = KLController(coef=0.1)
    fixed.update(kl=50.0, n_samples=8)
    assert fixed.coef == 0.1
    adaptive = KLController(coef=0.1, target=6.0, horizon=100)
    adaptive.update(kl=9.0, n_samples=10)  # error 0.5, clipped to 0.2
    assert adaptive.coef == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    adaptive.update(kl=5.4, n_samples=10)  # error −0.1
    assert adaptive.coef == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 10 / 100))


def test_running_moments_match_the_whole_sample():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    assert moments.mean == pytest.approx(3.0, abs=1e-3)
    assert moments.var == pytest.approx(2.0, abs=1e-3)  # population variance of 1..5
    assert moments.normalise(torch.tensor([3.0])).item() == pytest.approx(0.0, abs=1e-3)
