"""bf16 LoRA training keeps the frozen base in bf16 and the adapter in fp32, and the
model is back in fp32 for decoding."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import AttachedModel, logged_losses, tiny_config, write_alpaca

from llamaforge.config import load_run_config
from llamaforge.methods.sft import run_sft
from llamaforge.training.harness import base_weights_dtype
from llamaforge.training.trainer import cpu_supports_bf16


@pytest.mark.parametrize(
    ("kind", "precision", "dtype", "expected"),
    [
        ("lora", "bf16", "auto", "bfloat16"),
        ("prefix", "bf16", "auto", "bfloat16"),
        ("prompt", "bf16", "auto", "bfloat16"),
        ("lora", "fp32", "auto", "auto"),  # fp32 training: weights as the loader decides
        ("full", "bf16", "auto", "auto"),  # trained weights keep fp32 masters
        ("freeze", "bf16", "auto", "auto"),
        ("qlora", "bf16", "auto", "auto"),  # quantized: bitsandbytes decides
        ("lora", "bf16", "float32", "float32"),  # the user's explicit choice stands
    ],
)
def test_base_weights_dtype(kind, precision, dtype, expected):
    cfg = load_run_config(None, [f"finetuning={kind}", f"precision={precision}", f"dtype={dtype}"])
    assert base_weights_dtype(cfg, precision) == expected


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16 support")
def test_lora_on_bf16_base(tiny_model_dir, tmp_path, capture_attach: AttachedModel):
    records = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}."} for w in "abcde"]
    data = write_alpaca(tmp_path / "data.json", records)
    run_dir = run_sft(
        tiny_config(
            tiny_model_dir,
            data,
            tmp_path / "run",
            precision="bf16",
            lora_dropout=0.05,
            val_set_size=1,
            predict_with_generate=True,
            max_new_tokens=4,
        )
    )
    losses = logged_losses(run_dir)
    assert losses[-1] < losses[0], losses

    before = capture_attach.before
    base = {n: t.dtype for n, t in before.items() if n not in capture_attach.trainable}
    adapter = {n: t.dtype for n, t in before.items() if n in capture_attach.trainable}
    assert set(base.values()) == {torch.bfloat16}
    assert adapter and set(adapter.values()) == {torch.float32}
    assert capture_attach.changed() == capture_attach.trainable

    model = capture_attach.model
    # Decoding ran in fp32, and peft's input casting is back on after training.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(
        m.cast_input_dtype_enabled
        for m in model.modules()
        if hasattr(m, "cast_input_dtype_enabled")
    )
    predictions = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 1 and "predict" in json.loads(predictions[0])
