"""Loading with a one-output score head (a reward model) through the same loader and
adapter code as the causal LM."""

from __future__ import annotations

import torch

from llamaforge.adapters import load_adapter
from llamaforge.adapters.attach import attach_adapter
from llamaforge.config.sections import FinetuningConfig, ModelConfig
from llamaforge.models import load_model


def test_score_head_loads_trains_and_reloads(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(
        ModelConfig(model=str(tiny_model_dir), dtype="float32"), for_training=True, head="score"
    )
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(
        ["a short one", "a somewhat longer text here"], padding=True, return_tensors="pt"
    )
    model = attach_adapter(
        model, FinetuningConfig(lora_target_modules=("q_proj", "v_proj")), head="score"
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in trainable) and any("lora_A" in n for n in trainable)
    with torch.no_grad():
        model.base_model.model.score.modules_to_save["default"].weight.normal_()
    model.eval()
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1)
    model.save_pretrained(tmp_path / "rm")

    base, _ = load_model(ModelConfig(model=str(tiny_model_dir), dtype="float32"), head="score")
    reloaded = load_adapter(base, tmp_path / "rm").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, scores)
