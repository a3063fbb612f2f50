"""Frozen bf16 linears on pre-packed oneDNN weights (training/prepack.py): the same
outputs and LoRA gradients as nn.Linear, only inside the context, only when memory allows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamaforge.adapters.attach import attach_adapter
from llamaforge.config.sections import FinetuningConfig
from llamaforge.training import prepack
from llamaforge.training.prepack import prepacked_frozen_linears

pytestmark = pytest.mark.skipif(
    not prepack._packing_works(), reason="this torch has no pre-packed oneDNN linear"
)


@pytest.fixture
def bf16_lora(make_tiny_llama):
    """Tiny Llama, frozen base in bf16, LoRA on q/v with a non-zero B (so A gets a gradient)."""
    base = make_tiny_llama(initializer_range=0.3).to(torch.bfloat16)
    config = FinetuningConfig(lora_r=4, lora_dropout=0.0, lora_target_modules=("q_proj", "v_proj"))
    torch.manual_seed(1)
    model = attach_adapter(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(2))
    return model


def _loss_and_grads(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    ids = torch.randint(10, 2000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, use_cache=False).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_packed_layers_give_the_same_loss_and_lora_gradients(bf16_lora):
    weights = {name: p.detach().clone() for name, p in bf16_lora.named_parameters()}
    loss, grads = _loss_and_grads(bf16_lora)
    frozen = [m for m in bf16_lora.modules() if type(m) is nn.Linear and not m.weight.requires_grad]
    with prepacked_frozen_linears(bf16_lora) as switched:
        # q/k/v/o/gate/up/down of 2 layers + lm_head; the LoRA A/B layers train and stay.
        assert switched == len(frozen) == 15
        assert all("forward" in m.__dict__ for m in frozen)
        packed_loss, packed_grads = _loss_and_grads(bf16_lora)
    assert not any("forward" in m.__dict__ for m in frozen)  # nn.Linear.forward again
    # Released dense weights come back from the packed copies (a reorder): bit-identical.
    assert all(torch.equal(p, weights[n]) for n, p in bf16_lora.named_parameters())
    torch.testing.assert_close(packed_loss, loss, rtol=1e-3, atol=0)
    assert packed_grads.keys() == grads.keys() and len(grads) == 8
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(packed_grads[name], grad, rtol=2e-2, atol=1e-3)


def test_nothing_is_packed_when_memory_is_short(bf16_lora, monkeypatch):
    monkeypatch.setattr(prepack, "available_memory_bytes", lambda: 1024)
    with prepacked_frozen_linears(bf16_lora) as switched:
        assert switched == 0
        assert not any("forward" in m.__dict__ for m in bf16_lora.modules())


def test_fp32_and_trained_layers_are_left_alone(make_tiny_llama):
    with prepacked_frozen_linears(make_tiny_llama().requires_grad_(False)) as switched:
        assert switched == 0  # fp32 weights
    model = make_tiny_llama().to(torch.bfloat16).requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # tied: the embedding trains too
    with prepacked_frozen_linears(model) as switched:
        assert switched == 14  # q/k/v/o/gate/up/down of 2 layers, not lm_head
        assert "forward" not in model.lm_head.__dict__


def test_a_failure_while_packing_restores_every_layer(bf16_lora, monkeypatch):
    calls = []

    def reorder(weight, rows):
        calls.append(weight)
        if len(calls) > 5:
            raise RuntimeError("out of memory")
        return weight

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", reorder)
    with pytest.raises(RuntimeError, match="out of memory"), prepacked_frozen_linears(bf16_lora):
        pass
    assert len(calls) == 6
    assert not any("forward" in m.__dict__ for m in bf16_lora.modules())


def test_fp32_input_without_autocast_keeps_the_original_behaviour():
    layer = nn.Linear(16, 8, bias=False).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(3, 16)
    with pytest.raises(RuntimeError) as plain:
        layer(x)  # nn.Linear refuses mixed dtypes
    with prepacked_frozen_linears(layer) as switched, pytest.raises(RuntimeError) as packed:
        assert switched == 1
        layer(x)
    assert str(packed.value) == str(plain.value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer(x)  # before: inside, the dense weight is released
        with prepacked_frozen_linears(layer):
            torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
