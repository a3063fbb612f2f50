"""A run directory as ``model``: the same stage keeps training that run's adapter (one
adapter, starting from the saved weights); another stage folds it in (tests/training/
test_rm.py: an rm run on an SFT run)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from training_helpers import tiny_config

from llamaforge.methods import run_training


def test_sft_on_an_sft_run_keeps_training_its_adapter(tiny_model_dir, overfit_data, tmp_path):
    first = run_training(tiny_config(tiny_model_dir, overfit_data, tmp_path / "a", max_steps=2))
    saved = load_file(first / "adapter_model.safetensors")
    assert any(n.endswith("lora_B.weight") and v.any() for n, v in saved.items())
    # A vanishing learning rate: what is saved is what training started from.
    cfg = tiny_config(str(first), overfit_data, tmp_path / "b", max_steps=1, learning_rate=1e-12)
    again = load_file(run_training(cfg) / "adapter_model.safetensors")
    assert set(again) == set(saved)  # the same adapter, not a second one on top
    for name, value in saved.items():  # its trained weights, not a fresh (B = 0) adapter
        assert torch.allclose(again[name], value, atol=1e-8), name
