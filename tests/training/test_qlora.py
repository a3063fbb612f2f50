"""QLoRA on CPU (bitsandbytes 4-bit): every LoRA parameter gets a gradient, also after an
evaluation or a generate() in the same process.

The trap (NOTES.md): bitsandbytes repacks a Linear4bit weight into an inference-only layout
on its first eval-mode forward without grad on an AVX512-BF16 CPU; from then on its matmul
bypasses autograd and LoRA gets no gradient. `attach_adapter` turns the repacking off for
models it prepares for training; these tests fail if that stops working.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from training_helpers import read_log, write_alpaca

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
)


def has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16 as check

    return bool(check())


def packed_for_inference(model: torch.nn.Module) -> int:
    from bitsandbytes.nn import Linear4bit

    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, Linear4bit)
    )


@pytest.fixture
def tiny_4bit_dir(smollm2_tokenizer, tmp_path):
    """A tiny Llama whose linear layers bitsandbytes can quantize and repack (hidden 64:
    the CPU repacking needs rows of at least one 64-value block; tiny_llama's 32 crash)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(smollm2_tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            pad_token_id=smollm2_tokenizer.pad_token_id,
        )
    )
    path = tmp_path / "tiny4"
    model.save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


def lora_grads_after_eval_forward(model_dir, *, disarm: bool) -> dict[str, torch.Tensor | None]:
    from llamaforge.adapters import attach as attach_module
    from llamaforge.config.sections import FinetuningConfig, ModelConfig
    from llamaforge.models import load_model

    model, tokenizer = load_model(
        ModelConfig(model=str(model_dir), quantization_bit=4), for_training=True
    )
    # q/v only: every path from the loss to a LoRA weight crosses other 4-bit layers.
    cfg = FinetuningConfig(finetuning="qlora", lora_target_modules=("q_proj", "v_proj"))
    if disarm:
        model = attach_module.attach_adapter(model, cfg)
    else:  # what attach_adapter did before the fix
        from peft import get_peft_model, prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, attach_module.to_peft_config(model, cfg))
    batch = tokenizer(["The capital of France is Paris."], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        model(**batch)  # an evaluation step
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_eval_forward_no_longer_cuts_lora_gradients(tiny_4bit_dir):
    if not has_avx512bf16():
        pytest.skip("the repacking only happens on CPUs with AVX512-BF16")
    broken = lora_grads_after_eval_forward(tiny_4bit_dir, disarm=False)
    assert broken and all(g is None for g in broken.values())  # the upstream trap is real

    grads = lora_grads_after_eval_forward(tiny_4bit_dir, disarm=True)
    assert grads and all(g is not None for g in grads.values())
    b = {n: g for n, g in grads.items() if "lora_B" in n}
    assert b and all(torch.count_nonzero(g) for g in b.values())  # A's are 0 while B is 0


def test_attach_refuses_a_model_already_repacked_for_inference(tiny_4bit_dir):
    if not has_avx512bf16():
        pytest.skip("the repacking only happens on CPUs with AVX512-BF16")
    from llamaforge.adapters.attach import attach_adapter
    from llamaforge.config.sections import FinetuningConfig, ModelConfig
    from llamaforge.errors import ModelError
    from llamaforge.models import load_model

    model, tokenizer = load_model(ModelConfig(model=str(tiny_4bit_dir), quantization_bit=4))
    with torch.no_grad():
        model(**tokenizer(["Hello"], return_tensors="pt"))
    assert packed_for_inference(model)
    with pytest.raises(ModelError, match="load a fresh model to train it"):
        attach_adapter(model, FinetuningConfig(finetuning="qlora"))


@pytest.mark.slow
def test_qlora_trains_real_model_after_generating_in_the_same_process(tmp_path, record_grads):
    from llamaforge.config import load_run_config
    from llamaforge.config.sections import GenerationConfig
    from llamaforge.inference.engine import GenerationEngine
    from llamaforge.methods.sft import run_sft

    # 1. Inference with a 4-bit model first (the engine's own model object).
    engine = GenerationEngine.from_config(
        load_run_config(None, (), model="smollm2-135m", quantization_bit=4)
    )
    engine.generate(["Hi"], GenerationConfig(max_new_tokens=1, temperature=0.0))
    if has_avx512bf16():
        assert packed_for_inference(engine.model)  # the engine's weights are repacked
    del engine

    # 2. QLoRA with an evaluation after every step: each evaluation is an eval-mode
    # forward without grad on the very model being trained.
    records = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}."} for w in ("yes", "no")]
    data = write_alpaca(tmp_path / "train.json", records * 2)
    cfg = load_run_config(
        None,
        (),
        model="smollm2-135m",
        finetuning="qlora",
        dataset=[str(data)],
        output_dir=str(tmp_path / "run"),
        template="alpaca_short",
        cutoff_len=32,
        lora_target_modules=["q_proj", "v_proj"],
        max_steps=2,
        batch_size=1,
        micro_batch_size=1,
        learning_rate=1e-2,
        logging_steps=1,
        val_set_size=1,
        eval_steps=1,
        save_steps=1000,
    )
    run_sft(cfg)

    assert len(record_grads) == 2
    first, second = record_grads
    assert len(first) == 2 * 2 * 30  # A and B for q_proj and v_proj in 30 layers
    assert all(g is not None for g in first.values())
    assert all(torch.count_nonzero(g) for n, g in first.items() if "lora_B" in n)
    # Step 2 comes after an evaluation; B is non-zero now, so A gets gradients too.
    assert all(g is not None and torch.count_nonzero(g) for g in second.values())
    log = read_log(tmp_path / "run")
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert len(evals) == 2 and evals[0] != evals[1]  # the model moved between evaluations
    assert all(r["grad_norm"] > 0 for r in log if "loss" in r)
