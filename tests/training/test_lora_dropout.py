"""LoRA dropout with the cheaper CPU mask: the same distribution and gradient as nn.Dropout,
governed by torch's seed, and installed on every LoRA layer by attach_adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamaforge.adapters.attach import attach_adapter
from llamaforge.adapters.dropout import LoraDropout
from llamaforge.config.sections import FinetuningConfig


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_at_rate_p_and_scales_the_rest(dtype):
    p, n = 0.05, 1_000_003  # not a multiple of 4: the last 64-bit draw is cut
    torch.manual_seed(0)
    out = LoraDropout(p).train()(torch.ones(n, dtype=dtype))
    dropped = out == 0
    # 1e6 draws: the standard deviation of the rate is 2.2e-4.
    assert abs(dropped.float().mean().item() - p) < 0.002
    # Each of the four 16-bit lanes of a 64-bit draw is uniform on its own.
    for lane in range(4):
        assert abs(dropped[lane::4].float().mean().item() - p) < 0.004
    kept = out[~dropped]
    scale = torch.ones((), dtype=dtype) * (1 / (1 - p))  # 1/(1-p) rounded to dtype
    assert torch.equal(kept, torch.full_like(kept, scale.item()))
    assert out.dtype == dtype and out.shape == (n,)


def test_mask_follows_torch_seed_and_changes_between_calls():
    dropout = LoraDropout(0.3).train()
    x = torch.randn(7, 33)  # 231 elements
    torch.manual_seed(1)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(1)
    assert torch.equal(dropout(x), first)
    assert not torch.equal(first, second)


def test_gradient_is_mask_times_scale():
    p = 0.25
    x = torch.randn(64, 48, requires_grad=True)
    out = LoraDropout(p).train()(x)
    out.sum().backward()
    expected = (out != 0).float() / (1 - p)
    assert torch.allclose(x.grad, expected)


def test_identity_in_eval_mode_or_at_p_zero():
    x = torch.randn(5, 8)
    assert LoraDropout(0.5).eval()(x) is x
    assert LoraDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"lora_dropout must be in \[0, 1\)"):
        LoraDropout(1.0)


def test_attach_adapter_installs_it_on_every_lora_layer(make_tiny_llama):
    model = attach_adapter(
        make_tiny_llama(),
        FinetuningConfig(lora_dropout=0.1, lora_target_modules=("q_proj", "v_proj")),
    )
    dropouts = [m for m in model.modules() if isinstance(m, LoraDropout)]
    assert len(dropouts) == 2 * 2  # q and v of 2 layers
    assert all(d.p == 0.1 for d in dropouts)
    assert not any(type(m) is nn.Dropout for m in model.modules())
    # lora_dropout 0: peft's nn.Identity stays.
    plain = attach_adapter(make_tiny_llama(), FinetuningConfig(lora_dropout=0.0))
    assert not any(isinstance(m, LoraDropout) for m in plain.modules())
