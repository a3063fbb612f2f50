"""Summed cross-entropy of low-precision logits, computed in fp32 a few rows at a time.

Why our own: ``F.cross_entropy(logits.float(), ...)`` on the CPU makes a full fp32 copy of
the [trained tokens × vocabulary] logits, a full fp32 log-softmax, and in the backward a
zero-filled fp32 gradient, a log-softmax backward and a cast back: about ten passes over
~60 MB per step for SmolLM2 (300 trained tokens × 49152), most of them through main memory.
Liger's fused cross-entropy does this in one kernel but needs Triton (no CPU backend).
Here the fp32 work runs on blocks of rows small enough to stay in the CPU's cache: the
forward keeps one log-sum-exp per row, the backward rebuilds the softmax from the saved
bf16 logits and writes the bf16 gradient directly. Same loss and gradient in fp32 math,
and no fp32 copy of the logits held for the backward. On the 2-core CPU, forward + backward
for 300 × 49152 bf16 logits took 105 → 32 ms alone; inside a whole LoRA step the time saved
was within the machine's noise, the memory was not (benchmark peak RSS 1.70 → 1.60 GiB).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# fp32 elements per block: 2 MiB, about one core's L2 cache.
BLOCK_ELEMENTS = 1 << 19


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, reduction="sum")`` for [K, V] logits.

    Every target must be a class index (no ignore index): pass only the trained positions.
    """
    if logits.device.type != "cpu":  # one fused kernel per op there; blocks would only add launches
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    rows = max(1, BLOCK_ELEMENTS // max(logits.shape[-1], 1))
    loss = _BlockedCrossEntropy.apply(logits, targets, rows)
    assert isinstance(loss, torch.Tensor)
    return loss


class _BlockedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        lse = torch.empty(logits.shape[0], dtype=torch.float32)
        for start in range(0, logits.shape[0], rows):
            lse[start : start + rows] = torch.logsumexp(logits[start : start + rows].float(), -1)
        picked = logits.gather(1, targets[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, targets, lse)
        ctx.rows = rows
        return (lse - picked).sum()

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.rows):
            end = min(start + ctx.rows, logits.shape[0])
            # softmax − one-hot, times the incoming gradient, in fp32; one cast to bf16.
            probs = torch.sub(logits[start:end], lse[start:end, None]).exp_()  # fp32, a new tensor
            probs.scatter_add_(1, targets[start:end, None], probs.new_full((end - start, 1), -1.0))
            grad[start:end] = probs.mul_(grad_loss)
        return grad, None, None
