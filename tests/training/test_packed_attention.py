"""Per-example packed attention (training/packing.py): same numbers as transformers' sdpa
with the block-diagonal mask, forward and backward; sdpa unchanged for everything else."""

from __future__ import annotations

import copy

import pytest
import torch

from llamaforge.adapters.attach import attach_adapter
from llamaforge.config.sections import FinetuningConfig
from llamaforge.training import packing
from llamaforge.training.packing import (
    PACKED_SDPA,
    packed_sdpa_attention,
    packing_collator,
    use_packed_attention,
)

LENGTHS = (7, 3, 12, 1, 9)


def packed_features(lengths=LENGTHS) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(0)
    features = []
    for n in lengths:
        ids = torch.randint(10, 2000, (n,), generator=generator).tolist()
        features.append({"input_ids": ids, "labels": ids})
    return features


def lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits.float()
    # A loss that weighs every position differently, so any wrong attention shows.
    weights = torch.linspace(0.5, 1.5, logits.shape[1])[None, :, None]
    (logits.log_softmax(-1) * weights).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def lora_pair(make_tiny_llama):
    """The same LoRA model twice: transformers' sdpa and our packed attention."""
    base = make_tiny_llama(initializer_range=0.3)
    ours = copy.deepcopy(base)
    assert use_packed_attention(ours)
    config = FinetuningConfig(lora_r=4, lora_dropout=0.0, lora_target_modules=("q_proj", "v_proj"))
    torch.manual_seed(1)
    reference = attach_adapter(base, config)
    torch.manual_seed(1)
    packed = attach_adapter(ours, config)
    for model in (reference, packed):
        for name, param in model.named_parameters():
            if "lora_B" in name:  # non-zero B, so LoRA A gets a gradient too
                torch.nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(2))
    return reference, packed


def test_packed_forward_and_lora_grads_equal_the_block_diagonal_sdpa(lora_pair):
    reference, packed = lora_pair
    batch = packing_collator()(packed_features())
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 10, 22, 23, 32]
    assert packed.config._attn_implementation == PACKED_SDPA
    assert reference.config._attn_implementation == "sdpa"

    # use_cache=False as in training: with a cache, transformers' sdpa builds no
    # block-diagonal mask for a packed row.
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(
            packed(**inputs, use_cache=False).logits,
            reference(**inputs, use_cache=False).logits,
            rtol=0,
            atol=1e-5,
        )
    ours, theirs = lora_grads(packed, batch), lora_grads(reference, batch)
    assert ours.keys() == theirs.keys() and len(ours) == 8  # A and B of q, v in 2 layers
    for name in ours:
        assert theirs[name].abs().max() > 0, name
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6)


def test_each_example_alone_gives_the_same_logits(make_tiny_llama):
    """Packed logits of example i == the logits of example i run on its own."""
    model = make_tiny_llama(initializer_range=0.3)
    assert use_packed_attention(model)
    features = packed_features()
    batch = packing_collator()(features)
    with torch.no_grad():
        row = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for feature in features:
            alone = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0]
            end = start + len(feature["input_ids"])
            torch.testing.assert_close(row[start:end], alone, rtol=0, atol=1e-5)
            start = end


def test_padded_batches_and_generation_are_plain_sdpa(make_tiny_llama, smollm2_tokenizer):
    reference = make_tiny_llama(initializer_range=0.3)
    ours = copy.deepcopy(reference)
    assert use_packed_attention(ours)
    smollm2_tokenizer.padding_side = "left"
    batch = smollm2_tokenizer(["Hello there, how are", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, reference(**batch).logits, rtol=0, atol=0)
        kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(ours.generate(**batch, **kwargs), reference.generate(**batch, **kwargs))


def test_bf16_on_cpu_matches_fp32_within_bf16_rounding(make_tiny_llama):
    model = make_tiny_llama(initializer_range=0.3)
    assert use_packed_attention(model)
    module = model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 32, 8, generator=generator)
    k, v = (
        torch.randn(1, 2, 32, 8, generator=generator),
        torch.randn(1, 2, 32, 8, generator=generator),
    )
    bounds = torch.tensor([0, 10, 32], dtype=torch.int32)
    exact, _ = packed_sdpa_attention(module, q, k, v, None, scaling=8**-0.5, cu_seq_lens_q=bounds)
    low, _ = packed_sdpa_attention(
        module,
        q.bfloat16(),
        k.bfloat16(),
        v.bfloat16(),
        None,
        scaling=8**-0.5,
        cu_seq_lens_q=bounds,
    )
    assert exact.shape == (1, 32, 4, 8) and low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, rtol=0, atol=0.05)


def _qkv(heads: int, kv_heads: int, length: int, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(1, h, length, dim, generator=generator, requires_grad=True)
        for h in (heads, kv_heads, kv_heads)
    )


def _attend(q, k, v, bounds, scaling=0.3):
    out, _ = packed_sdpa_attention(None, q, k, v, None, scaling=scaling, cu_seq_lens_q=bounds)
    return out


@pytest.mark.parametrize("longest_matmul", [512, 8])  # 8: the 12-token example takes flash
def test_cpu_bf16_attention_forward_and_grads_match_fp32(monkeypatch, longest_matmul):
    """bf16 matmul attention (GQA, custom scale) ≈ fp32 per-example SDPA, values and grads."""
    monkeypatch.setattr(packing, "MATMUL_ATTENTION_MAX_LEN", longest_matmul)
    bounds = torch.tensor([0, 7, 10, 22, 23, 32], dtype=torch.int32)
    exact_in, low_in = _qkv(6, 2, 32), _qkv(6, 2, 32)
    weights = torch.randn(1, 32, 6, 8, generator=torch.Generator().manual_seed(3))

    exact = _attend(*exact_in, bounds)
    low = _attend(*(t.bfloat16() for t in low_in), bounds)
    assert low.dtype == torch.bfloat16 and low.shape == exact.shape == (1, 32, 6, 8)
    torch.testing.assert_close(low.float(), exact, rtol=0, atol=0.03)
    (exact * weights).sum().backward()
    (low.float() * weights).sum().backward()
    for ours, theirs in zip(low_in, exact_in, strict=True):
        assert theirs.grad.abs().max() > 0.1
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=0.05)


def test_cpu_bf16_attention_never_crosses_examples():
    q, k, v = (t.detach().bfloat16() for t in _qkv(6, 2, 32))
    bounds = torch.tensor([0, 7, 10, 22, 32], dtype=torch.int32)
    before = _attend(q, k, v, bounds)
    # Change every key and value outside example 3 (tokens 10..21): its outputs stay bit-equal,
    # and they are causal: its first token sees only itself, so it outputs its own value.
    k2, v2 = k.clone(), v.clone()
    for t in (k2, v2):
        t[:, :, :10] = 7.0
        t[:, :, 22:] = -7.0
    after = _attend(q, k2, v2, bounds)
    assert torch.equal(after[:, 10:22], before[:, 10:22])
    assert not torch.equal(after[:, :10], before[:, :10])
    torch.testing.assert_close(before[0, 10], v[0, :, 10].repeat_interleave(3, dim=0))


def test_boundaries_that_do_not_cover_the_row_are_refused(make_tiny_llama):
    module = make_tiny_llama().model.layers[0].self_attn
    q, kv = torch.zeros(1, 4, 10, 8), torch.zeros(1, 2, 10, 8)
    with pytest.raises(ValueError, match="10 tokens but cu_seq_lens_q ends at 8"):
        packed_sdpa_attention(module, q, kv, kv, None, cu_seq_lens_q=torch.tensor([0, 8]))


def test_other_attention_choices_are_left_alone(make_tiny_llama):
    model = make_tiny_llama()
    model.set_attn_implementation("eager")
    assert not use_packed_attention(model)
    assert model.config._attn_implementation == "eager"


def _fake_varlen(with_gqa: bool, with_window: bool, calls: list[dict]):
    """Stand-ins for torch.nn.attention.varlen.varlen_attn (a CUDA kernel) in the
    signatures of torch 2.13 (scale, window_size, enable_gqa), 2.11 (no enable_gqa) and
    2.10 (is_causal, no scale): causal attention per example on [T, H, D] tensors."""

    def attend(q, k, v, cu, causal, scale, gqa):
        assert q.dtype == k.dtype == v.dtype and cu.dtype == torch.int32
        outs = []
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            o = torch.nn.functional.scaled_dot_product_attention(
                *(t[start:end].transpose(0, 1) for t in (q, k, v)),
                is_causal=causal,
                scale=scale,
                enable_gqa=gqa,
            )
            outs.append(o.transpose(0, 1))
        return torch.cat(outs)

    if with_gqa:

        def varlen_attn(
            q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False
        ):
            calls.append({"window_size": window_size, "enable_gqa": enable_gqa, "max": max_q})
            return attend(q, k, v, cu_q, window_size == (-1, 0), scale, enable_gqa)

    elif with_window:

        def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
            assert k.shape[1] == q.shape[1], "no GQA in this signature"
            calls.append({"window_size": window_size, "max": max_q})
            return attend(q, k, v, cu_q, window_size == (-1, 0), scale, False)

    else:

        def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False):
            assert k.shape[1] == q.shape[1], "no GQA in this signature"
            calls.append({"is_causal": is_causal, "max": max_q})
            return attend(q, k, v, cu_q, is_causal, None, False)

    return varlen_attn


@pytest.mark.parametrize(("with_gqa", "with_window"), [(True, True), (False, True), (False, False)])
def test_varlen_kernel_call_matches_the_per_example_loop(
    monkeypatch, request, with_gqa, with_window
):
    """On CUDA packed rows go to torch's varlen flash kernel; the call is checked here on
    the CPU against a stand-in, in each torch signature; the GPU run is in the README."""
    import torch.nn.attention.varlen as varlen

    calls: list[dict] = []
    monkeypatch.setattr(varlen, "varlen_attn", _fake_varlen(with_gqa, with_window, calls))
    packing._varlen_params.cache_clear()  # the signature is read once per process
    request.addfinalizer(packing._varlen_params.cache_clear)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 23, 8, generator=generator)
    k, v = (torch.randn(1, 2, 23, 8, generator=generator) for _ in range(2))
    bounds = torch.tensor([0, 7, 8, 23], dtype=torch.int32)
    expected, _ = packed_sdpa_attention(None, q, k, v, None, scaling=8**-0.5, cu_seq_lens_q=bounds)
    out = packing._varlen_flash(q, k, v, bounds.long(), None, 8**-0.5)
    assert out is not None and out.shape == (1, 23, 4, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert calls[0]["max"] == 15  # the longest example, computed when not given
    assert calls[0].get("window_size", (-1, 0)) == (-1, 0) and calls[0].get("is_causal", True)
    if with_gqa:
        assert calls[0]["enable_gqa"]
    # torch 2.10's kernel has no scale: a non-default one falls back to the loop.
    if not with_window:
        assert packing._varlen_flash(q, k, v, bounds, 15, 0.5) is None
