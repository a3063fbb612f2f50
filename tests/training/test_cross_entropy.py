"""Blocked cross-entropy (training/cross_entropy.py): the loss and gradient of
``F.cross_entropy(logits.float(), targets, reduction="sum")``, a few rows at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llamaforge.training import cross_entropy
from llamaforge.training.cross_entropy import cross_entropy_sum


def _logits(rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (3 * torch.randn(rows, vocab, generator=generator)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block_elements", [1 << 19, 100])  # one block; blocks of 2 rows
def test_loss_and_gradient_equal_fp32_cross_entropy(monkeypatch, dtype, block_elements):
    monkeypatch.setattr(cross_entropy, "BLOCK_ELEMENTS", block_elements)
    logits = _logits(13, 37, dtype)
    targets = torch.randint(0, 37, (13,), generator=torch.Generator().manual_seed(1))
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()

    loss = cross_entropy_sum(ours, targets)
    expected = F.cross_entropy(theirs.float(), targets, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    (0.5 * loss).backward()
    (0.5 * expected).backward()
    assert ours.grad.dtype == dtype
    # bf16: the same fp32 gradient rounded once to bf16, at most one rounding step apart.
    tolerance = {"rtol": 1e-2, "atol": 1e-6} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(ours.grad, theirs.grad, **tolerance)
    assert torch.equal(ours.detach(), logits)  # the backward leaves the logits alone


def test_no_trained_token_gives_zero_loss_and_an_empty_gradient():
    logits = torch.zeros(0, 37, dtype=torch.bfloat16, requires_grad=True)
    loss = cross_entropy_sum(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 37)
