"""Frozen bf16 linear layers on pre-packed oneDNN weights, for LoRA training on the CPU.

Why our own: torch's CPU bf16 matmul (oneDNN) re-packs the weight into its blocked layout
on every call, forward and backward, although a LoRA base never changes. Inductor's CPU
backend packs frozen weights once (``torch.ops.mkldnn._reorder_linear_weight``) and calls
``torch.ops.mkldnn._linear_pointwise`` on them, but only for inference graphs, without a
backward. Here each frozen bias-free bf16 ``nn.Linear`` gets two packed copies, W for the
forward and Wᵀ for the input gradient, for the duration of training. On SmolLM2 the loss
was bit-identical and a LoRA step 4–5 % faster (one process, the same batches, steps
alternated; packing only the forward or only the backward gained nothing).

Memory: while packed, a layer's dense weight is released (its parameter keeps shape and
dtype but no storage) and on exit it is rebuilt from the packed W by oneDNN's reorder back
to the plain layout, an exact copy. So packing costs one extra copy of the frozen weights,
not two. Weights that something else reads keep their dense copy: tied ones (the input
embedding shares lm_head's weight) and the base layer of a peft layer (DoRA reads its
weight). The heap holes the released weights and the transposed temporaries leave are given
back to the OS (``release_freed_memory``), or glibc keeps them resident. SmolLM2 with LoRA
on q/v in bf16 (0.27 GB of packed weights): the process grew by 0.53 GB when packing made
both copies and kept the dense weights, by 0.32 GB now (0.19 GB of dense weights released).
The packing is done only when the extra memory fits in a quarter of the free memory.

oneDNN's caches (not changed here; measured, for whoever tunes a bf16 CPU): oneDNN keeps the
primitives it creates (a kernel for one shape) in a cache and ideep, PyTorch's wrapper, keeps
its own, 1024 entries each by default. Packed training gives almost every step new row counts,
so they fill with shapes that never come back. Replaying a 1,200-record epoch's row counts
(150 steps) through SmolLM2's packed linears in fp32 on an AVX2 CPU grew the process by
0.60 GB (0.42 GB still held after ``malloc_trim``); with ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``
and ``LRU_CACHE_CAPACITY`` at 256, by 0.45 GB (0.15 GB held). A capacity below the distinct
shapes of one layer's step (about 10 + 6 per example of the micro-batch, with the per-example
attention matmuls) would recreate every primitive at every layer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llamaforge.models.memory import release_freed_memory
from llamaforge.training.preflight import available_memory_bytes

logger = logging.getLogger(__name__)

# oneDNN picks the packed layout for an expected row count; rows vary per packed batch and
# any count works, this only tunes the blocking.
_ROWS_HINT = 512


def _frozen_bf16_linears(model: nn.Module) -> list[nn.Linear]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [
        layer
        for layer in linears
        if type(layer) is nn.Linear  # not a subclass with its own forward (peft, bnb)
        and layer.bias is None
        and not layer.weight.requires_grad
        and layer.weight.dtype == torch.bfloat16
        and layer.weight.device.type == "cpu"
    ]


@functools.cache
def _packing_works() -> bool:
    """Whether this torch build has oneDNN's weight packing and packed linear (and they agree)."""
    try:
        probe = torch.ones(4, 4, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(probe, 4)
        return torch.equal(_linear(probe, packed), probe @ probe)
    except (AttributeError, RuntimeError) as err:  # no mkldnn ops, or a build without oneDNN
        logger.debug("no pre-packed oneDNN linear in this torch: %s", err)
        return False


def _linear(rows: torch.Tensor, packed: Any) -> torch.Tensor:
    """rows @ Wᵀ for a weight packed by ``_reorder_linear_weight``."""
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, None, "none", [], "")
    assert isinstance(out, torch.Tensor)
    return out


class _PackedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: Any, packed_t: Any) -> torch.Tensor:
        ctx.packed_t, ctx.input_dtype = packed_t, x.dtype
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        return _linear(rows, packed).view(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        rows = grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16).contiguous()
        grad_x = _linear(rows, ctx.packed_t)
        return grad_x.view(*grad.shape[:-1], -1).to(ctx.input_dtype), None, None


def _packed_forward(
    module: nn.Linear, packed: Any, packed_t: Any, released: bool, x: torch.Tensor
) -> torch.Tensor:
    # What nn.Linear would do under bf16 autocast (or with a bf16 input); anything else,
    # such as an fp32 input with autocast off, keeps the original forward (on the weight
    # rebuilt from the packed copy when the dense one is released).
    if x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    ):
        return _PackedLinear.apply(x, packed, packed_t)
    return F.linear(x, packed.to_dense() if released else module.weight)


def _dense_weights_read_elsewhere(model: nn.Module) -> set[int]:
    """ids of weights read by more than their own nn.Linear: tied, or a peft base layer's."""
    holders: dict[int, int] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                holders[id(param)] = holders.get(id(param), 0) + 1
    read = {pid for pid, count in holders.items() if count > 1}
    for module in model.modules():
        base = getattr(module, "base_layer", None)  # peft's tuner layers (LoRA, DoRA, ...)
        if isinstance(base, nn.Linear):
            read.add(id(base.weight))
    return read


def _no_storage(weight: torch.Tensor) -> torch.Tensor:
    """A tensor with ``weight``'s shape and dtype that holds one element (all zeros)."""
    return torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)


def extra_bytes(layers: list[nn.Linear], keep_dense: set[int]) -> int:
    """Memory the packing adds: two packed copies per layer, less the dense weights released."""
    total = 0
    for layer in layers:
        size = layer.weight.numel() * layer.weight.element_size()
        total += 2 * size if id(layer.weight) in keep_dense else size
    return total


@contextlib.contextmanager
def prepacked_frozen_linears(model: nn.Module) -> Iterator[int]:
    """While inside, frozen bias-free bf16 CPU ``nn.Linear`` layers run on packed weights.

    Yields how many layers were switched (0 when the ops are missing or memory is short);
    on exit every layer has its own forward and its dense weight back (bit-identical) and
    the packed copies are freed.
    """
    layers = _frozen_bf16_linears(model)
    works = bool(layers) and _packing_works()
    keep_dense = _dense_weights_read_elsewhere(model)
    extra = extra_bytes(layers, keep_dense)
    if not works or extra > available_memory_bytes() // 4:
        if works:
            logger.info("frozen weights not pre-packed: %.1f GiB would not fit", extra / 2**30)
        yield 0
        return
    released: dict[nn.Linear, Any] = {}  # layer → the packed W its dense weight comes back from
    try:  # a failure while packing (memory) also gives every layer its forward and weight back
        for layer in layers:
            weight = layer.weight.detach()
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT)
            packed_t = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), _ROWS_HINT)
            release = id(layer.weight) not in keep_dense
            layer.forward = functools.partial(_packed_forward, layer, packed, packed_t, release)  # type: ignore[method-assign]
            if release:
                released[layer] = packed
                layer.weight.data = _no_storage(weight)
            del weight  # the dense storage goes now, not at the next layer
        logger.debug(
            "%d frozen linear layers on pre-packed weights (%d dense copies released)",
            len(layers),
            len(released),
        )
        # The released weights and the transposed temporaries leave holes in the heap that
        # glibc keeps resident (0.24 GB of 0.56 GB for SmolLM2): give them back.
        release_freed_memory()
        yield len(layers)
    finally:
        for layer in layers:  # one layer at a time: at most one layer's extra copy at once
            packed = released.pop(layer, None)
            if packed is not None:
                layer.weight.data = packed.to_dense()  # oneDNN reorder to plain: exact
            layer.__dict__.pop("forward", None)  # back to nn.Linear.forward
        release_freed_memory()
