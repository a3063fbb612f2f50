"""Pre-packed frozen weights cost one extra copy, not two (training/prepack.py): while packed,
a layer's dense weight holds no memory; on exit it is back, bit-identical.

oneDNN's packing is replaced here by plain copies (this CPU may have no bf16 packing), so
these tests run everywhere: they check what is held and given back, not the kernels
(tests/training/test_prepack.py runs the real ones where they exist).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamaforge.adapters.attach import attach_adapter
from llamaforge.config.sections import FinetuningConfig
from llamaforge.training import prepack
from llamaforge.training.prepack import prepacked_frozen_linears


@pytest.fixture
def plain_copies_for_onednn(monkeypatch):
    monkeypatch.setattr(prepack, "_packing_works", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", lambda w, rows: w.clone())
    monkeypatch.setattr(prepack, "_linear", lambda rows, packed: rows @ packed.t())


@pytest.fixture
def bf16_lora(make_tiny_llama):
    base = make_tiny_llama(initializer_range=0.3).to(torch.bfloat16)
    config = FinetuningConfig(lora_r=4, lora_dropout=0.0, lora_target_modules=("q_proj", "v_proj"))
    torch.manual_seed(1)
    return attach_adapter(base, config)


def _frozen_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {
        name: m
        for name, m in model.named_modules()
        if type(m) is nn.Linear and not m.weight.requires_grad
    }


def _held_bytes(weight: torch.Tensor) -> int:
    return weight.untyped_storage().nbytes()


def _loss(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(10, 2000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(input_ids=ids, labels=ids, use_cache=False).loss


def test_dense_weights_are_released_while_packed_and_come_back_bit_identical(
    bf16_lora, plain_copies_for_onednn
):
    before = {name: p.detach().clone() for name, p in bf16_lora.named_parameters()}
    layers = _frozen_linears(bf16_lora)
    sizes = {name: m.weight.numel() * m.weight.element_size() for name, m in layers.items()}
    loss = _loss(bf16_lora)
    with prepacked_frozen_linears(bf16_lora) as switched:
        assert switched == len(layers) == 15  # q/k/v/o/gate/up/down of 2 layers + lm_head
        released = {n for n, m in layers.items() if _held_bytes(m.weight) < sizes[n]}
        # Read elsewhere, so kept: lm_head's weight is the input embedding's (tied), and
        # peft's LoRA layers wrap q/v (DoRA reads the base weight).
        kept = {
            n for n in layers if n.endswith(("lm_head", "q_proj.base_layer", "v_proj.base_layer"))
        }
        assert len(kept) == 5 and released == set(layers) - kept
        for name in released:
            weight = layers[name].weight
            assert _held_bytes(weight) <= weight.element_size()  # one element, shape kept
            assert weight.shape == before[f"{name}.weight"].shape
            assert weight.dtype == torch.bfloat16
        torch.testing.assert_close(_loss(bf16_lora), loss, rtol=1e-2, atol=0)
    for name, param in bf16_lora.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.is_contiguous() and _held_bytes(param) == param.numel() * param.element_size()
    assert not any("forward" in m.__dict__ for m in layers.values())


def test_the_memory_check_counts_one_extra_copy_for_released_weights(
    bf16_lora, plain_copies_for_onednn, monkeypatch
):
    layers = list(_frozen_linears(bf16_lora).values())
    keep = prepack._dense_weights_read_elsewhere(bf16_lora)
    extra = prepack.extra_bytes(layers, keep)
    sizes = [m.weight.numel() * m.weight.element_size() for m in layers]
    kept = sum(s for m, s in zip(layers, sizes, strict=True) if id(m.weight) in keep)
    assert extra == 2 * kept + (sum(sizes) - kept) < 2 * sum(sizes)
    monkeypatch.setattr(prepack, "available_memory_bytes", lambda: 4 * extra)
    with prepacked_frozen_linears(bf16_lora) as switched:
        assert switched == len(layers)  # fits exactly: not refused for the old 2x estimate


def test_a_failure_while_packing_gives_every_weight_back(bf16_lora, monkeypatch):
    monkeypatch.setattr(prepack, "_packing_works", lambda: True)
    before = {name: p.detach().clone() for name, p in bf16_lora.named_parameters()}
    calls = []

    def reorder(weight, rows):
        calls.append(weight)
        if len(calls) > 9:  # a few layers packed (and released) first
            raise RuntimeError("out of memory")
        return weight.clone()

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", reorder)
    with pytest.raises(RuntimeError, match="out of memory"), prepacked_frozen_linears(bf16_lora):
        pass
    for name, param in bf16_lora.named_parameters():
        assert torch.equal(param, before[name]), name
    assert not any("forward" in m.__dict__ for m in bf16_lora.modules())


def test_without_autocast_a_released_layer_behaves_as_nn_linear(plain_copies_for_onednn):
    layer = nn.Linear(16, 8, bias=False).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(3, 16)
    with pytest.raises(RuntimeError) as plain:
        layer(x)  # nn.Linear refuses mixed dtypes
    with prepacked_frozen_linears(layer) as switched, pytest.raises(RuntimeError) as packed:
        assert switched == 1 and _held_bytes(layer.weight) <= 2
        layer(x)
    assert str(packed.value) == str(plain.value)
